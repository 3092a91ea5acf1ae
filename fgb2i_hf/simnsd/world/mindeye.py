"""``simnsd/mindeye``: a small MindEye (Scotti et al. 2023) trained on the four SimNSD subjects against the world's
Versatile Diffusion, so that the MindEye base runs on the world end to end.

One ``MindEyeModel`` (per-subject input layers, shared backbone, projector, diffusion prior, low-level head) trained
by the package's MindEye driver (``fgb2i_hf.drivers.mindeye.run_mindeye``, MindEye1's schedule and losses) on the
subjects' single-trial train rows, with its targets computed from ``simnsd/versatile``: the CLIP-image targets are
that folder's image encoder's normalised tokens (65 x 64, exactly the vision contexts the world VD's image stream
reads) and the low-level targets its VAE's posterior means (4 x 16 x 16, times the VAE's scaling factor). Sizes are
ours (tiny); the schedule's constants are MindEye1's except the epochs and the learning rate.

Scored on the 100 shared test images (repetition-averaged rows, per subject): retrieval (and a within-subject shuffle
of the brain rows as a control), the prior's closeness to the true tokens, the low-level latents, and reconstructions
through ``FgB2IVersatileDiffusionPipeline`` (base ``mindeye``, backbone ``simnsd/versatile``) from the prior's
samples and the blurry images, identified against the true stimuli with CLIP two-way identification.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import CLIPImageProcessor

from ...clip import CLIPScorer
from ...core import resolve_pretrained
from ...data import NSDStimuli
from ...drivers.mindeye import MindEyeRunConfig, load_rows, run_mindeye, split_arrays
from ...models.mindeye import MindEyeModel
from ...pipelines import build_pipeline
from .data import SIMNSD_SUBJECTS
from .diffusion import two_way_identification

TINY_MINDEYE = {"hidden_size": 256, "num_blocks": 2, "projector_hidden_size": 128, "prior_depth": 2, "prior_heads": 2,
                "prior_dim_head": 32, "low_level_hidden_size": 64, "low_level_num_blocks": 1,
                "low_level_channels": 16, "low_level_side": 4, "low_level_block_out_channels": [16, 16, 16],
                "low_level_norm_num_groups": 8}


@dataclass
class WorldMindEyeConfig:
    """The world MindEye's size, training and evaluation (the rest of the schedule: ``MindEyeTrainingConfig``'s
    defaults, MindEye1's)."""

    mindeye_subjects: list[str] = field(default_factory=lambda: list(SIMNSD_SUBJECTS), metadata={
        "help": "Subjects of the one model (each gets its own input layer)."})
    mindeye_model_config: dict | str | None = field(default_factory=lambda: dict(TINY_MINDEYE), metadata={
        "help": "MindEyeConfig fields (JSON on the command line); ours, tiny (MindEye1: hidden 4096, ...). The "
                "low-level head's 4 x 2^2 = 16 px latent side matches the world VAE's."})
    mindeye_epochs: int = field(default=20, metadata={"help": "Epochs (MindEye1: 240)."})
    mindeye_batch_size: int = field(default=32, metadata={"help": "Batch size (MindEye1: 32)."})
    mindeye_max_lr: float = field(default=1e-3, metadata={"help": "Peak OneCycle learning rate (MindEye1: 3e-4)."})
    mindeye_max_train_rows: int | None = field(default=None, metadata={
        "help": "Train on each subject's first N train rows only (quick runs and tests)."})
    mindeye_eval_prior_steps: int = field(default=100, metadata={
        "help": "Prior sampling steps in evaluation (MindEye1: all 100)."})
    mindeye_reconstruction_subjects: list[str] = field(default_factory=lambda: ["subj01"], metadata={
        "help": "Subjects whose test images are reconstructed through the world VD pipeline and scored."})
    mindeye_reconstruction_images: int = field(default=100, metadata={
        "help": "Test images reconstructed per subject (the first N of its test rows)."})

    def __post_init__(self):
        if isinstance(self.mindeye_model_config, str):
            text = self.mindeye_model_config.strip()
            self.mindeye_model_config = json.loads(text) if text else None
        self.mindeye_model_config = dict(self.mindeye_model_config or {})
        unknown = sorted(set(self.mindeye_reconstruction_subjects) - set(self.mindeye_subjects))
        if unknown:
            raise ValueError(f"mindeye_reconstruction_subjects {unknown} are not among mindeye_subjects "
                             f"{self.mindeye_subjects}")

    def run_config(self, nsd_root: str, versatile_path: str, output_dir: str, *, seed: int, device: str,
                   cache_dir: str | None = None, progress: bool = True):
        """The ``MindEyeRunConfig`` of the world run: targets from ``versatile_path`` at its image size."""
        size = CLIPImageProcessor.from_pretrained(resolve_pretrained(versatile_path),
                                                  subfolder="image_feature_extractor").crop_size
        return MindEyeRunConfig(
            nsd_root=nsd_root, output_dir=output_dir, subjects=list(self.mindeye_subjects), cache_dir=cache_dir,
            max_train_rows=self.mindeye_max_train_rows,
            target_model_name_or_path=versatile_path, clip_image_size=int(size["height"]),
            latent_image_size=int(size["height"]), device=device, extraction_batch_size=256,
            model_config=dict(self.mindeye_model_config), num_train_epochs=self.mindeye_epochs,
            per_device_train_batch_size=self.mindeye_batch_size, max_lr=self.mindeye_max_lr, seed=seed,
            eval_prior_steps=self.mindeye_eval_prior_steps, logging_steps=10, disable_tqdm=not progress)


@torch.no_grad()
def reconstruct_test_images(model, pipe, betas: np.ndarray, subject: str, *, seed: int = 0,
                            batch_size: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """``(reconstructions, blurry)``, uint8 (N, H, W, 3): the prior's samples and the low-level head's blurry images
    of each row, through the pipeline (its base's settings; ``w = 0``); row i's prior, VAE and diffusion noise come
    from ``torch.Generator().manual_seed(seed + i)``."""
    out, blurry_out = [], []
    for start in range(0, len(betas), batch_size):
        rows = range(start, min(start + batch_size, len(betas)))
        b = torch.from_numpy(np.asarray(betas[rows.start: rows.stop], dtype=np.float32))
        embeds, blurry = [], []
        for i, row in enumerate(rows):  # one generator per row, so a row's output does not depend on batching
            e, im = model.reconstruction_inputs(b[i: i + 1], subject, vae=pipe.vae,
                                                generator=torch.Generator().manual_seed(seed + row))
            embeds.append(e)
            blurry.append(im)
        embeds, blurry = torch.cat(embeds), torch.cat(blurry)
        images = pipe(w=0.0, base_vision_embeds=embeds, image=blurry, output_type="np",
                      generator=[torch.Generator().manual_seed(seed + row) for row in rows]).images
        out.append(_uint8(np.asarray(images)))
        blurry_out.append(_uint8(blurry.permute(0, 2, 3, 1).numpy()))
    return np.concatenate(out), np.concatenate(blurry_out)


def _uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(images * 255 + 0.5, 0, 255).astype(np.uint8)


def evaluate_reconstructions(model, versatile_path: str, clip_scorer, rows, stimuli, subjects, n: int = 100,
                             seed: int = 0) -> dict:
    """Per subject, on its first ``n`` test rows: CLIP two-way identification of the world VD's reconstructions
    (MindEye base) and of the blurry images against the true stimuli (chance 0.5), and of the reconstructions
    against the stimuli of the next row (a control: chance)."""
    pipe = build_pipeline("mindeye", versatile_path)
    pipe.set_progress_bar_config(disable=True)
    out = {"settings": {k: getattr(pipe.base, k) for k in ("strength", "num_inference_steps", "guidance_scale")},
           "scheduler": type(pipe.scheduler).__name__}
    for subject in subjects:
        start = time.time()
        betas, _, ids, counts = split_arrays(rows, [subject], max_rows=n)
        truth = stimuli.get([int(i) for i in ids])
        images, blurry = reconstruct_test_images(model, pipe, betas[:, : counts[subject]], subject, seed=seed)
        out[subject] = {"n": int(len(ids)),
                        "reconstruction_two_way": two_way_identification(clip_scorer, images, truth),
                        "blurry_two_way": two_way_identification(clip_scorer, blurry, truth),
                        "reconstruction_next_image_two_way": two_way_identification(
                            clip_scorer, images, np.roll(truth, -1, axis=0)),
                        "seconds": round(time.time() - start, 1)}
    return out


def train_world_mindeye(config: WorldMindEyeConfig, nsd_root: str, versatile_path: str, scratch: str, run_dir: str,
                        *, clip_path: str, seed: int = 0, device: str = "cpu", cache_dir: str | None = None,
                        progress: bool = True) -> dict:
    """Train with ``run_mindeye`` in ``run_dir`` (replaced), copy its ``final/`` model into ``scratch``, score
    reconstructions; returns the component's record (without the world's common fields)."""
    start = time.time()
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)
    run = config.run_config(nsd_root, versatile_path, run_dir, seed=seed, device=device, cache_dir=cache_dir,
                            progress=progress)
    result = run_mindeye(run, progress=progress)
    shutil.copytree(result["final_model"], scratch, dirs_exist_ok=True)
    train_seconds = time.time() - start
    model = MindEyeModel.from_pretrained(scratch).eval()
    rows = load_rows(run)["test"]
    reconstruction = evaluate_reconstructions(model, versatile_path, CLIPScorer.from_pretrained(clip_path), rows,
                                              NSDStimuli(nsd_root), config.mindeye_reconstruction_subjects,
                                              n=config.mindeye_reconstruction_images, seed=seed)
    return {"seed": seed, "train_seconds": round(train_seconds, 1),
            "eval_seconds": round(time.time() - start - train_seconds, 1), "global_step": result["global_step"],
            "parameters": sum(p.numel() for p in model.parameters()), "voxel_counts": model.config.voxel_counts,
            "targets": "simnsd/versatile: image_encoder tokens (clip_vision), vae latents (z)",
            "metrics": {"test": result.get("eval", {}), "reconstruction": reconstruction}}
