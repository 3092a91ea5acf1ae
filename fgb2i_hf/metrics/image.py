"""Low-level image-reconstruction metrics with MindEye's definitions (MindEye1/2 evaluation code).

Images are float arrays or tensors, (N, 3, H, W), values in [0, 1]; uint8 (N, H, W, 3) arrays/tensors
and lists of PIL images are converted for convenience. As MindEye, ground truth and reconstructions
are first resized to 256 x 256 (:func:`to_256`); each metric then applies its own resize.

* :func:`pixcorr` — bilinear resize to 425, flatten the 3 x 425 x 425 values, Pearson r per image pair,
  mean over images.
* :func:`ssim` — bilinear resize to 425, ``skimage.color.rgb2gray``, ``structural_similarity(rec, gt,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)`` per pair, mean.
* :func:`two_way_identification` — with r[j, i] = Pearson(gt features j, recon features i), each
  recon i scores the fraction of the N - 1 other ground truths j with r[j, i] < r[i, i]; the mean
  over recons (chance 0.5, perfect 1.0).
* :func:`mean_correlation_distance` — mean over pairs of ``scipy.spatial.distance.correlation``
  (1 - Pearson r): EffNet-B and SwAV; lower is better.

Resizing: MindEye2's published numbers were computed with torchvision < 0.17 (its notebook output
carries torchvision's "antialias default will change" warning), where tensor resizes do not
antialias. ``antialias=False`` (our default) reproduces that; ``True`` gives torchvision >= 0.17's
default.
"""

from __future__ import annotations

import numpy as np
import scipy.spatial.distance
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

MINDEYE_SIZE = 256
PIXEL_SIZE = 425


def as_images(images, name: str = "images") -> torch.Tensor:
    """Validate and convert to a float32 CPU tensor (N, 3, H, W) in [0, 1].

    Accepts float arrays/tensors (N, 3, H, W) in [0, 1], uint8 arrays/tensors (N, H, W, 3), and lists of
    PIL images (converted to RGB). Anything else raises ValueError naming ``name``.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{name} is empty")
        if not all(hasattr(im, "convert") for im in images):
            raise ValueError(f"{name}: a list must hold PIL images; pass arrays as one (N, 3, H, W) array")
        arrays = [np.asarray(im.convert("RGB")) for im in images]
        if len({a.shape for a in arrays}) > 1:
            raise ValueError(f"{name}: PIL images must share one size, got {sorted({a.shape for a in arrays})}")
        images = np.stack(arrays)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a float (N, 3, H, W) array/tensor in [0, 1], a uint8 (N, H, W, 3) "
                         f"array/tensor or a list of PIL images, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{name}: uint8 images must be (N, H, W, 3), got shape {tuple(images.shape)}")
        return images.permute(0, 3, 1, 2).float().div(255.0).contiguous()
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected float images in [0, 1] or uint8 images, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: float images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    images = images.detach().float().cpu()
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{name}: float images must lie in [0, 1], got values in [{low:.4g}, {high:.4g}] "
                         "(scale 0-255 images by 1/255, or [-1, 1] images by (x + 1) / 2)")
    return images


def check_pair(gt, pred) -> tuple[torch.Tensor, torch.Tensor]:
    gt, pred = as_images(gt, "gt_images"), as_images(pred, "pred_images")
    if len(gt) != len(pred):
        raise ValueError(f"got {len(gt)} ground-truth images but {len(pred)} reconstructions; they must be parallel")
    return gt, pred


def resize(images: torch.Tensor, size: int, antialias: bool = False) -> torch.Tensor:
    """Bilinear resize of (N, 3, H, W) to (N, 3, size, size), as ``transforms.Resize`` on square tensors."""
    if images.shape[-2:] == (size, size):
        return images
    return TF.resize(images, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=antialias)


def to_256(images: torch.Tensor, antialias: bool = False) -> torch.Tensor:
    """MindEye's first step for ground truth and reconstructions alike: ``Resize((256, 256))``."""
    return resize(images, MINDEYE_SIZE, antialias)


def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of a[i] and b[i] for each row i (float64), as ``np.corrcoef(a[i], b[i])[0, 1]``."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def pixcorr_per_image(gt256: torch.Tensor, pred256: torch.Tensor, antialias: bool = False) -> np.ndarray:
    """Per-pair PixCorr of images already at 256 x 256 (resize to 425, Pearson over all values)."""
    return rowwise_pearson(resize(gt256, PIXEL_SIZE, antialias).numpy(), resize(pred256, PIXEL_SIZE, antialias).numpy())


def ssim_per_image(gt256: torch.Tensor, pred256: torch.Tensor, antialias: bool = False) -> np.ndarray:
    """Per-pair SSIM of images already at 256 x 256 (resize to 425, grayscale, Gaussian SSIM)."""
    # imported here: scikit-image is a heavy import, needed only on this path
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    gt_gray = rgb2gray(resize(gt256, PIXEL_SIZE, antialias).permute(0, 2, 3, 1).numpy())
    pred_gray = rgb2gray(resize(pred256, PIXEL_SIZE, antialias).permute(0, 2, 3, 1).numpy())
    return np.array([structural_similarity(rec, im, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                           data_range=1.0, channel_axis=None)
                     for im, rec in zip(gt_gray, pred_gray)])


def pixcorr(gt, pred, antialias: bool = False) -> float:
    """MindEye's PixCorr: mean per-image Pearson r of the 425 x 425 RGB pixels (after the 256 resize)."""
    gt, pred = check_pair(gt, pred)
    return float(np.mean(pixcorr_per_image(to_256(gt, antialias), to_256(pred, antialias), antialias)))


def ssim(gt, pred, antialias: bool = False) -> float:
    """MindEye's SSIM: mean grayscale Gaussian SSIM at 425 x 425 (after the 256 resize)."""
    gt, pred = check_pair(gt, pred)
    return float(np.mean(ssim_per_image(to_256(gt, antialias), to_256(pred, antialias), antialias)))


def _features(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"{name} must be (N, ...) features, one row per image; got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    return x.reshape(len(x), -1)


def _feature_pair(gt_features, pred_features) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = _features(gt_features, "gt_features"), _features(pred_features, "pred_features")
    if gt.shape != pred.shape:
        raise ValueError(f"gt_features {gt.shape} and pred_features {pred.shape} must have the same shape "
                         "(N images x D features, parallel rows)")
    return gt, pred


def two_way_identification(gt_features, pred_features) -> float:
    """MindEye's two-way identification of (N, ...) features (flattened per row); chance 0.5, perfect 1.

    ``r = corrcoef(gt, pred)[:N, N:]``; recon i beats distractor j when ``r[j, i] < r[i, i]``; the score
    is the mean count of beaten distractors divided by N - 1.
    """
    gt, pred = _feature_pair(gt_features, pred_features)
    n = len(gt)
    if n < 2:
        raise ValueError(f"two-way identification needs at least 2 images (N - 1 distractors), got {n}")
    r = np.corrcoef(gt, pred)[:n, n:]
    congruent = np.diag(r)
    beaten = np.sum(r < congruent, axis=0)
    return float(np.mean(beaten) / (n - 1))


def mean_correlation_distance(gt_features, pred_features) -> float:
    """Mean over pairs of ``scipy.spatial.distance.correlation(gt_i, pred_i)`` (= 1 - Pearson r); lower is better."""
    gt, pred = _feature_pair(gt_features, pred_features)
    # float64: float32 sums of squares of tiny features (e.g. random-weight networks) underflow in scipy.
    gt, pred = gt.astype(np.float64), pred.astype(np.float64)
    return float(np.mean([scipy.spatial.distance.correlation(g, p) for g, p in zip(gt, pred)]))
