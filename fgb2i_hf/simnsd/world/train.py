"""Train the SimNSD world, component by component: ``train_world(config, clip=..., gpt2=..., ...)``.

``recipes/train_world.py`` parses the configs (YAML + command line) and calls this. Order and dependencies:

* ``clip``      — ``CLIPScorer`` folder;
* ``gpt2``      — ``GPT2LMHeadModel`` + tokenizer folder;
* ``diffusion`` — VAE, then the UNet on the ``clip`` text tower converted to ``CLIPTextModel`` (needs ``clip``);
* ``ldm_base``  — ridge decoders onto the ``diffusion`` VAE latents and text states (needs ``diffusion``);
* ``vdvae``     — ``VDVAEModel`` folder, Brain-Diffuser's low-level model;
* ``versatile`` — a Versatile Diffusion folder: the ``clip`` towers converted, the ``diffusion`` VAE and scheduler,
  a dual-attention UNet trained on both contexts (needs ``clip`` and ``diffusion``);
* ``mindeye``   — ``MindEyeModel`` folder on the four subjects, its targets from ``versatile`` (needs ``versatile``).

Each component is written to a scratch folder beside ``<output_dir>/<component>``, its weights optionally
rewritten in float16, a ``world_training.json`` record added (configs, seed, data, metrics, time, size, library
versions), and the folder swapped in whole. ``output_dir`` defaults to the package's ``fgb2i_hf/simnsd/world``, where
``simnsd/<component>`` finds it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field

import torch

from ...clip import CLIPScorer
from ...core import publish_folder, scratch_folder, world_dir
from .clip import CLIPTrainingConfig, train_clip
from .data import load_world_data, simulate_world_nsd
from .diffusion import UNetTrainingConfig, evaluate_diffusion, sample_grid, train_unet
from .gpt2 import GPT2TrainingConfig, train_gpt2
from .io import compact_clip_tokenizer, folder_bytes, halve_safetensors, write_record
from .ldm_base import LDMBaseConfig, fit_ldm_base
from .mindeye import WorldMindEyeConfig, train_world_mindeye
from .text_encoder import convert_open_clip_text_to_hf, world_clip_tokenizer
from .vae import VAETrainingConfig, train_vae
from .vdvae import VDVAETrainingConfig, train_vdvae
from .versatile import VersatileTrainingConfig, evaluate_versatile
from .versatile import sample_grid as versatile_sample_grid
from .versatile import save_versatile, train_versatile

COMPONENTS = ("clip", "gpt2", "diffusion", "ldm_base", "vdvae", "versatile", "mindeye")
DEPENDENCIES = {"diffusion": ("clip",), "ldm_base": ("diffusion",), "versatile": ("clip", "diffusion"),
                "mindeye": ("versatile",)}


@dataclass
class TrainWorldConfig:
    """What to train, on which SimNSD, where to write it."""

    components: list[str] = field(default_factory=lambda: list(COMPONENTS), metadata={
        "help": "Components to (re)train: clip gpt2 diffusion ldm_base vdvae versatile mindeye. Others are left as "
                "they are; a component's dependencies (diffusion needs clip, ldm_base diffusion, versatile clip and "
                "diffusion, mindeye versatile) are read from output_dir."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Where the component folders go (default: the package's fgb2i_hf/simnsd/world, i.e. simnsd/<name>)."})
    work_dir: str = field(default="world_work", metadata={
        "help": "Scratch space: the simulated SimNSD, dataset cache, ridge targets, sample grid."})
    nsd_root: str | None = field(default=None, metadata={
        "help": "A SimNSD to train on (default: simulate the tiny one, simnsd_seed, in work_dir/simnsd)."})
    datasets_cache_dir: str | None = field(default=None, metadata={
        "help": "`datasets` cache of the NSD builds (default: work_dir/datasets_cache)."})
    simnsd_seed: int = field(default=0, metadata={"help": "Seed of the simulated SimNSD."})
    seed: int = field(default=0, metadata={"help": "Seed of every component's initialisation and sampling."})
    device: str = field(default="cpu", metadata={"help": "Torch device to train on."})
    num_threads: int | None = field(default=None, metadata={"help": "torch.set_num_threads (default: torch's)."})
    storage_dtype: str = field(default="float16", metadata={
        "help": "Dtype of the saved weights (models still load and compute in float32).",
        "choices": ["float16", "float32"]})
    max_train_images: int | None = field(default=None, metadata={
        "help": "Train the neural components on the first N train images only (quick runs and tests)."})
    diffusion_eval_images: int = field(default=100, metadata={
        "help": "Test images the diffusion and versatile models are scored on (backgrounds, CLIP two-way)."})
    diffusion_eval_steps: int = field(default=25, metadata={
        "help": "Sampling steps of the diffusion evaluation and of the sample grid."})
    sample_grid_path: str | None = field(default=None, metadata={
        "help": "PNG of diffusion samples next to the ground truth (default: work_dir/diffusion_samples.png)."})
    progress: bool = field(default=True, metadata={"help": "Progress bars."})


def _check(config: TrainWorldConfig, output_dir: str):
    unknown = set(config.components) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unknown world components {sorted(unknown)}; choose from {list(COMPONENTS)}")
    for component, dependencies in DEPENDENCIES.items():
        for needs in dependencies:
            if component in config.components and needs not in config.components \
                    and not os.path.isdir(os.path.join(output_dir, needs)):
                raise FileNotFoundError(f"training {component!r} needs the {needs!r} component: select it too or "
                                        f"have {os.path.join(output_dir, needs)} already")


def _finish(scratch: str, final: str, record: dict, config: TrainWorldConfig, data, component_config) -> dict:
    if config.storage_dtype == "float16":
        halve_safetensors(scratch)
    record = {"component": f"simnsd/{os.path.basename(final)}", **record,
              "component_config": dataclasses.asdict(component_config) if component_config else None,
              "world_config": dataclasses.asdict(config), "storage_dtype": config.storage_dtype,
              "data": {"nsd_root": "simulated" if config.nsd_root is None else config.nsd_root,
                       "simnsd_seed": config.simnsd_seed, "train_images": len(data.train),
                       "test_images": len(data.test)}}
    record.pop("config", None)
    write_record(scratch, record)
    record["size_bytes"] = folder_bytes(scratch)
    write_record(scratch, record)
    publish_folder(scratch, final)
    return record


def train_world(config: TrainWorldConfig, clip: CLIPTrainingConfig | None = None,
                gpt2: GPT2TrainingConfig | None = None, vae: VAETrainingConfig | None = None,
                unet: UNetTrainingConfig | None = None, ldm_base: LDMBaseConfig | None = None,
                vdvae: VDVAETrainingConfig | None = None, versatile: VersatileTrainingConfig | None = None,
                mindeye: WorldMindEyeConfig | None = None) -> dict:
    """Train the selected components; returns ``{component: record}`` (metrics, seconds, bytes)."""
    clip, gpt2 = clip or CLIPTrainingConfig(), gpt2 or GPT2TrainingConfig()
    vae, unet, ldm_base = vae or VAETrainingConfig(), unet or UNetTrainingConfig(), ldm_base or LDMBaseConfig()
    vdvae, versatile = vdvae or VDVAETrainingConfig(), versatile or VersatileTrainingConfig()
    mindeye = mindeye or WorldMindEyeConfig()
    output_dir = os.path.abspath(config.output_dir or world_dir())
    _check(config, output_dir)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    os.makedirs(config.work_dir, exist_ok=True)
    nsd_root = config.nsd_root or simulate_world_nsd(os.path.join(config.work_dir, "simnsd"), config.simnsd_seed)
    cache_dir = config.datasets_cache_dir or os.path.join(config.work_dir, "datasets_cache")
    data = load_world_data(nsd_root, cache_dir=cache_dir)
    data = data.subset(train=config.max_train_images)
    records, device, progress = {}, config.device, config.progress

    if "clip" in config.components:
        scorer, record = train_clip(clip, data, seed=config.seed, device=device, progress=progress)
        scratch = scratch_folder(os.path.join(output_dir, "clip"))
        scorer.to("cpu").save_pretrained(scratch)
        records["clip"] = _finish(scratch, os.path.join(output_dir, "clip"), record, config, data, clip)

    if "gpt2" in config.components:
        model, tokenizer, record = train_gpt2(gpt2, data, seed=config.seed, device=device, progress=progress)
        scratch = scratch_folder(os.path.join(output_dir, "gpt2"))
        model.to("cpu").save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        records["gpt2"] = _finish(scratch, os.path.join(output_dir, "gpt2"), record, config, data, gpt2)

    if "diffusion" in config.components:
        records["diffusion"] = _train_diffusion(config, data, output_dir, vae, unet)

    if "ldm_base" in config.components:
        final = os.path.join(output_dir, "ldm_base")
        scratch = scratch_folder(final)
        in_package = os.path.abspath(output_dir) == os.path.abspath(world_dir())
        diffusion_model = "simnsd/diffusion" if in_package else os.path.join(output_dir, "diffusion")
        record = fit_ldm_base(ldm_base, nsd_root, diffusion_model, scratch, config.work_dir, seed=config.seed,
                              device=device, progress=progress, cache_dir=cache_dir)
        records["ldm_base"] = _finish(scratch, final, record, config, data, ldm_base)

    if "vdvae" in config.components:
        model, record = train_vdvae(vdvae, data, seed=config.seed, device=device, progress=progress)
        scratch = scratch_folder(os.path.join(output_dir, "vdvae"))
        model.to("cpu").save_pretrained(scratch)
        records["vdvae"] = _finish(scratch, os.path.join(output_dir, "vdvae"), record, config, data, vdvae)

    if "versatile" in config.components:
        records["versatile"] = _train_versatile(config, data, output_dir, versatile)

    if "mindeye" in config.components:
        final = os.path.join(output_dir, "mindeye")
        scratch = scratch_folder(final)
        # the shipped world's VD by its name, so the model's record names no machine's folder
        versatile_path = "simnsd/versatile" if output_dir == os.path.abspath(world_dir()) else os.path.join(
            output_dir, "versatile")
        record = train_world_mindeye(mindeye, nsd_root, versatile_path, scratch,
                                     os.path.join(config.work_dir, "mindeye_run"), clip_path=os.path.join(
                                         output_dir, "clip"), seed=config.seed, device=device, cache_dir=cache_dir,
                                     progress=progress)
        records["mindeye"] = _finish(scratch, final, record, config, data, mindeye)
    return records


def _train_versatile(config: TrainWorldConfig, data, output_dir: str, vd_config: VersatileTrainingConfig) -> dict:
    start = time.time()
    scorer = CLIPScorer.from_pretrained(os.path.join(output_dir, "clip"))
    pipe, unet_record = train_versatile(vd_config, data, scorer, os.path.join(output_dir, "diffusion"),
                                        seed=config.seed, device=config.device, progress=config.progress)
    train_seconds = time.time() - start
    sampling = dict(seed=config.seed, num_inference_steps=vd_config.vd_eval_steps,
                    guidance_scale=vd_config.vd_eval_guidance_scale)
    metrics = evaluate_versatile(pipe, data.test, scorer, n=config.diffusion_eval_images, **sampling)
    grid = os.path.join(config.work_dir, "versatile_samples.png")
    versatile_sample_grid(pipe, data.test, grid, **sampling)
    final = os.path.join(output_dir, "versatile")
    scratch = save_versatile(pipe, scratch_folder(final))
    record = {"seed": config.seed, "train_seconds": round(train_seconds, 1),
              "eval_seconds": round(time.time() - start - train_seconds, 1), "metrics": {"test": metrics},
              "unet": unet_record, "text_encoder": "simnsd/clip text tower, converted (with projection)",
              "image_encoder": "simnsd/clip image tower, converted", "vae_and_scheduler": "simnsd/diffusion's",
              "sample_grid": os.path.basename(grid)}
    return _finish(scratch, final, record, config, data, vd_config)


def _train_diffusion(config: TrainWorldConfig, data, output_dir: str, vae_config: VAETrainingConfig,
                     unet_config: UNetTrainingConfig) -> dict:
    start = time.time()
    scorer = CLIPScorer.from_pretrained(os.path.join(output_dir, "clip"))
    text_encoder = convert_open_clip_text_to_hf(scorer)
    tokenizer = world_clip_tokenizer(scorer.model.context_length)
    vae, vae_record = train_vae(vae_config, data, seed=config.seed, device=config.device, progress=config.progress)
    pipe, unet_record = train_unet(unet_config, data, vae, text_encoder, tokenizer, seed=config.seed,
                                   device=config.device, progress=config.progress)
    pipe = pipe.to("cpu")
    train_seconds = time.time() - start
    metrics = evaluate_diffusion(pipe, data.test, clip_scorer=scorer, n=config.diffusion_eval_images,
                                 seed=config.seed, num_inference_steps=config.diffusion_eval_steps)
    grid = config.sample_grid_path or os.path.join(config.work_dir, "diffusion_samples.png")
    os.makedirs(os.path.dirname(os.path.abspath(grid)), exist_ok=True)
    sample_grid(pipe, data.test, grid, seed=config.seed, num_inference_steps=config.diffusion_eval_steps)
    final = os.path.join(output_dir, "diffusion")
    scratch = scratch_folder(final)
    shutil.rmtree(scratch)  # save_pretrained creates it
    pipe.save_pretrained(scratch)
    compact_clip_tokenizer(os.path.join(scratch, "tokenizer"))
    record = {"seed": config.seed, "train_seconds": round(train_seconds, 1), "metrics": {"test": metrics},
              "vae": vae_record, "unet": unet_record, "text_encoder": "simnsd/clip text tower, converted",
              "sample_grid": os.path.basename(grid)}
    return _finish(scratch, final, record, config, data, None)
