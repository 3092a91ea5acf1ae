"""Fit a base method's ridge decoders on NSD rows: targets per image, one ``RidgeDecoder`` per subject and target.

``FitDecodersConfig`` is the dataclass ``recipes/fit_decoders.py`` parses (YAML + CLI with trl's ``TrlParser``);
``fit_decoders(config)`` does the work:

1. the NSD rows (``fgb2i_hf.data.load_nsd``; betas already z-scored by the builder) and stimuli
   (``fgb2i_hf.data.NSDStimuli``), or a ``DatasetDict`` + image store passed in;
2. the targets of every distinct image of the chosen subjects (train and test), extracted once with the
   base's models and cached under ``<output_dir>/targets/`` (resumable, see ``extract_targets``);
3. per subject and target: ``RidgeDecoder.fit`` on the train rows, scores on the test rows, ``save_pretrained``
   to ``<output_dir>/<subject>/<target>/``; scores to ``<output_dir>/metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core import TINY_RANDOM, atomic_write_json, atomic_write_text, loading_config_field, versions
from ..data import data_contract
from ..data.layout import subject_list
from ..decoders.ridge import RidgeDecoder
from ..decoders.targets import extract_targets
from ..pipelines.bases import BaseSpec, get_base


@dataclass
class FitDecodersConfig:
    """What ``recipes/fit_decoders.py`` reads from ``--config`` YAML and the command line."""

    nsd_root: str = field(metadata={"help": "NSD root, real or SimNSD (raw layout)."})
    output_dir: str = field(metadata={"help": "Where decoders, cached targets, metrics and this config go."})
    base: str = field(default="ldm", metadata={
        "help": "Base method, a registered base (ldm, brain_diffuser, ... : fgb2i_hf.pipelines.bases)."})
    subjects: list[str] = field(default_factory=lambda: ["subj01"], metadata={"help": "Subjects, e.g. subj01."})
    targets: list[str] | None = field(default=None, metadata={
        "help": "Targets to fit (default: all of the base's, e.g. ldm z c; brain_diffuser clip_text clip_vision)."})
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Models the backbone's targets come from: a Hub id or folder in the diffusers layout (default: the "
                "base's backbone, e.g. CompVis/stable-diffusion-v1-4 for ldm, shi-labs/versatile-diffusion for "
                "brain_diffuser), simnsd/<name>, or 'tiny-random' (random tiny models, mechanics only; saved to "
                "<output_dir>/target_models so a pipeline can load the same ones)."})
    target_models: dict | None = field(default=None, metadata={
        "help": "Models of the base's other target sources, {source: name or folder} (JSON on the CLI), e.g. "
                "{\"vdvae\": \"simnsd/vdvae\"}; default: each source's own."})
    revision: str | None = field(default=None, metadata={"help": "Model revision on the Hub."})
    image_size: int | None = field(default=None, metadata={
        "help": "Image size for the backbone's targets (default: the extractor's: 320 for ldm as Takagi, 512 for "
                "brain_diffuser)."})
    latent_sampling: str = field(default="sample", metadata={
        "help": "ldm z: sample the VAE posterior (Takagi) or take its mean.", "choices": ["sample", "mean"]})
    seed: int = field(default=42, metadata={"help": "Seed of the z posterior samples (per image) and tiny models."})
    caption_column: str = field(default="captions", metadata={"help": "Captions the text targets average over."})
    extraction_batch_size: int = field(default=16, metadata={"help": "Images (or caption lists) per batch."})
    dtype: str = field(default="float32", metadata={
        "help": "Dtype of the target models (float16 on GPU; float32 on CPU).", "choices": ["float32", "float16"]})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})
    alphas: dict | None = field(default=None, metadata={
        "help": "Ridge grids by target, {target: [alpha, ...]} (JSON on the CLI); default: the base's published "
                "grids (the spec's TargetSpec.alphas)."})
    z_alphas: list[float] | None = field(default=None, metadata={
        "help": "Ridge grid for z (default: the base's, Takagi's two grids 1e-6..1 and 1e4..4e4)."})
    c_alphas: list[float] | None = field(default=None, metadata={"help": "Grid for c (default: the base's)."})
    clip_text_alphas: list[float] | None = field(default=None, metadata={
        "help": "Grid for clip_text (default: the base's, Brain-Diffuser's one alpha 1e5)."})
    clip_vision_alphas: list[float] | None = field(default=None, metadata={
        "help": "Grid for clip_vision (default: the base's, Brain-Diffuser's one alpha 6e4)."})
    cv: int = field(default=5, metadata={"help": "K-fold splits for choosing alpha."})
    alpha_per_target: bool = field(default=True, metadata={"help": "One alpha per target column (else shared)."})
    center_targets: bool = field(default=True, metadata={"help": "Fit an intercept (Takagi's call did not)."})
    sessions: int | None = field(default=None, metadata={"help": "Use the first N sessions (37: 982 test images)."})
    average_train: bool | None = field(default=None, metadata={
        "help": "Average train repetitions (default: the base's: no for ldm as Takagi, yes for brain_diffuser)."})
    max_train_rows: int | None = field(default=None, metadata={"help": "Fit on the first N train rows (quick runs)."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache for the NSD build (default HF's)."})
    score_split: str = field(default="validation", metadata={
        "help": "Held-out split the decoders are scored on (metrics.json); the test split is left to the final "
                "evaluation of the reconstructions."})

    def __post_init__(self):
        for name in ("alphas", "target_models"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, json.loads(value) if value.strip() else None)
        self.subjects = subject_list(self.subjects)  # checked before any data is built
        if self.score_split == "test":
            raise ValueError("score_split='test': the test split is read only by the final evaluation; score the "
                             "decoders on 'validation'")

    @property
    def spec(self) -> BaseSpec:
        return get_base(self.base)

    def alphas_for(self, target: str) -> list[float]:
        """This target's ridge grid: ``<target>_alphas`` if set, else ``alphas[target]``, else the base's."""
        explicit = getattr(self, f"{target}_alphas", None)
        if explicit is not None:
            return list(explicit)
        if self.alphas and target in self.alphas:
            return list(self.alphas[target])
        return list(self.spec.target(target).alphas)

    def source_model(self, source: str) -> str:
        """The models of a target source: ``model_name_or_path`` for the backbone's, ``target_models`` else."""
        spec = self.spec
        if source == "backbone":
            return self.model_name_or_path or spec.target_sources[source].default_model or spec.backbone.default_model
        name = (self.target_models or {}).get(source) or spec.target_sources[source].default_model
        if name is None and self.model_name_or_path == TINY_RANDOM:
            name = TINY_RANDOM  # a mechanics run: every source random and tiny
        if name is None:
            raise ValueError(f"the {self.base} base's {source!r} targets need their models: set target_models: "
                             f"{{{source}: <name or folder>}}")
        return name


CONFIG_NAME = "fit_decoders.yaml"


def saved_source_folder(output_dir: str, source: str) -> str:
    """Where ``fit_decoders`` saves the tiny random models of a target source (so a pipeline can load them)."""
    return os.path.join(output_dir, "target_models" if source == "backbone" else f"target_models_{source}")


def recorded_target_models(decoders_dir: str) -> dict[str, str]:
    """``{source: model}`` the decoders in ``decoders_dir`` were fitted with (read from its ``fit_decoders.yaml``;
    tiny random models as the folder they were saved to): what a pipeline must encode and decode with."""
    import yaml

    path = os.path.join(decoders_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no record of the decoders' fit (run recipes/fit_decoders.py)")
    with open(path, encoding="utf-8") as f:
        record = yaml.safe_load(f)
    record.pop("_versions", None)
    config = FitDecodersConfig(**{k: v for k, v in record.items() if k in FitDecodersConfig.__dataclass_fields__})
    models = {}
    for source in config.spec.target_sources:
        try:
            name = config.source_model(source)
        except ValueError:  # a source this fit did not use
            continue
        models[source] = saved_source_folder(decoders_dir, source) if name == TINY_RANDOM else name
    return models


def load_extractor(config: FitDecodersConfig, source: str = "backbone"):
    """The extractor of one of the base's target sources, with the configured models (or tiny random ones)."""
    spec_source = config.spec.target_sources[source]
    kwargs = {"device": config.device, "dtype": getattr(torch, config.dtype)}
    kwargs.update({f: getattr(config, f) for f in spec_source.config_fields if getattr(config, f) is not None})
    name = config.source_model(source)
    if name != TINY_RANDOM:
        kwargs["revision"] = config.revision
    with loading_config_field("model_name_or_path" if source == "backbone" else f"target_models.{source}", name):
        return spec_source.extractor(name, model_seed=config.seed, **kwargs)


def betas_matrix(dataset, block_rows: int = 1024) -> np.ndarray:
    """The ``betas`` column of one subject's rows as float32 ``(N, V)``, read in blocks."""
    rows = dataset.with_format("numpy", columns=["betas"])
    out = None
    for start in range(0, len(dataset), block_rows):
        block = rows[start : start + block_rows]["betas"]
        block = np.stack(block) if block.dtype == object else block
        if out is None:
            out = np.empty((len(dataset), block.shape[1]), np.float32)
        if block.shape[1] != out.shape[1]:
            raise ValueError(f"rows {start}..{start + len(block)} have {block.shape[1]} voxels, earlier rows "
                             f"{out.shape[1]}: one subject's betas must all have the same length")
        out[start : start + len(block)] = block
    return out


def score_predictions(pred: np.ndarray, true: np.ndarray) -> dict:
    """Held-out scores: mean Pearson r per target column (Takagi's ``correlation_score``), mean R² per column,
    and mean r per image between the predicted and true target (pattern correlation)."""
    pred, true = pred.reshape(len(pred), -1).astype(np.float64), true.reshape(len(true), -1).astype(np.float64)

    def corr(a, b, axis):
        a = a - a.mean(axis, keepdims=True)
        b = b - b.mean(axis, keepdims=True)
        denom = np.sqrt((a * a).sum(axis) * (b * b).sum(axis))
        return np.where(denom > 0, (a * b).sum(axis) / np.where(denom > 0, denom, 1), np.nan)

    ss_res = ((true - pred) ** 2).sum(0)
    ss_tot = ((true - true.mean(0)) ** 2).sum(0)
    r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.nan)
    return {"column_r": float(np.nanmean(corr(pred, true, 0))), "column_r2": float(np.nanmean(r2)),
            "image_r": float(np.nanmean(corr(pred, true, 1))), "n_test": int(len(pred))}


def _load_dataset(config: FitDecodersConfig):
    from ..data import load_nsd

    average = config.spec.average_train if config.average_train is None else config.average_train
    options = {"average_train": average}
    if config.sessions is not None:
        options["sessions"] = config.sessions
    return load_nsd(config.nsd_root, subjects=config.subjects, cache_dir=config.cache_dir, **options)


def fit_decoders(config: FitDecodersConfig, dataset=None, stimuli=None, progress: bool = True) -> dict:
    """Extract targets, fit, score and save every (subject, target) decoder. Returns the metrics.

    ``dataset`` (a ``DatasetDict`` with NSD rows and their data contract, as ``load_nsd`` returns them) and
    ``stimuli`` (``get(ids) -> uint8 images``) default to ``load_nsd(config.nsd_root, ...)`` and
    ``NSDStimuli(config.nsd_root)``. The rows' data contract is saved beside the decoders.
    """
    spec = config.spec
    if not spec.targets:
        raise ValueError(f"the {spec.name} base has no ridge decoders to fit (its features come from its own model)")
    targets = [spec.target(name).name for name in (config.targets or [t.name for t in spec.targets])]
    if dataset is None:
        dataset = _load_dataset(config)
    if stimuli is None:
        from ..data import NSDStimuli

        stimuli = NSDStimuli(config.nsd_root)
    os.makedirs(config.output_dir, exist_ok=True)
    _save_config(config)

    contract = data_contract(dataset).for_subjects(config.subjects)
    held_out = config.score_split
    rows = {split: _subject_rows(dataset[split], config.subjects, split) for split in ("train", held_out)}
    if config.max_train_rows is not None:
        rows["train"] = {s: r.select(range(min(len(r), config.max_train_rows))) for s, r in rows["train"].items()}
    image_ids, captions = _images_and_captions(rows, config.caption_column)

    cache = {}
    for source in dict.fromkeys(spec.target(name).source for name in targets):
        extractor = load_extractor(config, source)
        if extractor.name_or_path == TINY_RANDOM:
            extractor.save_pretrained(saved_source_folder(config.output_dir, source))
        for name in (n for n in targets if spec.target(n).source == source):
            cache[name] = extract_targets(
                extractor, name, os.path.join(config.output_dir, "targets", f"{name}.npy"), ids=image_ids,
                images=stimuli, batch_size=config.extraction_batch_size, progress=progress,
                captions=[captions[i] for i in image_ids] if name in extractor.text_targets else None)
        del extractor

    metrics = {}
    for subject in config.subjects:
        betas = {split: betas_matrix(rows[split][subject]) for split in ("train", held_out)}
        index = {split: np.searchsorted(image_ids, np.asarray(rows[split][subject]["nsd_id"])) for split in betas}
        for name in targets:
            decoder = RidgeDecoder(num_voxels=betas["train"].shape[1], target_shape=cache[name].shape[1:],
                                   alphas=config.alphas_for(name), cv=config.cv,
                                   alpha_per_target=config.alpha_per_target, center_targets=config.center_targets,
                                   subject=subject, target_name=name)
            decoder.fit(betas["train"], cache[name][index["train"]], device=config.device, progress=progress)
            truth = cache[name][index[held_out]]
            scores = {"fit": decoder.config.fit_summary,
                      held_out: score_predictions(decoder.predict(betas[held_out]).cpu().numpy(), truth)}
            if len(truth) > 1:
                scores[f"{held_out}_rescaled"] = score_predictions(
                    decoder.predict(betas[held_out], rescale=True).cpu().numpy(), truth)
            decoder.save_pretrained(os.path.join(config.output_dir, subject, name))
            metrics.setdefault(subject, {})[name] = scores
            del decoder
    _write_json(os.path.join(config.output_dir, "metrics.json"), metrics)
    contract.save(config.output_dir)  # written last: a folder with a contract holds a finished fit
    return metrics


def _subject_rows(split_rows, subjects, split):
    subject_column = np.asarray(split_rows["subject"])
    out = {}
    for subject in subjects:
        indices = np.flatnonzero(subject_column == subject)
        if len(indices) == 0:
            raise ValueError(f"no {split} rows for {subject} (subjects present: {sorted(set(subject_column))})")
        out[subject] = split_rows.select(indices)
    return out


def _images_and_captions(rows, caption_column):
    """Sorted distinct nsd_ids of all chosen rows, and each image's captions."""
    captions = {}
    for by_subject in rows.values():
        for subject_rows in by_subject.values():
            if caption_column not in subject_rows.column_names:
                raise ValueError(f"the rows have no {caption_column!r} column (columns: {subject_rows.column_names})")
            for nsd_id, caps in zip(subject_rows["nsd_id"], subject_rows[caption_column]):
                captions.setdefault(int(nsd_id), list(caps))
    return np.array(sorted(captions), dtype=np.int64), captions


def _save_config(config: FitDecodersConfig):
    import yaml

    record = dataclasses.asdict(config) | {"_versions": versions()}
    atomic_write_text(os.path.join(config.output_dir, CONFIG_NAME), yaml.safe_dump(record, sort_keys=False))


def _write_json(path, value):
    atomic_write_json(path, value, indent=1)
