"""MindEye's training losses and schedules, as pure functions (Scotti et al., NeurIPS 2023, arXiv 2305.18274).

Each function names the paper's component and the line of MindEye1's code (MedARC-AI/fMRI-reconstruction-NSD,
commit 6b30ea5, ``src/utils.py`` / ``src/Train_MindEye.py`` / ``src/train_autoencoder.py``) it reproduces.

* ``mixco``: MixCo on voxels (Kim et al. 2020): a random half of the rows become convex mixes of themselves and a
  permuted row, lambda ~ Beta(0.15, 0.15) (utils.py l.150-159).
* ``bimixco_loss``: BiMixCo, the bidirectional contrastive loss with the mixed soft targets
  (lambda on the own image, 1 - lambda on the partner's), temperature 0.006, used for the first third of training
  (utils.py l.167-185, Train_MindEye.py l.617-621). With no mixing it is the symmetric InfoNCE (CLIP) loss.
* ``soft_clip_loss``: SoftCLIP, cross-entropy of brain-to-image logits against the softmax of the image-to-image
  (CLIP-CLIP) logits, in both directions (utils.py l.112-120), for the rest of training.
* ``softclip_temperature``: the per-epoch SoftCLIP temperature, cosine-annealed from 0.004 to 0.0075 over the SoftCLIP
  epochs (utils.py l.342-343, Train_MindEye.py l.519).
* ``prior_loss`` is the prior's MSE on x0 (``MindEyeDiffusionPrior.loss``), weighted by ``PRIOR_LOSS_WEIGHT`` = 30
  (``prior_mult``, Train_MindEye.py l.521, l.632).
* ``low_level_loss``: L1 between predicted and true SD VAE latents divided by 0.18215 (train_autoencoder.py l.352,
  l.381). MindEye1's low-level run adds 0.1 x a contrastive loss between its feature maps and ConvNeXt-XL features of
  augmented images (``soft_cont_loss``, temp 0.075, l.340-346); that needs a ConvNeXt-XL checkpoint and image
  augmentations of the stimuli at every step, so it is left out: only the L1 term is kept.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BIMIXCO_TEMPERATURE = 0.006  # Train_MindEye.py l.620
SOFTCLIP_TEMPERATURES = (0.004, 0.0075)  # Train_MindEye.py l.519: cosine_anneal(0.004, 0.0075, ...)
MIXUP_FRACTION = 0.33  # Train_MindEye.py l.113 (--mixup_pct .33)
PRIOR_LOSS_WEIGHT = 30.0  # Train_MindEye.py l.521 (prior_mult for the 257 x 768 model)
MIXCO_BETA = 0.15  # utils.py l.150
MIXCO_SELECT_PROB = 0.5  # utils.py l.150 (s_thresh)
VAE_SCALING_FACTOR = 0.18215  # train_autoencoder.py l.322, l.381


def mixco(betas: torch.Tensor, beta: float = MIXCO_BETA, select_prob: float = MIXCO_SELECT_PROB,
          groups: list | None = None):
    """MixCo on a batch of voxels (random draws from the global RNG, in MindEye1's order: perm, lambda, selection).

    Args:
        betas: (B, V) voxels.
        beta: lambda ~ Beta(beta, beta).
        select_prob: each row is mixed with this probability (others keep lambda = 1).
        groups: optional per-row labels (subject names); rows are then mixed only with rows of the same label
            (voxels of different subjects do not line up). MindEye1 is single-subject: one group.
    Returns:
        ``(mixed (B, V), perm (B,) long, lambdas (B,), selected (B,) bool)``: row i of ``mixed`` is
        ``lambdas[i] * betas[i] + (1 - lambdas[i]) * betas[perm[i]]``; unselected rows have lambda 1.
    """
    b, device = betas.shape[0], betas.device
    if groups is None:
        perm = torch.randperm(b)
    else:
        perm = torch.arange(b)
        members: dict = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        for rows in members.values():
            rows = torch.tensor(rows)
            perm[rows] = rows[torch.randperm(len(rows))]
    lambdas = torch.distributions.Beta(float(beta), float(beta)).sample((b,))
    selected = torch.rand(b) <= select_prob
    lambdas = torch.where(selected, lambdas, torch.ones_like(lambdas)).to(device, betas.dtype)
    perm, selected = perm.to(device), selected.to(device)
    mixed = lambdas[:, None] * betas + (1 - lambdas[:, None]) * betas[perm]
    return torch.where(selected[:, None], mixed, betas), perm, lambdas, selected


def mixco_targets(perm: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """(B, B) soft targets of BiMixCo: row i puts lambda_i on column i and 1 - lambda_i on column perm[i].

    MindEye1 (utils.py l.172-173) writes ``diag(lambda)`` then overwrites ``[i, perm[i]] = 1 - lambda``, which zeroes
    the whole target row of an unmixed row whose partner is itself (perm[i] == i); here the two masses add, so every
    row sums to 1 (a row mixed with itself is the row: target 1 on the diagonal).
    """
    b = perm.shape[0]
    rows = torch.arange(b, device=perm.device)
    probs = torch.zeros(b, b, device=lambdas.device, dtype=lambdas.dtype)
    probs.index_put_((rows, rows), lambdas, accumulate=True)
    probs.index_put_((rows, perm), 1 - lambdas, accumulate=True)
    return probs


def bimixco_loss(brain: torch.Tensor, image: torch.Tensor, temperature: float = BIMIXCO_TEMPERATURE,
                 perm: torch.Tensor | None = None, lambdas: torch.Tensor | None = None) -> torch.Tensor:
    """BiMixCo: bidirectional contrastive loss with MixCo soft targets.

    Args:
        brain: (B, E) L2-normalised brain embeddings (of the mixed voxels).
        image: (B, E) L2-normalised CLIP image embeddings (of the unmixed images).
        temperature: logits are cosine / temperature (MindEye1: 0.006).
        perm, lambdas: from :func:`mixco`; without them the targets are the identity and the loss is
            (CE(brain -> image) + CE(image -> brain)) / 2, CLIP's symmetric InfoNCE.
    """
    logits = brain @ image.T / temperature
    if perm is None:
        labels = torch.arange(len(brain), device=brain.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    probs = mixco_targets(perm.to(brain.device), lambdas.to(brain.device, brain.dtype))
    forward = -(logits.log_softmax(-1) * probs).sum(-1).mean()
    backward = -(logits.T.log_softmax(-1) * probs.T).sum(-1).mean()
    return (forward + backward) / 2


def soft_clip_loss(brain: torch.Tensor, image: torch.Tensor, temperature: float) -> torch.Tensor:
    """SoftCLIP: soft targets softmax(image @ image.T / t) for the logits brain @ image.T / t, both directions.

    brain, image: (B, E) L2-normalised. With brain == image the loss equals the entropy of the targets (its
    minimum over brains for fixed images).
    """
    clip_clip = image @ image.T / temperature
    brain_clip = brain @ image.T / temperature
    targets = clip_clip.softmax(-1)
    forward = -(brain_clip.log_softmax(-1) * targets).sum(-1).mean()
    backward = -(brain_clip.T.log_softmax(-1) * targets).sum(-1).mean()
    return (forward + backward) / 2


def softclip_temperature(epoch: int, num_epochs: int, mixup_fraction: float = MIXUP_FRACTION,
                         start: float = SOFTCLIP_TEMPERATURES[0], end: float = SOFTCLIP_TEMPERATURES[1]) -> float:
    """SoftCLIP temperature of ``epoch``: cosine from ``start`` (first SoftCLIP epoch) to ``end`` (last epoch)."""
    first = bimixco_epochs(num_epochs, mixup_fraction)
    steps = num_epochs - first
    if not first <= epoch < num_epochs:
        raise ValueError(f"epoch {epoch} is not a SoftCLIP epoch ({first}..{num_epochs - 1})")
    if steps == 1:
        return float(start)
    return float(end + (start - end) / 2 * (1 + math.cos(math.pi * (epoch - first) / (steps - 1))))


def bimixco_epochs(num_epochs: int, mixup_fraction: float = MIXUP_FRACTION) -> int:
    """Epochs trained with BiMixCo before SoftCLIP: ``int(mixup_pct * num_epochs)`` (Train_MindEye.py l.598)."""
    return int(mixup_fraction * num_epochs)


def low_level_loss(predicted: torch.Tensor, target: torch.Tensor,
                   scaling_factor: float = VAE_SCALING_FACTOR) -> torch.Tensor:
    """Mean absolute error between predicted and true (scaled) VAE latents, divided by the VAE scaling factor."""
    return F.l1_loss(predicted, target) / scaling_factor


__all__ = ["BIMIXCO_TEMPERATURE", "MIXUP_FRACTION", "PRIOR_LOSS_WEIGHT", "SOFTCLIP_TEMPERATURES", "bimixco_epochs",
           "bimixco_loss", "low_level_loss", "mixco", "mixco_targets", "soft_clip_loss", "softclip_temperature"]
