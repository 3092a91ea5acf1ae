"""Helpers for tests: the tiny models of :mod:`fgb2i_hf.tiny` plus batches of random betas and captions.

    model, tokenizer = tiny_brain_prefix_gpt2({"subj01": 40, "subj02": 56})      # random weights, well under 1 s
    betas = random_betas(model.config.voxel_counts, ["subj01", "subj02"])
    batch = caption_batch(tokenizer, ["a cat on a mat."])

Test-only: nothing in the library imports this module (the library's stand-ins use :mod:`fgb2i_hf.tiny`).
"""

from __future__ import annotations

import torch

from .tiny import *  # noqa: F401,F403  (the tiny builders, for the tests)
from .tiny import __all__ as _tiny_all


def random_betas(voxel_counts: dict[str, int], subjects: list[str], seed: int = 0) -> torch.Tensor:
    """(B, V_max) standard-normal betas, row i zero-padded after voxel_counts[subjects[i]] entries."""
    generator = torch.Generator().manual_seed(seed)
    width = max(voxel_counts[s] for s in subjects)
    betas = torch.zeros(len(subjects), width)
    for i, s in enumerate(subjects):
        betas[i, : voxel_counts[s]] = torch.randn(voxel_counts[s], generator=generator)
    return betas


def caption_batch(tokenizer, captions: list[str], max_tokens: int | None = None) -> dict[str, torch.Tensor]:
    """Training inputs in the model's format: ``caption + eos`` tokens padded on the right with eos, the attention
    mask, and labels = input_ids with -100 at padded positions (never masked by token id)."""
    rows = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in captions]
    if max_tokens is not None:
        rows = [r[:max_tokens] for r in rows]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.eos_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention_mask[i, : len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "labels": input_ids.masked_fill(attention_mask == 0, -100)}


__all__ = [*_tiny_all, "caption_batch", "random_betas"]
