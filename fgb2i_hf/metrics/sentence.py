"""Sentence similarity, MindEye2's caption metric: cosine of sentence embeddings, prediction vs truth.

MindEye2 (final_evaluations.ipynb) embeds predicted and ground-truth captions with
sentence-transformers ``all-MiniLM-L6-v2`` and reports the mean cosine of matching pairs. With several
references per image we average the cosine over the image's references first (MindEye2 has one).
The encoder is injectable: anything with ``encode(list[str]) -> (N, D)`` (a ``SentenceTransformer``)
or a plain callable ``list[str] -> (N, D)``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..core import resolve_pretrained

DEFAULT_SENTENCE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def load_sentence_encoder(name: str = DEFAULT_SENTENCE_MODEL, device=None):
    # imported here: sentence-transformers is a heavy import, needed only on this path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_pretrained(name), device=device)


def _embed(encoder, texts: list[str], batch_size: int) -> np.ndarray:
    if hasattr(encoder, "encode"):
        out = encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    else:
        out = encoder(texts)
    if hasattr(out, "detach"):
        out = out.detach().float().cpu().numpy()
    out = np.asarray(out, dtype=np.float64)
    if out.ndim != 2 or len(out) != len(texts):
        raise ValueError(f"the sentence encoder returned shape {out.shape} for {len(texts)} texts; expected (N, D)")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def sentence_similarity(predictions: list[str], references: list[str] | list[list[str]],
                        encoder: Callable | None = None, batch_size: int = 64) -> float:
    """Mean cosine similarity of prediction and reference sentence embeddings (MindEye2's "Sentence").

    ``references[i]``: the ground-truth caption of image i, or a list of them (cosines averaged).
    ``encoder``: default ``SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")``.
    """
    if isinstance(predictions, str) or not isinstance(predictions, Sequence) or not predictions:
        raise ValueError("predictions must be a non-empty list of strings")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise ValueError(f"references must be a list, got {type(references).__name__}")
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references; they must be parallel")
    ref_lists = [[r] if isinstance(r, str) else list(r) for r in references]
    for i, (p, refs) in enumerate(zip(predictions, ref_lists)):
        if not isinstance(p, str):
            raise ValueError(f"predictions[{i}] must be a str, got {type(p).__name__}")
        if not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references[{i}] must be a str or a non-empty list of str")
    encoder = encoder if encoder is not None else load_sentence_encoder()
    pred_emb = _embed(encoder, list(predictions), batch_size)
    ref_emb = _embed(encoder, [r for refs in ref_lists for r in refs], batch_size)
    scores, offset = [], 0
    for i, refs in enumerate(ref_lists):
        scores.append(float(np.mean(ref_emb[offset : offset + len(refs)] @ pred_emb[i])))
        offset += len(refs)
    return float(np.mean(scores))
