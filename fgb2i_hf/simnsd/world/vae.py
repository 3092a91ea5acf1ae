"""The world diffusion model's VAE: a small diffusers ``AutoencoderKL`` trained on SimNSD train images.

Stable Diffusion's first stage (Rombach et al. 2022, sec. 3.1) at SimNSD scale: 64 x 64 images <-> 4 x 16 x 16
latents (two downsamplings), trained as a VAE with an L1 reconstruction loss and a small KL term. The encoder
and decoder are fully convolutional (no mid-block attention), so training on random 32 x 32 crops (aligned to
the latent grid) teaches the same model at a quarter of the cost; every image is also seen whole at the end.
``scaling_factor`` is set, as SD's 0.18215 was, to 1 / the standard deviation of the train latents, so that the
UNet sees unit-variance latents.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .loop import TrainLoop


@dataclass
class VAETrainingConfig:
    """The world VAE's size and training."""

    vae_block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 64], metadata={
        "help": "Channels per resolution (64, 32, 16 px); len - 1 downsamplings."})
    vae_latent_channels: int = field(default=4, metadata={"help": "Latent channels (SD: 4)."})
    vae_norm_num_groups: int = field(default=8, metadata={"help": "GroupNorm groups."})
    vae_steps: int = field(default=1500, metadata={"help": "Optimiser steps."})
    vae_full_image_steps: int = field(default=300, metadata={
        "help": "Final steps on whole 64 x 64 images (the rest use crops)."})
    vae_batch_size: int = field(default=32, metadata={"help": "Images (or crops) per step."})
    vae_crop_size: int = field(default=32, metadata={"help": "Training crop size (a multiple of the downsampling)."})
    vae_learning_rate: float = field(default=2e-3, metadata={"help": "Peak AdamW learning rate (cosine decay)."})
    vae_kl_weight: float = field(default=1e-3, metadata={
        "help": "Weight of the KL term (mean over latent elements) against the L1 loss (mean over pixels)."})
    vae_warmup_steps: int = field(default=50, metadata={"help": "Linear warm-up steps."})

    def model(self, image_size: int = 64):
        from diffusers import AutoencoderKL

        n = len(self.vae_block_out_channels)
        return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                             up_block_types=("UpDecoderBlock2D",) * n,
                             block_out_channels=tuple(self.vae_block_out_channels), layers_per_block=1,
                             latent_channels=self.vae_latent_channels, norm_num_groups=self.vae_norm_num_groups,
                             sample_size=image_size, mid_block_add_attention=False)


def to_vae_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1] (SD's VAE input range)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _crops(x: torch.Tensor, size: int, multiple: int, rng: np.random.Generator) -> torch.Tensor:
    h, w = x.shape[-2:]
    if size >= h:
        return x
    ys = rng.integers(0, (h - size) // multiple + 1, len(x)) * multiple
    xs = rng.integers(0, (w - size) // multiple + 1, len(x)) * multiple
    return torch.stack([x[i, :, y: y + size, c: c + size] for i, (y, c) in enumerate(zip(ys, xs))])


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, batch_size: int = 64, device="cpu"):
    """Posterior ``(mean, std)`` of uint8 images, unscaled, each float32 (N, C, h, w)."""
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        posterior = vae.encode(to_vae_input(images[i: i + batch_size]).to(device)).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruction_error(vae, images: np.ndarray, device="cpu", batch_size: int = 64) -> dict:
    """Mean absolute error (0-255 scale) and PSNR of ``decode(posterior mean)`` against the images."""
    errors, mses = [], []
    for i in range(0, len(images), batch_size):
        x = to_vae_input(images[i: i + batch_size]).to(device)
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        errors.append(((y - x).abs() * 127.5).mean((1, 2, 3)).cpu())
        mses.append((((y - x) * 127.5) ** 2).mean((1, 2, 3)).cpu())
    mse = torch.cat(mses)
    return {"mae_255": float(torch.cat(errors).mean()), "psnr_db": float((10 * torch.log10(255.0**2 / mse)).mean())}


def train_vae(config: VAETrainingConfig, data, seed: int = 0, device: str = "cpu", progress: bool = True):
    """Train the VAE on ``data.train`` images; returns ``(AutoencoderKL, record)`` with its ``scaling_factor`` set."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = data.train.images
    vae = config.model(images.shape[1]).to(device).train()
    multiple = 2 ** (len(config.vae_block_out_channels) - 1)
    if config.vae_crop_size % multiple:
        raise ValueError(f"vae_crop_size must be a multiple of {multiple}, got {config.vae_crop_size}")
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate, weight_decay=0.0)
    with TrainLoop(optimizer, vae.parameters(), config.vae_steps, config.vae_warmup_steps, "simnsd/diffusion vae",
                   progress, grad_clip=1.0, digits=4) as loop:
        for step in range(loop.steps):
            rows = rng.choice(len(images), config.vae_batch_size, replace=len(images) < config.vae_batch_size)
            x = to_vae_input(images[rows])
            if step < loop.steps - config.vae_full_image_steps:
                x = _crops(x, config.vae_crop_size, multiple, rng)
            x = x.to(device)
            posterior = vae.encode(x).latent_dist
            z = posterior.sample(generator=None)
            recon = vae.decode(z).sample
            kl = 0.5 * (posterior.mean**2 + posterior.var - 1.0 - posterior.logvar).mean()
            loop.step((recon - x).abs().mean() + config.vae_kl_weight * kl, kl=f"{kl.item():.2f}")
    vae.eval()
    mean, std = encode_latents(vae, images, device=device)
    samples = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
    scaling_factor = float(1.0 / samples.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    record = {"config": asdict(config), "seed": seed, **loop.summary(), "scaling_factor": scaling_factor,
              "latent_shape": list(mean.shape[1:]), "posterior_std_mean": float(std.mean()),
              "metrics": {"test_reconstruction": reconstruction_error(vae, data.test.images, device=device),
                          "train_reconstruction": reconstruction_error(vae, images[:200], device=device)}}
    return vae, record
