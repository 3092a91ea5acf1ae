"""``reconstruction_metrics``: MindEye's eight image-reconstruction columns in one pass.

PixCorr and SSIM (higher is better), two-way identification with AlexNet(2), AlexNet(5), InceptionV3
and CLIP (fraction of distractors beaten, chance 0.5; MindEye's tables print it as a percentage), and
mean correlation distance with EffNet-B and SwAV (lower is better). Definitions in :mod:`.image`,
networks and their input transforms in :mod:`.feature_models`.

Images are processed in batches of ``batch_size``: each batch is resized to 256 x 256 once, scored for
PixCorr/SSIM and passed through every network; only the features are kept for the two-way scores.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from .feature_models import FeatureModel, load_feature_models
from .image import (check_pair, mean_correlation_distance, pixcorr_per_image, ssim_per_image, to_256,
                    two_way_identification)

# column -> (feature model key, layer, score)
FEATURE_COLUMNS: dict[str, tuple[str, str | None, str]] = {
    "AlexNet(2)": ("alexnet", "features.4", "two_way"),
    "AlexNet(5)": ("alexnet", "features.11", "two_way"),
    "InceptionV3": ("inception", "avgpool", "two_way"),
    "CLIP": ("clip", None, "two_way"),
    "EffNet-B": ("effnet", "avgpool", "distance"),
    "SwAV": ("swav", "avgpool", "distance"),
}
RECONSTRUCTION_METRICS = ("PixCorr", "SSIM", *FEATURE_COLUMNS)
LOWER_IS_BETTER = frozenset({"EffNet-B", "SwAV"})


def _selected(metrics: Iterable[str] | None) -> list[str]:
    if metrics is None:
        return list(RECONSTRUCTION_METRICS)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in metrics if m not in RECONSTRUCTION_METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown or no reconstruction metrics {unknown}; choose from {list(RECONSTRUCTION_METRICS)}")
    return [m for m in RECONSTRUCTION_METRICS if m in metrics]


def reconstruction_metrics(gt_images, pred_images, feature_extractors: Mapping[str, FeatureModel] | None = None,
                           metrics: Iterable[str] | None = None, batch_size: int = 32, device=None,
                           antialias: bool = False, progress: bool = True) -> dict[str, float]:
    """MindEye's image metrics of reconstructions against ground truth.

    Args:
        gt_images, pred_images: parallel image sets, float (N, 3, H, W) in [0, 1] (or uint8 (N, H, W, 3),
            or lists of PIL images); sizes may differ between the two sets.
        feature_extractors: ``{"alexnet"|"inception"|"clip"|"effnet"|"swav": FeatureModel}``; must hold
            every model the chosen metrics need. None loads the pretrained ones
            (:func:`~.feature_models.load_feature_models`).
        metrics: subset of ``PixCorr, SSIM, AlexNet(2), AlexNet(5), InceptionV3, CLIP, EffNet-B, SwAV``
            (default all eight).
        batch_size: images per forward pass.
        device: where the networks run (default: CUDA when available). Models passed in are moved there.
        antialias: resize with antialiasing (torchvision >= 0.17 default) instead of MindEye2's published
            setting (no antialiasing; see :mod:`.image`).

    Returns:
        ``{column: value}`` in the order of ``RECONSTRUCTION_METRICS``.
    """
    gt, pred = check_pair(gt_images, pred_images)
    chosen = _selected(metrics)
    needed = sorted({FEATURE_COLUMNS[c][0] for c in chosen if c in FEATURE_COLUMNS})
    feature_columns = [c for c in chosen if c in FEATURE_COLUMNS]
    if feature_columns and len(gt) < 2:
        raise ValueError(f"two-way identification and the feature metrics need at least 2 images, got {len(gt)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if feature_extractors is None:
        models = load_feature_models(needed, pretrained=True, device=device)
    else:
        missing = [k for k in needed if k not in feature_extractors]
        if missing:
            raise ValueError(f"feature_extractors lacks {missing}, needed for {feature_columns}; "
                             "pass them, or restrict `metrics`")
        models = {k: feature_extractors[k].to(device) for k in needed}

    per_image: dict[str, list[np.ndarray]] = {"PixCorr": [], "SSIM": []}
    feats: dict[tuple[str, str | None], tuple[list[np.ndarray], list[np.ndarray]]] = {
        (FEATURE_COLUMNS[c][0], FEATURE_COLUMNS[c][1]): ([], []) for c in feature_columns}
    batches = range(0, len(gt), batch_size)
    for start in tqdm(batches, desc="reconstruction metrics", disable=not progress):
        gt256 = to_256(gt[start : start + batch_size], antialias)
        pred256 = to_256(pred[start : start + batch_size], antialias)
        if "PixCorr" in chosen:
            per_image["PixCorr"].append(pixcorr_per_image(gt256, pred256, antialias))
        if "SSIM" in chosen:
            per_image["SSIM"].append(ssim_per_image(gt256, pred256, antialias))
        for key, model in models.items():
            gt_out, pred_out = model(gt256, antialias), model(pred256, antialias)
            for (model_key, layer), (gt_list, pred_list) in feats.items():
                if model_key == key:
                    if layer not in gt_out:
                        raise ValueError(f"feature model {key!r} returned layers {list(gt_out)}, expected {layer!r}")
                    gt_list.append(gt_out[layer])
                    pred_list.append(pred_out[layer])

    results: dict[str, float] = {}
    for column in chosen:
        if column in per_image:
            results[column] = float(np.mean(np.concatenate(per_image[column])))
            continue
        key, layer, score = FEATURE_COLUMNS[column]
        gt_list, pred_list = feats[(key, layer)]
        gt_f, pred_f = np.concatenate(gt_list), np.concatenate(pred_list)
        results[column] = (two_way_identification(gt_f, pred_f) if score == "two_way"
                           else mean_correlation_distance(gt_f, pred_f))
    return results
