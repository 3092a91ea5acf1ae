"""Decoding a split with a brain-to-text model, and the shuffled-brain control.

``decode_dataset`` batches rows through :class:`BrainCaptionCollator` (mixed subjects allowed) and
``model.generate_captions``; ``shuffle_betas=True`` permutes the betas across rows (with a fixed seed)
while keeping each row's subject and targets — the control that shows what a decoder gets from the
language prior alone. Rows are permuted only among rows of the same subject, since voxel counts differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.collate import BrainCaptionCollator


def shuffled_row_order(subjects: list[str], seed: int = 0) -> np.ndarray:
    """A permutation of rows that maps every row to another row of the same subject (a derangement
    where the subject has more than one row)."""
    rng = np.random.default_rng(seed)
    subjects = np.asarray(subjects)
    order = np.arange(len(subjects))
    for s in np.unique(subjects):
        rows = np.flatnonzero(subjects == s)
        if len(rows) > 1:
            shift = rng.permutation(len(rows))
            # rotate the shuffled list by one: no row keeps its own betas
            order[rows[shift]] = rows[np.roll(shift, 1)]
    return order


@torch.no_grad()
def decode_dataset(model, tokenizer, dataset, batch_size: int = 64, shuffle_betas: bool = False, seed: int = 0,
                   progress: bool = True, **generation_kwargs: Any) -> list[str]:
    """Captions for every row of ``dataset`` (greedy unless ``generation_kwargs`` say otherwise)."""
    generation_kwargs.setdefault("max_new_tokens", getattr(model.config, "max_caption_tokens", 77))
    generation_kwargs.setdefault("do_sample", False)
    collate = BrainCaptionCollator(tokenizer, with_targets=False)
    subjects = list(dataset["subject"])
    order = shuffled_row_order(subjects, seed) if shuffle_betas else np.arange(len(dataset))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    captions: list[str] = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="decoding", disable=not progress):
        idx = np.arange(start, min(start + batch_size, len(dataset)))
        betas = dataset[[int(order[i]) for i in idx]]["betas"]
        batch = collate([{"betas": b, "subject": subjects[i]} for b, i in zip(betas, idx)])
        captions += model.generate_captions(batch["betas"].to(device), batch["subject"], tokenizer,
                                            **generation_kwargs)
    model.train(was_training)
    return captions


FAST_CAPTION_METRICS = ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr")


def caption_report(predictions: list[str], dataset, references: str = "fine_captions",
                   metrics=FAST_CAPTION_METRICS, rewards: dict[str, Any] | None = None) -> dict[str, float]:
    """Caption metrics against ``dataset[references]``, object P/R/F1 against ``dataset["objects"]``, and the
    mean of each reward in ``rewards`` ({name: callable}) on the predictions."""
    from .metrics import caption_metrics, object_metrics
    from .rewards import call_reward

    if len(predictions) != len(dataset):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset)} rows")
    refs = dataset[references]
    report: dict[str, float] = {}
    if metrics:
        report.update(caption_metrics(predictions, refs, metrics=list(metrics)))
    objects = object_metrics(predictions, dataset["objects"])
    report.update({"object P": objects["precision"], "object R": objects["recall"], "object F1": objects["f1"]})
    if rewards:
        columns = {c: dataset[c] for c in dataset.column_names if c != "betas"}
        for name, fn in rewards.items():
            report[f"reward {name}"] = float(call_reward(name, fn, predictions, **columns).mean())
    return report
