"""CLIP-S and RefCLIP-S (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image Captioning").

Per caption c of image v, with E the unit-normalised CLIP embeddings and every text prefixed with
"A photo depicts " (candidates and references alike, as the authors' code does):

* CLIP-S(c, v) = w * max(cos(E(c), E(v)), 0), w = 2.5;
* RefCLIP-S(c, R, v) = harmonic mean of CLIP-S(c, v) and max(max over r in R of cos(E(c), E(r)), 0)
  (0 when both are 0).

Corpus scores are the means over captions. BrainHub uses OpenAI CLIP ViT-B/32, our default
(``ViT-B-32-quickgelu`` with ``openai`` weights through :class:`fgb2i_hf.clip.CLIPScorer`); tables
often print the scores x 100. Images are resized without a crop (NSD stimuli are square), so the
image embedding matches the authors' resize + centre-crop on square images up to resampling details.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..clip import CLIPScorer
from .captions import check_captions

PREFIX = "A photo depicts"
DEFAULT_CLIP = ("ViT-B-32-quickgelu", "openai")


def load_clip_s_scorer(name: str = DEFAULT_CLIP[0], pretrained: str | None = DEFAULT_CLIP[1], device=None):
    return CLIPScorer.from_pretrained(name, pretrained=pretrained, device=device)


def _prefixed(texts: Sequence[str], prefix: str) -> list[str]:
    if not prefix:
        return list(texts)
    prefix = prefix if prefix.endswith(" ") else prefix + " "
    return [prefix + t for t in texts]


def harmonic_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise 2ab / (a + b), 0 where a + b == 0."""
    total = a + b
    return torch.where(total > 0, 2 * a * b / torch.where(total > 0, total, torch.ones_like(total)),
                       torch.zeros_like(total))


def clip_score_per_caption(predictions: list[str], images, references: list[list[str]] | None = None,
                           scorer=None, w: float = 2.5, prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """Per-caption ``{"CLIP-S": (N,), "RefCLIP-S": (N,)}`` (RefCLIP-S only with ``references``)."""
    if isinstance(predictions, str) or not isinstance(predictions, Sequence):
        raise ValueError(f"predictions must be a list of strings, got {type(predictions).__name__}")
    if references is not None:
        check_captions(predictions, references)
    elif not predictions or not all(isinstance(p, str) for p in predictions):
        raise ValueError("predictions must be a non-empty list of strings")
    n_images = len(images)
    if n_images != len(predictions):
        raise ValueError(f"got {len(predictions)} predictions but {n_images} images; they must be parallel")
    scorer = scorer if scorer is not None else load_clip_s_scorer()
    text = scorer.encode_text(_prefixed(predictions, prefix)).float().cpu()
    image = scorer.encode_images(images).float().cpu()
    clip_s = w * (text * image).sum(-1).clamp(min=0)
    out = {"CLIP-S": clip_s}
    if references is not None:
        flat = [r for refs in references for r in refs]
        ref_emb = scorer.encode_text(_prefixed(flat, prefix)).float().cpu()
        best = []
        offset = 0
        for i, refs in enumerate(references):
            best.append((ref_emb[offset : offset + len(refs)] @ text[i]).max())
            offset += len(refs)
        text_sim = torch.stack(best).clamp(min=0)
        out["RefCLIP-S"] = harmonic_mean(clip_s, text_sim)
    return out


def clip_score(predictions: list[str], images, references: list[list[str]] | None = None, scorer=None,
               w: float = 2.5, prefix: str = PREFIX) -> dict[str, float]:
    """Corpus CLIP-S (and RefCLIP-S when ``references`` are given): means of the per-caption scores.

    ``images``: whatever ``CLIPScorer.encode_images`` takes (uint8 (N, H, W, 3), PIL list, float
    (N, 3, H, W) in [0, 1]), parallel to ``predictions``. ``scorer``: a ``CLIPScorer``; default OpenAI
    ViT-B/32, as BrainHub.
    """
    per = clip_score_per_caption(predictions, images, references, scorer, w, prefix)
    return {k: float(v.mean()) for k, v in per.items()}
