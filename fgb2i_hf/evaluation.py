"""Decoding a split with a brain-to-text model, the shuffled-brain control, and the caption report.

``decode_dataset`` batches rows (mixed subjects allowed) through ``model.generate_captions``;
``shuffle_betas=True`` permutes the betas across rows (with a fixed seed) while keeping each row's subject and
targets — the control that shows what a decoder gets from the language prior alone. Rows are permuted only among
rows of the same subject, since voxel counts differ.

``evaluate_with_control`` decodes a split twice (real brains, shuffled brains) and scores both with
:func:`caption_report`; ``brainhub_predictions`` gives BrainHub's ``{id: caption}`` files (weihaox/BrainHub
``eval_caption.py``: one file per subject, ids "0".."N-1" in the subject's test order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .core import atomic_write_json, atomic_write_text, betas_tensor

CONTROL_ROW = "shuffled-brain control"
MODEL_ROW = "brain"


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
                   progress: bool = True, rows: Sequence[int] | None = None, **generation_kwargs: Any) -> list[str]:
    """Captions for every row of ``dataset`` (or for ``rows``, indices into it), greedy unless
    ``generation_kwargs`` say otherwise.

    Betas are read through the numpy formatter and :func:`~fgb2i_hf.data.betas_tensor` (float32, zero-padded
    mixed subjects), a batch at a time. With ``shuffle_betas`` each row gets the betas of another row of its
    subject (:func:`shuffled_row_order` over the whole dataset, so a subset of ``rows`` sees the same control).
    """
    generation_kwargs.setdefault("max_new_tokens", getattr(model.config, "max_caption_tokens", 77))
    generation_kwargs.setdefault("do_sample", False)
    subjects = list(dataset["subject"])
    order = shuffled_row_order(subjects, seed) if shuffle_betas else np.arange(len(dataset))
    rows = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
    betas_column = dataset.with_format("numpy", columns=["betas"])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    captions: list[str] = []
    try:
        for start in tqdm(range(0, len(rows), batch_size), desc="decoding", disable=not progress):
            idx = rows[start : start + batch_size]
            betas = betas_tensor(betas_column[[int(order[i]) for i in idx]]["betas"]).to(device)
            captions += model.generate_captions(betas, [subjects[i] for i in idx], tokenizer, **generation_kwargs)
    finally:
        model.train(was_training)
    return captions


FAST_CAPTION_METRICS = ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr")


def caption_report(predictions: list[str], dataset, references: str = "fine_captions",
                   metrics=FAST_CAPTION_METRICS, rewards: dict[str, Any] | None = None, meteor=None,
                   tokenizer: str = "auto") -> dict[str, float]:
    """Caption metrics against ``dataset[references]``, object P/R/F1 against ``dataset["objects"]``, and the
    mean of each reward in ``rewards`` ({name: callable}) on the predictions.

    ``metrics``: caption metric names (``fgb2i_hf.metrics.CAPTION_METRICS``; METEOR starts a ~10 s jar unless an
    open ``meteor`` scorer is passed); ``tokenizer``: the PTB tokenizer backend of ``caption_metrics``.
    """
    from .metrics import caption_metrics, object_metrics
    from .rewards import call_reward

    if len(predictions) != len(dataset):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset)} rows")
    report: dict[str, float] = {}
    if metrics:
        report.update(caption_metrics(predictions, dataset[references], metrics=list(metrics), meteor=meteor,
                                      tokenizer=tokenizer))
    objects = object_metrics(predictions, dataset["objects"])
    report.update({"object P": objects["precision"], "object R": objects["recall"], "object F1": objects["f1"]})
    if rewards:
        columns = {c: dataset[c] for c in dataset.column_names if c != "betas"}
        for name, fn in rewards.items():
            report[f"reward {name}"] = float(call_reward(name, fn, predictions, **columns).mean())
    return report


@dataclass
class ControlledEvaluation:
    """Captions decoded from the real brains and from shuffled brains, and both reports.

    ``rows`` is ``{"brain": report, "shuffled-brain control": report}``, ready for ``fgb2i_hf.metrics.write_table``
    with ``baseline="shuffled-brain control"``; ``subject_rows`` holds the same pair per subject
    (``{subject: {"brain": ..., "shuffled-brain control": ...}}``) when asked for.
    """

    predictions: list[str]
    control_predictions: list[str]
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    subject_rows: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @property
    def deltas(self) -> dict[str, float]:
        """Brain minus control, per metric."""
        model, control = self.rows[MODEL_ROW], self.rows[CONTROL_ROW]
        return {k: model[k] - control[k] for k in model if k in control}

    def markdown(self, digits: int = 4) -> str:
        """The table (control as baseline: brain rows show their deltas), then one pair of rows per subject, each
        subject's brain row against its own control."""
        from .metrics import format_table

        text = format_table(self.rows, baseline=CONTROL_ROW, digits=digits)
        if self.subject_rows:
            lines: list[str] = []
            for subject, pair in self.subject_rows.items():
                named = {f"{subject} {MODEL_ROW}": pair[MODEL_ROW], f"{subject} control": pair[CONTROL_ROW]}
                table = format_table(named, baseline=f"{subject} control", digits=digits).splitlines()
                lines += table if not lines else table[2:]
            text += "\n\nPer subject (each against its own shuffled-brain control):\n\n" + "\n".join(lines)
        return text

    def to_json(self) -> dict:
        return {"rows": self.rows, "baseline": CONTROL_ROW, "deltas": self.deltas,
                "subjects": {s: {**pair, "deltas": {k: pair[MODEL_ROW][k] - pair[CONTROL_ROW][k]
                                                    for k in pair[MODEL_ROW]}}
                             for s, pair in self.subject_rows.items()}}

    def write(self, path_stem: str) -> tuple[str, str]:
        """``<stem>.md`` (:meth:`markdown`) and ``<stem>.json`` (:meth:`to_json`), each written atomically."""
        paths = (path_stem + ".md", path_stem + ".json")
        atomic_write_text(paths[0], self.markdown() + "\n")
        atomic_write_json(paths[1], self.to_json())
        return paths


def evaluate_with_control(model, tokenizer, dataset, references: str = "fine_captions",
                          metrics=FAST_CAPTION_METRICS, batch_size: int = 64, seed: int = 0, per_subject: bool = False,
                          meteor=None, progress: bool = True, **generation_kwargs: Any) -> ControlledEvaluation:
    """Decode ``dataset`` from its brains and from shuffled brains (same model, same decoding) and score both
    (``per_subject``: also each subject's rows on their own)."""
    from .metrics import MeteorScorer

    predictions = decode_dataset(model, tokenizer, dataset, batch_size=batch_size, progress=progress,
                                 **generation_kwargs)
    control = decode_dataset(model, tokenizer, dataset, batch_size=batch_size, shuffle_betas=True, seed=seed,
                             progress=progress, **generation_kwargs)
    result = ControlledEvaluation(predictions, control)
    own_meteor = meteor is None and metrics is not None and "METEOR" in metrics
    if own_meteor:  # one jar for every report below (~10 s to start)
        meteor = MeteorScorer()
    try:
        result.rows[MODEL_ROW] = caption_report(predictions, dataset, references, metrics, meteor=meteor)
        result.rows[CONTROL_ROW] = caption_report(control, dataset, references, metrics, meteor=meteor)
        if per_subject:
            subjects = np.asarray(dataset["subject"])
            for s in sorted(set(subjects.tolist())):
                idx = np.flatnonzero(subjects == s)
                part = dataset.select(idx)
                result.subject_rows[s] = {
                    MODEL_ROW: caption_report([predictions[i] for i in idx], part, references, metrics, meteor=meteor),
                    CONTROL_ROW: caption_report([control[i] for i in idx], part, references, metrics, meteor=meteor)}
    finally:
        if own_meteor:
            meteor.close()
    return result


def brainhub_predictions(dataset, predictions: list[str]) -> dict[str, dict[str, str]]:
    """``{subject: {"0": caption, "1": ...}}``: BrainHub's candidate format, ids numbering each subject's rows in
    dataset order (for NSD's test split that is the shared images' first-trial order, BrainHub's and
    Brain-Diffuser's, so the ids match BrainHub's ``fmri_cococap.json``)."""
    if len(predictions) != len(dataset):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset)} rows")
    out: dict[str, dict[str, str]] = {}
    for subject, caption in zip(dataset["subject"], predictions):
        per = out.setdefault(subject, {})
        per[str(len(per))] = caption
    return out
