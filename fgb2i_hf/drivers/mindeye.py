"""Train MindEye on NSD (or SimNSD) and evaluate it: ``run_mindeye(MindEyeRunConfig(...))``.

1. NSD rows of the chosen subjects (``fgb2i_hf.data.load_nsd`` with ``sessions``/``average_train``; MindEye1 trains
   on single trials and tests on repetition averages, which is ``average_train=False``, the loader's default);
2. per image, once, cached under ``<output_dir>/targets/`` (``fgb2i_hf.decoders.targets.extract_targets``, resumable):
   * ``clip_vision``: CLIP ViT-L/14 image tokens as Versatile Diffusion reads them (``post_layernorm``,
     ``visual_projection``, every token divided by token 0's norm) = MindEye1's ``Clipper(hidden_state=True,
     norm_embs=True)`` (models.py l.71-98, same normalisation). Image size 224 as MindEye1 (``clip_size``, l.54;
     no 512 px intermediate as Brain-Diffuser's); the resize is PIL bilinear then the CLIP processor's bicubic
     resize/crop, where MindEye1 resizes the tensor with torchvision's bicubic ``Resize(224)`` (a resampling
     difference, not a different target);
   * ``z``: SD VAE latents of the image at 512 px (MindEye1 ``train_autoencoder.py`` l.312), posterior mean
     (``latent_dist.mode()``, l.322) times 0.18215; the image is resized with Lanczos (MindEye1: bilinear,
     antialiased);
   both from one Versatile-Diffusion-layout folder or Hub id (``image_encoder``, ``image_feature_extractor``,
   ``vae`` subfolders), or ``tiny-random`` (tiny random models, mechanics only; saved to
   ``<output_dir>/target_models/{clip,vae}``); an open_clip folder (``simnsd/clip``) gives the same tokens from its
   ViT (``fgb2i_hf.decoders.open_clip_targets``), with the VAE from ``latent_model_name_or_path``
   (``simnsd/diffusion``);
3. ``MindEyeTrainer`` (``fgb2i_hf.training.mindeye_trainer``) trains; ``<output_dir>/final`` gets the model
   (``save_pretrained``), the run config (data settings and target settings included) and library versions;
4. on the test split, per subject: retrieval top-1 over batches of 300 (both directions) for the brain rows and for a
   within-subject shuffle of them (control), and how close the prior's samples and the backbone's direct output are to
   the true CLIP tokens (cosine of flattened tokens, MSE). Written to ``<output_dir>/eval_<split>.json`` and
   ``result.json``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from ..core import atomic_write_json, resolve_pretrained
from ..data import NSDStimuli, data_contract, load_nsd
from ..decoders.open_clip_targets import OPEN_CLIP_CONFIG, OpenCLIPImageTokenExtractor
from ..decoders.targets import BrainDiffuserTargetExtractor, LDMTargetExtractor, extract_targets
from ..models.mindeye import MindEyeConfig, MindEyeModel
from ..models.mindeye.retrieval import RETRIEVAL_BATCH, RETRIEVAL_LOOPS, retrieval_accuracy
from ..tiny import tiny_brain_diffuser_extractor, tiny_ldm_extractor
from ..training.mindeye_trainer import MindEyeTrainData, MindEyeTrainer, MindEyeTrainingConfig, run_exists
from .fit import betas_matrix

TINY_RANDOM = "tiny-random"
VERSATILE_DIFFUSION = "shi-labs/versatile-diffusion"


@dataclass
class MindEyeRunConfig(MindEyeTrainingConfig):
    """Data, targets, model and evaluation settings of a MindEye run, plus every :class:`MindEyeTrainingConfig` field."""

    nsd_root: str | None = field(default=None, metadata={"help": "NSD (or SimNSD) root in the raw layout."})
    subjects: list[str] = field(default_factory=lambda: ["subj01"], metadata={
        "help": "Subjects (one model; MindEye1 trains one per subject)."})
    sessions: int | None = field(default=None, metadata={"help": "Use the first N sessions (37: 982 test images)."})
    average_train: bool = field(default=False, metadata={
        "help": "Average train repetitions (MindEye1: no, single trials; test rows are always averaged)."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder."})
    max_train_rows: int | None = field(default=None, metadata={"help": "Use only the first N train rows (quick runs)."})
    target_model_name_or_path: str = field(default=VERSATILE_DIFFUSION, metadata={
        "help": "Where targets come from: a Versatile-Diffusion-layout folder or Hub id (image_encoder, "
                "image_feature_extractor, vae), or 'tiny-random'."})
    latent_model_name_or_path: str | None = field(default=None, metadata={
        "help": "Where the VAE of the latent targets comes from (a folder or Hub id with a 'vae' subfolder; default: "
                "target_model_name_or_path). With an open_clip CLIP (e.g. simnsd/clip) use e.g. simnsd/diffusion."})
    target_revision: str | None = field(default=None, metadata={"help": "Hub revision of the target models."})
    clip_image_size: int = field(default=224, metadata={"help": "Image size for CLIP (MindEye1: 224)."})
    latent_image_size: int = field(default=512, metadata={"help": "Image size for the VAE latents (MindEye1: 512)."})
    latent_sampling: str = field(default="mean", metadata={
        "help": "VAE posterior 'mean' (MindEye1: latent_dist.mode()) or 'sample'.", "choices": ["mean", "sample"]})
    target_dtype: str = field(default="float32", metadata={"help": "Dtype of the target models (float16 on GPU)."})
    device: str | None = field(default=None, metadata={"help": "Device of target extraction and evaluation."})
    extraction_batch_size: int = field(default=16, metadata={"help": "Images per target-extraction batch."})
    low_level: bool = field(default=True, metadata={"help": "Train the low-level head (needs VAE latent targets)."})
    model_config: dict | str | None = field(default=None, metadata={
        "help": "MindEyeConfig fields (JSON on the CLI), e.g. {hidden_size: 64}; default: MindEye1's sizes. "
                "voxel_counts, clip_tokens/clip_dim and latent_channels come from the data and targets."})
    init_from: str | None = field(default=None, metadata={"help": "Start from this MindEye checkpoint folder."})
    eval_split: str = field(default="test", metadata={"help": "Split evaluated after training ('' to skip)."})
    eval_prior_steps: int | None = field(default=None, metadata={
        "help": "Prior sampling steps in evaluation (default: all prior_timesteps, MindEye1's 100)."})
    eval_retrieval_batch: int = field(default=RETRIEVAL_BATCH, metadata={"help": "Retrieval batch (MindEye1: 300)."})
    eval_retrieval_loops: int = field(default=RETRIEVAL_LOOPS, metadata={"help": "Random batches (MindEye1: 30)."})
    eval_batch_size: int = field(default=64, metadata={"help": "Rows per forward pass in evaluation."})

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.model_config, str):
            self.model_config = json.loads(self.model_config) if self.model_config.strip() else None
        self.model_config = dict(self.model_config or {})
        reserved = {"voxel_counts", "clip_tokens", "clip_dim", "latent_channels", "vae_scaling_factor",
                    "low_level"} & set(self.model_config)
        if reserved:
            raise ValueError(f"model_config sets {sorted(reserved)}, which come from the data, the targets and the "
                             "`low_level` field")


# -- targets ----------------------------------------------------------------------------------------------------
def load_target_extractors(config: MindEyeRunConfig, need_latents: bool):
    """(CLIP image-token extractor, VAE latent extractor or None) for the configured models."""
    dtype = getattr(torch, config.target_dtype)
    common = {"device": config.device, "dtype": dtype}
    latent_kwargs = {"image_size": config.latent_image_size, "latent_sampling": config.latent_sampling,
                     "seed": config.seed}
    name = config.target_model_name_or_path
    if name == TINY_RANDOM:
        clip = tiny_brain_diffuser_extractor(model_seed=config.seed, image_size=config.clip_image_size, **common)
        vae = tiny_ldm_extractor(model_seed=config.seed, **latent_kwargs, **common) if need_latents else None
        return clip, vae
    # imported here: diffusers is a heavy import, needed only on this path
    from diffusers import AutoencoderKL

    path, rev = resolve_pretrained(name), config.target_revision
    if os.path.exists(os.path.join(path, OPEN_CLIP_CONFIG)):  # an open_clip folder such as simnsd/clip
        clip = OpenCLIPImageTokenExtractor.from_pretrained(name, **common)
    else:
        clip = BrainDiffuserTargetExtractor(
            None, None, CLIPImageProcessor.from_pretrained(path, subfolder="image_feature_extractor", revision=rev),
            CLIPVisionModelWithProjection.from_pretrained(path, subfolder="image_encoder", revision=rev),
            image_size=config.clip_image_size, name_or_path=name, **common)
    vae = None
    if need_latents:
        latent_name = config.latent_model_name_or_path or name
        vae = LDMTargetExtractor(AutoencoderKL.from_pretrained(resolve_pretrained(latent_name), subfolder="vae",
                                                               revision=rev),
                                 None, None, name_or_path=latent_name, **latent_kwargs, **common)
    return clip, vae


def cached_targets(config: MindEyeRunConfig, image_ids: np.ndarray, stimuli, need_latents: bool, progress=True):
    """``{"clip_vision": (N, T, D), "z": (N, C, L, L)}`` memmaps for ``image_ids`` (computed once, resumable) and the
    extraction settings."""
    clip, vae = load_target_extractors(config, need_latents)
    folder = os.path.join(config.output_dir, "targets")
    if config.target_model_name_or_path == TINY_RANDOM:
        clip.save_pretrained(os.path.join(config.output_dir, "target_models", "clip"))
        if vae is not None:
            vae.save_pretrained(os.path.join(config.output_dir, "target_models", "vae"))
    targets = {"clip_vision": extract_targets(clip, "clip_vision", os.path.join(folder, "clip_vision.npy"),
                                              ids=image_ids, images=stimuli, batch_size=config.extraction_batch_size,
                                              progress=progress)}
    settings = {"clip_vision": clip.settings()}
    if vae is not None:
        targets["z"] = extract_targets(vae, "z", os.path.join(folder, "z.npy"), ids=image_ids, images=stimuli,
                                       batch_size=config.extraction_batch_size, progress=progress)
        # the VAE's scale is what the model's decode_blurry divides by (0.18215 for SD's, another for other VAEs)
        settings["z"] = {**vae.settings(), "scaling_factor": float(vae.vae.config.scaling_factor)}
    return targets, settings


# -- data -------------------------------------------------------------------------------------------------------
def load_rows(config: MindEyeRunConfig):
    """``load_nsd`` of the configured subjects and options."""
    options = {"average_train": config.average_train}
    if config.sessions is not None:
        options["sessions"] = config.sessions
    return load_nsd(config.nsd_root, subjects=config.subjects, cache_dir=config.cache_dir, **options)


def split_arrays(rows, subjects: list[str], max_rows: int | None = None):
    """(betas (R, V_max) float16 zero-padded, subjects (R,), nsd_ids (R,), voxel_counts) of a split's rows."""
    column = np.asarray(rows["subject"])
    parts, names, ids, counts = [], [], [], {}
    for subject in subjects:
        index = np.flatnonzero(column == subject)
        if len(index) == 0:
            raise ValueError(f"no rows for {subject} in this split (subjects present: {sorted(set(column))})")
        if max_rows is not None:
            index = index[:max_rows]
        part = rows.select(index)
        betas = betas_matrix(part)
        counts[subject] = betas.shape[1]
        parts.append(betas.astype(np.float16))
        names += [subject] * len(index)
        ids.append(np.asarray(part["nsd_id"], dtype=np.int64))
    width = max(counts.values())
    betas = np.zeros((sum(len(p) for p in parts), width), np.float16)
    start = 0
    for p in parts:
        betas[start : start + len(p), : p.shape[1]] = p
        start += len(p)
    return betas, names, np.concatenate(ids), counts


def build_model(config: MindEyeRunConfig, voxel_counts: dict, targets: dict,
                vae_scaling_factor: float | None = None) -> MindEyeModel:
    """A fresh MindEye sized by the data and targets (or ``init_from``), with ``config.model_config``'s fields;
    ``vae_scaling_factor``: that of the VAE the latent targets come from (default: SD's)."""
    tokens, dim = targets["clip_vision"].shape[1:]
    if config.init_from:
        model = MindEyeModel.from_pretrained(config.init_from)
        if (model.config.clip_tokens, model.config.clip_dim) != (tokens, dim):
            raise ValueError(f"{config.init_from} predicts {model.config.clip_tokens} x {model.config.clip_dim} "
                             f"tokens, the targets are {tokens} x {dim}")
        missing = sorted(set(voxel_counts) - set(model.config.voxel_counts))
        if missing:
            raise ValueError(f"{config.init_from} has no input layer for {missing}")
        return model
    kwargs = dict(config.model_config)
    low_level = config.low_level and "z" in targets
    if low_level:
        kwargs["latent_channels"] = int(targets["z"].shape[1])
        if vae_scaling_factor is not None:
            kwargs["vae_scaling_factor"] = float(vae_scaling_factor)
    model_config = MindEyeConfig(voxel_counts=voxel_counts, clip_tokens=int(tokens), clip_dim=int(dim),
                                 low_level=low_level, **kwargs)
    if low_level and model_config.latent_size != targets["z"].shape[-1]:
        raise ValueError(f"the low-level head makes {model_config.latent_size} x {model_config.latent_size} latents "
                         f"(low_level_side {model_config.low_level_side} x 2^{len(model_config.low_level_block_out_channels) - 1}), "
                         f"the VAE targets are {targets['z'].shape[-2]} x {targets['z'].shape[-1]}: set model_config's "
                         "low_level_side or low_level_block_out_channels")
    torch.manual_seed(config.seed)
    return MindEyeModel(model_config)


# -- evaluation -------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_mindeye(model: MindEyeModel, betas: np.ndarray, subjects: list[str], clip_targets: np.ndarray,
                     latent_targets: np.ndarray | None = None, *, prior_steps: int | None = None,
                     retrieval_batch: int = RETRIEVAL_BATCH, retrieval_loops: int = RETRIEVAL_LOOPS,
                     batch_size: int = 64, seed: int = 0, device=None) -> dict:
    """Per subject (rows of one subject are compared among themselves), with row i's targets in row i:

    * ``retrieval``: ``retrieval_accuracy`` of the projector's embeddings vs the CLIP targets;
      ``retrieval_shuffled``: the same with the brain rows permuted within the subject (a control: chance);
    * ``prior_cosine`` / ``backbone_cosine``: mean cosine between the flattened prior samples / backbone output and
      the true tokens; ``prior_mse`` / ``backbone_mse``: their mean squared errors;
    * ``latent_mse`` / ``latent_r``: predicted vs true VAE latents (MSE; per-image Pearson r after subtracting the
      mean true latent of these images), and ``latent_r_shuffled`` (rows permuted).
    """
    device = torch.device(device or next(model.parameters()).device)
    model.eval().to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    out: dict = {}
    names = np.asarray(subjects)
    for subject in dict.fromkeys(subjects):
        rows = np.flatnonzero(names == subject)
        width = model.config.voxel_counts[subject]
        retrieval, backbone, prior, latents = [], [], [], []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            b = torch.from_numpy(np.asarray(betas[chunk][:, :width], dtype=np.float32)).to(device)
            back, proj = model.encode(b, subject)
            retrieval.append(proj.float().cpu())
            backbone.append(back.float().cpu())
            if model.prior is not None:
                prior.append(model.prior.sample(back, num_inference_steps=prior_steps, generator=generator).float().cpu())
            if model.low_level is not None and latent_targets is not None:
                latents.append(model.blurry_latents(b, subject).float().cpu())
        truth = torch.from_numpy(np.asarray(clip_targets[rows], dtype=np.float32))
        proj = torch.cat(retrieval)
        shuffle = torch.from_numpy(np.random.default_rng([seed, len(rows)]).permutation(len(rows)))
        scores = {"n": int(len(rows)),
                  "retrieval": retrieval_accuracy(proj, truth, retrieval_batch, retrieval_loops, seed=seed),
                  "retrieval_shuffled": retrieval_accuracy(proj[shuffle], truth, retrieval_batch, retrieval_loops,
                                                           seed=seed)}
        for name, values in (("backbone", torch.cat(backbone)), ("prior", torch.cat(prior) if prior else None)):
            if values is not None:
                scores[f"{name}_cosine"] = float(F.cosine_similarity(values.flatten(1), truth.flatten(1)).mean())
                scores[f"{name}_mse"] = float(F.mse_loss(values, truth))
        if latents:
            pred = torch.cat(latents).flatten(1)
            true = torch.from_numpy(np.asarray(latent_targets[rows], dtype=np.float32)).flatten(1)
            scores["latent_mse"] = float(F.mse_loss(pred, true))
            mean = true.mean(0, keepdim=True)  # what every image shares would make any two latents correlate
            scores["latent_r"] = _row_corr(pred - mean, true - mean)
            scores["latent_r_shuffled"] = _row_corr(pred[shuffle] - mean, true - mean)
        out[subject] = scores
    return out


def _row_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).mean())


# -- the run ----------------------------------------------------------------------------------------------------
def _write_json(path: str, obj) -> None:
    atomic_write_json(path, obj, default=str)


def run_mindeye(config: MindEyeRunConfig, data=None, stimuli=None, progress: bool = True) -> dict:
    """Targets -> training -> ``<output_dir>/final`` -> evaluation. Returns the summary (also ``result.json``).

    ``data`` (a ``DatasetDict`` of NSD rows) and ``stimuli`` (``get(ids) -> uint8 (n, H, W, 3)``) default to
    ``load_nsd(config.nsd_root, ...)`` and ``NSDStimuli(config.nsd_root)``.
    """
    # imported here: accelerate is a heavy import, needed only on this path
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    start = time.perf_counter()
    if not config.resume_from_checkpoint and run_exists(config.output_dir):
        raise FileExistsError(f"{config.output_dir} already holds a run ({', '.join(run_exists(config.output_dir))}); "
                              "resume it with resume_from_checkpoint='latest', or choose another output_dir")
    if data is None and not config.nsd_root:
        raise ValueError("nsd_root is required (or pass data=)")
    accelerator = Accelerator(mixed_precision=config.mixed_precision,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    with accelerator.main_process_first():
        if data is None:
            data = load_rows(config)
        if stimuli is None:
            stimuli = NSDStimuli(config.nsd_root)
        train = split_arrays(data["train"], config.subjects, config.max_train_rows)
        splits = {"train": train}
        if config.eval_split:
            splits[config.eval_split] = split_arrays(data[config.eval_split], config.subjects)
        image_ids = np.unique(np.concatenate([s[2] for s in splits.values()]))
        targets, target_settings = cached_targets(config, image_ids, stimuli, need_latents=config.low_level,
                                                  progress=progress and accelerator.is_local_main_process)
    betas, subjects, nsd_ids, voxel_counts = train
    model = build_model(config, voxel_counts, targets, target_settings.get("z", {}).get("scaling_factor"))
    train_data = MindEyeTrainData(betas=betas, subjects=subjects, image_index=np.searchsorted(image_ids, nsd_ids),
                                  clip_targets=targets["clip_vision"],
                                  latent_targets=targets.get("z") if model.low_level is not None else None)
    trainer = MindEyeTrainer(model, config, train_data, accelerator=accelerator)
    prepared = time.perf_counter()
    trainer.train()
    trained = time.perf_counter()
    data_settings = {"nsd_root": config.nsd_root, "subjects": config.subjects, "sessions": config.sessions,
                     "average_train": config.average_train, "zscore": "train (load_nsd default)",
                     "train_rows": int(len(betas)), "targets": target_settings}
    final = trainer.save_model(extra_config={"run": asdict(config), "data": data_settings})
    if accelerator.is_main_process:  # the data this model was trained on: downstream steps read it
        data_contract(data["train"]).for_subjects(config.subjects).save(final)
    result = {"final_model": final, "global_step": trainer.global_step, "processes": accelerator.num_processes,
              "seconds": {"setup": prepared - start, "train": trained - prepared}}
    if config.eval_split and accelerator.is_main_process:
        e_betas, e_subjects, e_ids, _ = splits[config.eval_split]
        index = np.searchsorted(image_ids, e_ids)
        model = accelerator.unwrap_model(trainer.model)
        result["eval"] = evaluate_mindeye(
            model, e_betas, e_subjects, np.asarray(targets["clip_vision"])[index],
            np.asarray(targets["z"])[index] if "z" in targets else None, prior_steps=config.eval_prior_steps,
            retrieval_batch=config.eval_retrieval_batch, retrieval_loops=config.eval_retrieval_loops,
            batch_size=config.eval_batch_size, seed=config.seed, device=config.device)
        _write_json(os.path.join(config.output_dir, f"eval_{config.eval_split}.json"), result["eval"])
    result["seconds"]["total"] = time.perf_counter() - start
    if accelerator.is_main_process:
        _write_json(os.path.join(config.output_dir, "result.json"), result)
    accelerator.wait_for_everyone()
    return result


__all__ = ["MindEyeRunConfig", "build_model", "cached_targets", "evaluate_mindeye", "load_target_extractors",
           "run_mindeye", "split_arrays"]
