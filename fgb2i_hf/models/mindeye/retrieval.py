"""Retrieval metrics and best-of-N selection as MindEye reports and uses them (Scotti et al. 2023).

* :func:`retrieval_accuracy`: top-1 identification among random batches of 300 test images (MindEye1
  ``src/Retrievals.py``: ``batch_size = 300``, ``val_loops = 30`` draws; embeddings flattened and L2-normalised,
  cosine similarity). Both directions are reported, named by what is retrieved: ``image`` (given a brain sample, its
  image ranks first among the batch's images) and ``brain`` (given an image, its brain sample ranks first).
  MindEye1's notebook calls these "fwd" and "bwd"; because its ``batchwise_cosine_similarity`` returns the transpose
  of ``Z @ B.T``, which of the two its "fwd" is depends on reading that helper; we name directions explicitly.
* :func:`best_of_n`: MindEye's second-order selection: of k candidate reconstructions per brain sample, keep the one
  whose CLIP image embedding is most cosine-similar to the brain's retrieval embedding (``utils.reconstruction``:
  ``recons_per_sample = 16`` in the paper; flattened, L2-normalised, ``nanargmax``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

RETRIEVAL_BATCH = 300  # MindEye1 Retrievals.py: batch_size = 300 ("same as used in mind_reader")
RETRIEVAL_LOOPS = 30  # MindEye1 Retrievals.py: val_loops = 30
BEST_OF_N = 16  # MindEye paper: 16 reconstructions per sample, the best by CLIP similarity kept


def _flat_normalised(x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).float()
    return F.normalize(x.flatten(1), dim=-1)


def top1_identification(brain, image) -> tuple[float, float]:
    """(image retrieval, brain retrieval) top-1 accuracy of matched rows of brain (N, ...) and image (N, ...)."""
    b, i = _flat_normalised(brain), _flat_normalised(image)
    if b.shape != i.shape:
        raise ValueError(f"brain and image embeddings must have the same shape, got {tuple(b.shape)} and {tuple(i.shape)}")
    sim = b @ i.T  # sim[r, c] = cos(brain r, image c)
    labels = torch.arange(len(b))
    return float((sim.argmax(1) == labels).float().mean()), float((sim.argmax(0) == labels).float().mean())


def retrieval_accuracy(brain, image, batch_size: int = RETRIEVAL_BATCH, num_loops: int = RETRIEVAL_LOOPS,
                       seed: int = 0) -> dict:
    """Top-1 retrieval among random batches of ``batch_size`` samples, averaged over ``num_loops`` draws.

    Args:
        brain: (N, ...) brain embeddings (e.g. ``MindEyeModel.retrieval_embeddings`` or the projector output).
        image: (N, ...) CLIP image embeddings of the same N images, row for row.
        batch_size: images per identification (MindEye: 300). If N <= batch_size, all N once (one loop).
        num_loops: random batches drawn (without replacement within a batch; MindEye: 30).
        seed: seed of the draws.
    Returns:
        ``{"image_retrieval", "brain_retrieval"}`` means, their standard errors (``*_sem``), ``chance`` = 1 / batch
        size, ``batch_size`` and ``num_loops`` used.
    """
    b, i = _flat_normalised(brain), _flat_normalised(image)
    n = len(b)
    if n != len(i):
        raise ValueError(f"{n} brain embeddings for {len(i)} image embeddings")
    if n < 2:
        raise ValueError("retrieval needs at least 2 samples")
    rng = np.random.default_rng(seed)
    if n <= batch_size:
        draws = [np.arange(n)]
    else:
        draws = [rng.choice(n, batch_size, replace=False) for _ in range(num_loops)]
    scores = np.array([top1_identification(b[d], i[d]) for d in draws])
    size = len(draws[0])
    sem = scores.std(0) / np.sqrt(len(draws)) if len(draws) > 1 else np.zeros(2)
    return {"image_retrieval": float(scores[:, 0].mean()), "brain_retrieval": float(scores[:, 1].mean()),
            "image_retrieval_sem": float(sem[0]), "brain_retrieval_sem": float(sem[1]),
            "chance": 1.0 / size, "batch_size": size, "num_loops": len(draws)}


def best_of_n(candidate_embeds, predicted) -> torch.Tensor:
    """Index of the best of k candidates per sample by cosine similarity of flattened embeddings.

    Args:
        candidate_embeds: (N, k, ...) CLIP embeddings of k candidate reconstructions per sample.
        predicted: (N, ...) the brain's predicted embedding per sample (same trailing shape as one candidate).
    Returns:
        (N,) long tensor of indices in [0, k). NaN similarities (e.g. an all-zero candidate) never win unless all
        k are NaN, then index 0.
    """
    cand = torch.as_tensor(candidate_embeds).float()
    pred = torch.as_tensor(predicted).float()
    if cand.ndim < 3 or cand.shape[0] != pred.shape[0] or cand.shape[2:] != pred.shape[1:]:
        raise ValueError(f"candidate_embeds must be (N, k, ...) with ... = predicted's (N, ...) trailing shape; got "
                         f"{tuple(cand.shape)} and {tuple(pred.shape)}")
    n, k = cand.shape[:2]
    c = cand.reshape(n, k, -1)
    p = pred.reshape(n, 1, -1)
    sims = (c * p).sum(-1) / (c.norm(dim=-1) * p.norm(dim=-1))
    return torch.nan_to_num(sims, nan=-float("inf")).argmax(dim=1)


__all__ = ["BEST_OF_N", "RETRIEVAL_BATCH", "RETRIEVAL_LOOPS", "best_of_n", "retrieval_accuracy", "top1_identification"]
