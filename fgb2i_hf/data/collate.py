"""Batching NSD rows for BrainPrefixGPT2: mixed subjects, captions tokenised as GPT-2 targets.

A batch is a dict:

* ``betas``: float32 (B, V_max), each row zero-padded on the right to the longest subject in the batch;
* ``subject``: list[str] of length B (row i uses its first ``voxel_counts[subject[i]]`` values);
* ``input_ids``, ``attention_mask``: (B, T), the chosen caption + eos, right-padded with eos, T <= max_length;
* ``labels``: ``input_ids`` with -100 wherever ``attention_mask`` is 0 — padding is masked by position,
  never by token id (ClipCap masked id 0 and so never learnt "!");
* any ``passthrough`` columns as lists (the REINFORCE trainer passes ``nsd_id``, ``objects``, ... to rewards).

Which caption of a row's list is the target: index ``crc32(seed, subject, nsd_id, epoch) % n`` — a
different caption each epoch, yet a pure function of the row and the epoch, so a run resumed from a
checkpoint sees the same targets as an uninterrupted one. :class:`fgb2i_hf.training.CaptionEpochCallback` tells
the collator the epoch when training with ``Trainer`` (the collator must run in the training process, i.e.
``dataloader_num_workers=0`` or non-persistent workers, for the attribute to reach it).

Rows may hold betas as Python lists (the default ``datasets`` format) or numpy arrays (``with_format("numpy",
columns=["betas"], output_all_columns=True)``, which is several times faster for real voxel counts).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..core.tensors import betas_tensor

CAPTION_COLUMNS = ("fine_captions", "captions")


def pad_betas(betas: Sequence[Sequence[float]]) -> torch.Tensor:
    """List of 1-D voxel vectors (lists or arrays) of varying length -> float32 (B, V_max), zero-padded on the
    right (:func:`fgb2i_hf.data.betas_tensor`)."""
    return betas_tensor(betas)


@dataclass
class BrainCaptionCollator:
    """Collate NSD rows into BrainPrefixGPT2 inputs (see module docstring for the batch layout).

    Args:
        tokenizer: the language model's tokenizer (GPT-2's); its eos token ends every caption.
        caption_column: ``"fine_captions"`` (default: the paper's targets) or ``"captions"`` (COCO).
        max_length: maximum caption tokens, eos included (77, CLIP's context, as the paper).
        seed: caption-choice seed.
        passthrough: extra columns copied into the batch as lists.
        with_targets: False for decoding-only batches (no caption needed).
    """

    tokenizer: Any
    caption_column: str = "fine_captions"
    max_length: int = 77
    seed: int = 0
    passthrough: tuple[str, ...] = ()
    with_targets: bool = True
    epoch: int = field(default=0, init=False)

    def __post_init__(self):
        if self.caption_column not in CAPTION_COLUMNS:
            raise ValueError(f"caption_column must be one of {CAPTION_COLUMNS}, got {self.caption_column!r}")
        if self.tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token; captions must end with one")

    def choose_caption(self, row: dict) -> str:
        captions = row[self.caption_column]
        if not captions:
            raise ValueError(f"row subject={row.get('subject')!r} nsd_id={row.get('nsd_id')!r} has no "
                             f"{self.caption_column!r}; run check_captions(dataset, {self.caption_column!r}) "
                             "before training")
        key = f"{self.seed}:{row.get('subject')}:{row.get('nsd_id')}:{self.epoch}".encode()
        return captions[zlib.crc32(key) % len(captions)]

    def tokenize(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        eos = self.tokenizer.eos_token_id
        ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"][: self.max_length - 1] + [eos]
               for c in captions]
        length = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), length), eos, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), length), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = torch.tensor(x)
            attention_mask[i, : len(x)] = 1
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        batch: dict[str, Any] = {"betas": pad_betas([r["betas"] for r in rows]),
                                 "subject": [r["subject"] for r in rows]}
        if self.with_targets:
            batch.update(self.tokenize([self.choose_caption(r) for r in rows]))
        for column in self.passthrough:
            batch[column] = [r[column] for r in rows]
        return batch


def check_captions(dataset, column: str, split_name: str = "dataset") -> None:
    """Raise before any training step if ``column`` is missing or any row has no caption in it."""
    if column not in dataset.column_names:
        raise ValueError(f"{split_name} has no column {column!r} (columns: {dataset.column_names})")
    counts = np.array([len(c) for c in dataset[column]])
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        first = dataset[int(empty[0])]
        hint = (" — fine captions were asked for but are absent: write them with recipes/enhance_captions.py "
                "and pass the JSONL to the NSD builder, or train on caption_column='captions'"
                if column == "fine_captions" else "")
        raise ValueError(f"{split_name}: {empty.size} of {len(counts)} rows have an empty {column!r} "
                         f"(first: subject={first.get('subject')!r}, nsd_id={first.get('nsd_id')!r}){hint}")
