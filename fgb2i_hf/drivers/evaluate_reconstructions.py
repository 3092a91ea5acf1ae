"""Score folders of reconstructions against the NSD stimuli: what ``recipes/evaluate_reconstructions.py`` runs.

Each folder holds ``<nsd_id>.png`` (as ``recipes/reconstruct.py`` writes them); the images scored are the
nsd_ids present in every folder (or those given), the ground truth is read from the stimulus store. The
eight columns are ``fgb2i_hf.metrics.reconstruction_metrics`` (MindEye's definitions); the table is
written as markdown and JSON (``fgb2i_hf.metrics.write_table``), with deltas against a baseline row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from ..clip import CLIPScorer
from ..core import TINY_RANDOM, loading_config_field
from ..data import NSDStimuli
from ..metrics import load_feature_models, reconstruction_metrics, tiny_feature_models, write_table
from ..tiny import tiny_clip_scorer
from .reconstruct import load_images


@dataclass
class EvaluateReconstructionsConfig:
    """What ``recipes/evaluate_reconstructions.py`` reads from ``--config`` YAML and the command line."""

    nsd_root: str = field(metadata={"help": "NSD root (for the ground-truth stimuli)."})
    reconstructions: list[str] = field(metadata={
        "help": "Rows of the table as name=folder (folders of <nsd_id>.png), e.g. 'LDM=out/ldm/base'."})
    output: str = field(metadata={"help": "Path stem of the table: writes <output>.md and <output>.json."})
    baseline: str | None = field(default=None, metadata={"help": "Row the others show deltas against."})
    nsd_ids: list[int] | None = field(default=None, metadata={"help": "Score these ids (default: all in common)."})
    feature_models: str = field(default="pretrained", metadata={
        "help": "pretrained (torchvision, SwAV, OpenAI CLIP ViT-L/14), random (same architectures, random "
                "weights: mechanics only) or tiny-random (tiny random networks: mechanics only, fast).",
        "choices": ["pretrained", "random", TINY_RANDOM]})
    clip_model: str = field(default="ViT-L-14-quickgelu", metadata={
        "help": "open_clip name with OpenAI weights (MindEye: ViT-L/14) or a CLIPScorer folder (simnsd/clip)."})
    swav_weights: str | None = field(default=None, metadata={
        "help": "Local SwAV ResNet-50 checkpoint (default: download once to the torch hub cache)."})
    batch_size: int = field(default=32, metadata={"help": "Images per forward pass of the feature networks."})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random feature networks (feature_models=random)."})


def parse_rows(specs: list[str]) -> dict[str, str]:
    rows = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"reconstructions entries are name=folder, got {spec!r}")
        if name in rows:
            raise ValueError(f"row {name!r} given twice")
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder} (row {name!r}) is not a folder of <nsd_id>.png reconstructions")
        rows[name] = folder
    return rows


def common_ids(folders: dict[str, str]) -> list[int]:
    """nsd_ids with a ``<nsd_id>.png`` in every folder, sorted."""
    sets = []
    for folder in folders.values():
        names = [f[:-4] for f in os.listdir(folder) if f.endswith(".png")]
        sets.append({int(n) for n in names if n.isdigit()})
    ids = sorted(set.intersection(*sets)) if sets else []
    if not ids:
        raise ValueError(f"no nsd_id has a reconstruction in every folder: {folders}")
    return ids


def feature_models_for(config: EvaluateReconstructionsConfig):
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if config.feature_models == TINY_RANDOM:
        return tiny_feature_models(seed=config.seed, device=device)
    if config.feature_models == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return load_feature_models(pretrained=False, clip=tiny_clip_scorer(), device=device)
    clip = config.clip_model
    if clip.startswith("simnsd/") or os.path.isdir(clip):
        with loading_config_field("clip_model", clip):
            clip = CLIPScorer.from_pretrained(clip)
    return load_feature_models(pretrained=True, clip=clip, swav_weights=config.swav_weights, device=device)


def evaluate_reconstructions(config: EvaluateReconstructionsConfig, stimuli=None, feature_models=None,
                             progress: bool = True) -> dict[str, dict[str, float]]:
    """``{row name: {metric: value}}`` for every folder; writes ``<output>.md`` and ``<output>.json``."""
    folders = parse_rows(config.reconstructions)
    if config.baseline is not None and config.baseline not in folders:
        raise ValueError(f"baseline {config.baseline!r} is not one of the rows {list(folders)}")
    ids = list(config.nsd_ids) if config.nsd_ids else common_ids(folders)
    stimuli = stimuli if stimuli is not None else NSDStimuli(config.nsd_root)
    gt = stimuli.get(ids)
    models = feature_models if feature_models is not None else feature_models_for(config)
    rows = {}
    for name, folder in folders.items():
        rows[name] = reconstruction_metrics(gt, load_images(folder, ids, f"reconstruction ({name})"),
                                            feature_extractors=models, batch_size=config.batch_size,
                                            device=config.device, progress=progress)
    write_table(rows, config.output, baseline=config.baseline)
    return rows
