"""``simnsd/vdvae``: a small VDVAE (Child 2021) trained on SimNSD train images: the world's Brain-Diffuser
low-level model, in the place of the released ImageNet-64 VDVAE.

The same architecture and loss as the released model at SimNSD scale: 64 x 64 images, a narrow residual stream
at 64 and 32 px, latent layers at 1, 4, 8, 16, 32 and 64 px, a discretised-logistic-mixture output, the negative
ELBO (reconstruction NLL + the KL of every layer, nats per dimension) minimised with AdamW (VDVAE's betas 0.9,
0.9), VDVAE's gradient clipping and update skipping (a step whose gradient norm exceeds ``vdvae_skip_threshold``,
or whose loss is not finite, is dropped), and an exponential moving average of the weights, which is the model
shipped (VDVAE evaluates and releases its EMA weights). Inputs are normalised with the train images' own pixel
mean and standard deviation, as VDVAE does per dataset. ``num_target_layers`` (k) mirrors Brain-Diffuser's 31 of
75: every layer up to 16 px and the first 32 px one.

Scored on the 100 test images (never seen in training): reconstructions from all layers' posterior means and from
the first k (the rest drawn from the prior at temperature 1, as Brain-Diffuser decodes), against the mean train
image; MSE on [0, 1] pixels and MindEye's PixCorr.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ...core import save_png_atomic
from .loop import TrainLoop, update_ema


@dataclass
class VDVAETrainingConfig:
    """The world VDVAE's size and training (``recipes/train_world.py`` reads these from YAML or the command line)."""

    vdvae_width: int = field(default=32, metadata={"help": "Residual-stream channels at 64 px (the output head's)."})
    vdvae_custom_width_str: str = field(default="16:64,8:64,4:64,1:64", metadata={
        "help": "Wider streams at lower resolutions, 'resolution:width,...' (never narrower going down)."})
    vdvae_zdim: int = field(default=8, metadata={"help": "Channels of each latent layer (ImageNet-64: 16)."})
    vdvae_enc_blocks: str = field(default="64d2,32x1,32d2,16x2,16d2,8x2,8d2,4x2,4d4,1x2", metadata={
        "help": "Encoder blocks (VDVAE's block string: RxN blocks, RdK pool by K)."})
    vdvae_dec_blocks: str = field(default="1x1,4m1,4x2,8m4,8x2,16m8,16x3,32m16,32x1,64m32", metadata={
        "help": "Decoder blocks, one latent layer each (RxN blocks, RmS: upsample from S)."})
    vdvae_bottleneck_multiple: float = field(default=0.5, metadata={
        "help": "Bottleneck / stream channels (ImageNet-64: 0.25; 0.5 learns faster at this width)."})
    vdvae_num_mixtures: int = field(default=10, metadata={"help": "Logistic mixture components of the output."})
    vdvae_num_target_layers: int = field(default=12, metadata={
        "help": "k: the first k layers are the Brain-Diffuser regression target (all up to 16 px + the first "
                "32 px layer, as 31 of 75 at ImageNet-64)."})
    vdvae_steps: int = field(default=1200, metadata={"help": "Optimiser steps (skipped ones included)."})
    vdvae_batch_size: int = field(default=8, metadata={"help": "Images per step."})
    vdvae_learning_rate: float = field(default=2e-3, metadata={"help": "Peak AdamW learning rate (cosine decay)."})
    vdvae_warmup_steps: int = field(default=50, metadata={"help": "Linear warm-up steps."})
    vdvae_weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (VDVAE ImageNet: 0.01)."})
    vdvae_adam_beta2: float = field(default=0.9, metadata={"help": "AdamW beta2 (VDVAE: beta1 = beta2 = 0.9)."})
    vdvae_grad_clip: float = field(default=200.0, metadata={"help": "Gradient-norm clipping (VDVAE: 200)."})
    vdvae_skip_threshold: float = field(default=400.0, metadata={
        "help": "Skip the update when the gradient norm exceeds this (VDVAE: 400; -1 never skips)."})
    vdvae_ema_rate: float = field(default=0.99, metadata={
        "help": "Weight EMA decay; the EMA model is the one shipped (VDVAE ImageNet: 0.999 over 1.6M steps)."})

    def model(self, pixel_mean: float, pixel_std: float, image_size: int = 64):
        from ...models.vdvae import VDVAEModel

        return VDVAEModel(image_size=image_size, width=self.vdvae_width, zdim=self.vdvae_zdim,
                          enc_blocks=self.vdvae_enc_blocks, dec_blocks=self.vdvae_dec_blocks,
                          custom_width_str=self.vdvae_custom_width_str,
                          bottleneck_multiple=self.vdvae_bottleneck_multiple, num_mixtures=self.vdvae_num_mixtures,
                          pixel_mean=float(pixel_mean), pixel_std=float(pixel_std),
                          num_target_layers=self.vdvae_num_target_layers)


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1] (the VDVAE model's input range)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def reconstruction_metrics(model, images: np.ndarray, mean_image: np.ndarray, seed: int = 0, batch_size: int = 50,
                           device="cpu") -> dict:
    """MSE ([0, 1] pixels) and PixCorr of encode -> decode against the mean image, and the held-out ELBO.

    ``all_layers``: every layer's posterior mean, output mean (deterministic). ``first_k``: the first
    ``num_target_layers`` posterior means, the rest from the prior at temperature 1 (Brain-Diffuser's decode),
    output sampled and output mean. ``mean_image``: the mean train image for every test image.
    """
    from ...metrics import pixcorr

    k = model.config.num_target_layers
    runs = {"all_layers": dict(num_layers=model.num_layers, output="mean"),
            "first_k_output_mean": dict(num_layers=k, output="mean"),
            "first_k_output_sample": dict(num_layers=k, output="sample")}
    gt = to_unit(images)
    out, losses = {}, []
    for name, kwargs in runs.items():
        generator = torch.Generator().manual_seed(seed)
        recon = torch.cat([model.reconstruct(gt[i:i + batch_size].to(device), generator=generator, **kwargs).cpu()
                           for i in range(0, len(gt), batch_size)])
        out[name] = {"mse": float(((recon - gt) ** 2).mean()), "pixcorr": pixcorr(gt, recon)}
    baseline = to_unit(mean_image[None].round().clip(0, 255).astype(np.uint8)).expand_as(gt)
    out["mean_image"] = {"mse": float(((baseline - gt) ** 2).mean()), "pixcorr": pixcorr(gt, baseline)}
    generator = torch.Generator().manual_seed(seed)
    for i in range(0, len(gt), batch_size):
        batch = gt[i:i + batch_size]
        losses.append(float(model(batch.to(device), generator=generator).loss) * len(batch))
    out["elbo_nats_per_dim"] = sum(losses) / len(gt)
    out["num_layers"], out["first_k"], out["n"] = model.num_layers, k, len(gt)
    return out


def train_vdvae(config: VDVAETrainingConfig, data, seed: int = 0, device: str = "cpu", progress: bool = True):
    """Train on ``data.train`` images; returns ``(EMA VDVAEModel (eval, on CPU), record)``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = data.train.images
    pixels = images.astype(np.float64)
    model = config.model(pixels.mean(), pixels.std(), images.shape[1]).to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.vdvae_learning_rate,
                                  weight_decay=config.vdvae_weight_decay, betas=(0.9, config.vdvae_adam_beta2))
    generator = torch.Generator(device=device).manual_seed(seed)
    skipped, grad_norms = 0, []
    # VDVAE's update skipping: the step (and the EMA) are dropped when the loss or gradient norm is not finite
    # or the norm exceeds the threshold; the schedule advances anyway.
    with TrainLoop(optimizer, model.parameters(), config.vdvae_steps, config.vdvae_warmup_steps, "simnsd/vdvae",
                   progress, grad_clip=config.vdvae_grad_clip, window=50) as loop:
        for _ in range(loop.steps):
            rows = rng.choice(len(images), config.vdvae_batch_size, replace=len(images) < config.vdvae_batch_size)
            out = model(to_unit(images[rows]).to(device), generator=generator)
            norm = float(loop.backward(out.loss))
            grad_norms.append(norm)
            loss = out.loss.item()
            finite = math.isfinite(loss) and math.isfinite(norm)
            if finite and (config.vdvae_skip_threshold < 0 or norm < config.vdvae_skip_threshold):
                optimizer.step()
                update_ema(ema, model, config.vdvae_ema_rate)
            else:
                skipped += 1
            loop.end_step(loss, rate=f"{out.rate.item():.3f}", skipped=skipped)
    summary = loop.summary()
    ema = ema.to("cpu")
    mean_image = pixels.mean(0)
    record = {"config": asdict(config), "seed": seed, **summary, "skipped_updates": skipped,
              "max_grad_norm": float(np.max(grad_norms)),
              "parameters": sum(p.numel() for p in ema.parameters()),
              "pixel_mean": float(ema.config.pixel_mean), "pixel_std": float(ema.config.pixel_std),
              "latent_shapes": [list(s) for s in ema.latent_shapes()],
              "target_size": ema.arch.latent_size(ema.config.num_target_layers),
              "metrics": {"test": reconstruction_metrics(ema, data.test.images, mean_image, seed=seed),
                          "train_first_100": reconstruction_metrics(ema, images[:100], mean_image, seed=seed)}}
    record["eval_seconds"] = round(time.time() - loop.start - summary["train_seconds"], 1)
    return ema, record


@torch.no_grad()
def reconstruction_figure(model, images: np.ndarray, path: str, seed: int = 0, scale: int = 2) -> str:
    """A PNG of rows: ground truth | all layers (output mean) | the first k layers, rest from the prior (output
    sampled, as Brain-Diffuser) | the same, output mean | unconditional samples (output mean)."""
    from PIL import Image

    x = to_unit(images)
    k = model.config.num_target_layers
    generator = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    rows = [x, model.reconstruct(x),
            model.decode(model.encode(x, num_layers=k), generator=generator()),
            model.decode(model.encode(x, num_layers=k), generator=generator(), output="mean"),
            model.sample(len(x), generator=generator(), output="mean")]
    grid = torch.cat([torch.cat(list(row), 2) for row in rows], 1).permute(1, 2, 0).numpy()
    image = Image.fromarray((grid * 255).round().astype(np.uint8))
    save_png_atomic(image.resize((image.width * scale, image.height * scale), Image.NEAREST), path)
    return path
