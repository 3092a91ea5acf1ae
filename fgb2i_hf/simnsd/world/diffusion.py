"""``simnsd/diffusion``: a tiny text-to-image latent diffusion model in Stable Diffusion's structure.

A ``StableDiffusionPipeline`` folder: ``vae`` (``world.vae``), ``text_encoder`` (the ``simnsd/clip`` text tower
converted to ``CLIPTextModel``, frozen), ``tokenizer`` (offline ``CLIPTokenizer``, padding with id 0 as open_clip
does), ``unet`` (``UNet2DConditionModel`` cross-attending to the text encoder's last hidden state) and a
``DDIMScheduler``. The UNet is trained as SD's (Rombach et al. 2022, eq. 2) on the train images' latents and
captions, with three choices of later work that make a small model learn fast and draw the right background:

* v-prediction (Salimans & Ho 2022) with a noise schedule rescaled to zero terminal SNR and "trailing" timesteps
  (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed"), so the first sampling step
  starts from pure noise, as in training, and a scene's overall colours come from the caption;
* caption dropout (10 % empty prompts) for classifier-free guidance (Ho & Salimans 2022);
* an exponential moving average of the weights, which is what is saved.

Each step pairs an image with its fine caption (probability ``unet_fine_caption_probability``) or one of its
COCO-like captions; the text hidden states are computed once, through the saved tokenizer and text encoder, so
training sees exactly what the pipeline computes at inference.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ...core import save_png_atomic
from .loop import TrainLoop, update_ema
from .vae import encode_latents, to_vae_input


@dataclass
class UNetTrainingConfig:
    """The world UNet's size and training, and the scheduler saved with the pipeline."""

    unet_block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 96], metadata={
        "help": "Channels per resolution (16, 8, 4 latent px)."})
    unet_attention_levels: list[int] = field(default_factory=lambda: [1, 2], metadata={
        "help": "Resolution levels (0 = 16 px) with cross-attention transformer blocks."})
    unet_attention_heads: int = field(default=4, metadata={"help": "Attention heads per transformer block."})
    unet_layers_per_block: int = field(default=1, metadata={"help": "ResNet blocks per level (down path)."})
    unet_norm_num_groups: int = field(default=8, metadata={"help": "GroupNorm groups."})
    unet_steps: int = field(default=6000, metadata={"help": "Optimiser steps."})
    unet_batch_size: int = field(default=32, metadata={"help": "Latents per step."})
    unet_learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate (cosine decay)."})
    unet_warmup_steps: int = field(default=200, metadata={"help": "Linear warm-up steps."})
    unet_ema_decay: float = field(default=0.999, metadata={"help": "EMA decay of the saved weights."})
    unet_caption_dropout: float = field(default=0.1, metadata={"help": "Fraction of empty prompts (for CFG)."})
    unet_fine_caption_probability: float = field(default=0.5, metadata={
        "help": "Probability of conditioning on the fine caption rather than a COCO-like one."})
    num_train_timesteps: int = field(default=1000, metadata={"help": "Diffusion steps of the noise schedule."})
    beta_start: float = field(default=0.00085, metadata={"help": "SD's scaled-linear schedule: first beta."})
    beta_end: float = field(default=0.012, metadata={"help": "SD's scaled-linear schedule: last beta."})

    def scheduler(self):
        # imported here: diffusers is a heavy import, needed only on this path
        from diffusers import DDIMScheduler

        return DDIMScheduler(num_train_timesteps=self.num_train_timesteps, beta_start=self.beta_start,
                             beta_end=self.beta_end, beta_schedule="scaled_linear", clip_sample=False,
                             set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
                             rescale_betas_zero_snr=True, timestep_spacing="trailing")

    def model(self, sample_size: int, latent_channels: int, cross_attention_dim: int):
        return unet_model(self.unet_block_out_channels, self.unet_attention_levels, self.unet_attention_heads,
                          self.unet_layers_per_block, self.unet_norm_num_groups, sample_size=sample_size,
                          latent_channels=latent_channels, cross_attention_dim=cross_attention_dim)


def unet_model(block_out_channels, attention_levels, attention_heads: int, layers_per_block: int,
               norm_num_groups: int, *, sample_size: int, latent_channels: int, cross_attention_dim: int,
               dual_cross_attention: bool = False):
    """A ``UNet2DConditionModel`` with cross-attention transformer blocks at ``attention_levels`` (0 = full
    resolution) and in the middle block; with ``dual_cross_attention`` each is Versatile Diffusion's
    ``DualTransformer2DModel`` (a text and an image stream)."""
    # imported here: diffusers is a heavy import, needed only on this path
    from diffusers import UNet2DConditionModel

    n = len(block_out_channels)
    levels = set(attention_levels)
    down = tuple("CrossAttnDownBlock2D" if i in levels else "DownBlock2D" for i in range(n))
    up = tuple("CrossAttnUpBlock2D" if (n - 1 - i) in levels else "UpBlock2D" for i in range(n))
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=tuple(block_out_channels), down_block_types=down, up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn", layers_per_block=layers_per_block,
        cross_attention_dim=cross_attention_dim, attention_head_dim=attention_heads,
        norm_num_groups=norm_num_groups, dual_cross_attention=dual_cross_attention)


@torch.no_grad()
def text_hidden_states(tokenizer, text_encoder, texts, batch_size: int = 512, device="cpu") -> torch.Tensor:
    """(N, L, D) last hidden states, as ``StableDiffusionPipeline.encode_prompt`` computes them."""
    out = []
    for i in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[i: i + batch_size]), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(device)
        out.append(text_encoder(ids)[0].float().cpu())
    return torch.cat(out)


def build_pipeline(vae, text_encoder, tokenizer, unet, scheduler):
    # imported here: diffusers is a heavy import, needed only on this path
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def train_denoiser(unet, scheduler, latent_mean: torch.Tensor, latent_std: torch.Tensor, scaling_factor: float,
                   conditioning, *, steps: int, batch_size: int, learning_rate: float, warmup_steps: int,
                   ema_decay: float, rng: np.random.Generator, generator: torch.Generator, device="cpu",
                   desc: str = "unet", progress: bool = True, start: float | None = None):
    """Train ``unet`` as SD's denoiser with v-prediction on the VAE posteriors ``(latent_mean, latent_std)``
    (N, C, h, w), unscaled; returns ``(EMA copy of the UNet (eval), the finished TrainLoop)`` (its ``losses``
    and ``summary()``; ``start``: the time its wall time counts from).

    Each step draws ``batch_size`` image rows with ``rng``, asks ``conditioning(rows)`` for the
    ``encoder_hidden_states`` (it may use ``rng`` and set per-example state on the UNet, such as the dual
    attention's text weights), samples latents, noise and timesteps with ``generator``, and takes an AdamW step
    (``TrainLoop``: cosine schedule with warm-up, gradient norm clipped at 1); the EMA follows the weights with a
    warm-up decay ``min(ema_decay, (1 + step) / (10 + step))``.
    """
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=0.01)
    alphas_cumprod = scheduler.alphas_cumprod
    num_train_timesteps = scheduler.config.num_train_timesteps
    n = len(latent_mean)
    with TrainLoop(optimizer, unet.parameters(), steps, warmup_steps, desc, progress, grad_clip=1.0, window=50,
                   digits=4, start=start) as loop:
        for step in range(loop.steps):
            rows = rng.choice(n, batch_size, replace=n < batch_size)
            cond = conditioning(rows)
            z = (latent_mean[rows] + latent_std[rows] * torch.randn(latent_mean[rows].shape, generator=generator))
            z = z * scaling_factor
            noise = torch.randn(z.shape, generator=generator)
            t = torch.randint(0, num_train_timesteps, (len(rows),), generator=generator)
            a = alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
            s = (1 - alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
            noisy, target = a * z + s * noise, a * noise - s * z  # v = alpha * eps - sigma * x0
            pred = unet(noisy.to(device), t.to(device), cond.to(device)).sample
            loop.step(F.mse_loss(pred, target.to(device)))
            update_ema(ema, unet, min(ema_decay, (1 + step) / (10 + step)))
    return ema, loop


def train_unet(config: UNetTrainingConfig, data, vae, text_encoder, tokenizer, seed: int = 0, device: str = "cpu",
               progress: bool = True):
    """Train the UNet on ``data.train`` (latents of ``vae``, captions through ``text_encoder``); returns
    ``(StableDiffusionPipeline with the EMA UNet, record)``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    vae, text_encoder = vae.to(device).eval(), text_encoder.to(device).eval()
    train = data.train
    mean, std = encode_latents(vae, train.images, device=device)
    owner, texts = train.caption_pairs(fine=True)
    is_fine = np.zeros(len(texts), bool)
    n_coco = sum(len(c) for c in train.captions)
    # caption_pairs lists an image's COCO captions, then its fine ones
    cursor = 0
    coco_rows, fine_rows = [[] for _ in range(len(train))], [[] for _ in range(len(train))]
    for i, (caps, fines) in enumerate(zip(train.captions, train.fine_captions)):
        coco_rows[i] = list(range(cursor, cursor + len(caps)))
        fine_rows[i] = list(range(cursor + len(caps), cursor + len(caps) + len(fines)))
        is_fine[fine_rows[i]] = True
        cursor += len(caps) + len(fines)
    assert cursor == len(texts) and int((~is_fine).sum()) == n_coco
    states = text_hidden_states(tokenizer, text_encoder, texts, device=device)
    empty = text_hidden_states(tokenizer, text_encoder, [""], device=device)[0]
    encode_seconds = time.time() - start

    scheduler = config.scheduler()
    unet = config.model(mean.shape[-1], mean.shape[1], states.shape[-1]).to(device).train()

    def conditioning(rows):
        caption_rows = [fine_rows[i][rng.integers(len(fine_rows[i]))]
                        if fine_rows[i] and rng.random() < config.unet_fine_caption_probability
                        else coco_rows[i][rng.integers(len(coco_rows[i]))] for i in rows]
        cond = states[caption_rows].clone()
        drop = torch.from_numpy(rng.random(len(rows)) < config.unet_caption_dropout)
        cond[drop] = empty
        return cond

    ema, loop = train_denoiser(
        unet, scheduler, mean, std, vae.config.scaling_factor, conditioning, steps=config.unet_steps,
        batch_size=config.unet_batch_size, learning_rate=config.unet_learning_rate,
        warmup_steps=config.unet_warmup_steps, ema_decay=config.unet_ema_decay, rng=rng, generator=generator,
        device=device, desc="simnsd/diffusion unet", progress=progress, start=start)
    pipe = build_pipeline(vae, text_encoder, tokenizer, ema.to("cpu"), scheduler)
    losses = loop.losses
    record = {"config": asdict(config), "seed": seed, **loop.summary(),
              "text_and_latent_encoding_seconds": round(encode_seconds, 1), "train_pairs": len(texts),
              "loss_curve": [round(float(np.mean(losses[i: i + 100])), 4) for i in range(0, len(losses), 100)]}
    return pipe, record


# --- checks of a trained pipeline ---------------------------------------------------------------------------------

# Ground-truth colours of SimNSD's backgrounds (fgb2i_hf.simnsd.scenes._background): (upper band, bottom band)
BACKGROUND_COLOURS = {"street": ((150, 150, 155), (95, 95, 100)), "grass": ((170, 210, 240), (95, 165, 75)),
                      "water": ((185, 215, 240), (45, 105, 185)), "indoor": ((225, 205, 170), (150, 105, 65))}
BACKGROUND_WORDS = {"street": ("grey street", "street", "road"), "grass": ("grass", "field", "lawn"),
                    "water": ("water", "lake"), "indoor": ("room", "indoors")}


def background_of(image: np.ndarray) -> str:
    """The SimNSD background whose colours are nearest to the median colours of an image's top band
    (rows 12-18 %) and bottom band (last 6 %): uint8 (H, W, 3) -> "street" | "grass" | "water" | "indoor"."""
    h = image.shape[0]
    top = np.median(image[int(0.12 * h): max(int(0.18 * h), int(0.12 * h) + 1)].reshape(-1, 3), 0)
    bottom = np.median(image[int(0.94 * h):].reshape(-1, 3), 0)
    distance = {name: np.linalg.norm(top - np.array(up)) + np.linalg.norm(bottom - np.array(down))
                for name, (up, down) in BACKGROUND_COLOURS.items()}
    return min(distance, key=distance.get)


def background_in_caption(caption: str) -> str | None:
    text = caption.lower()
    for name, words in BACKGROUND_WORDS.items():
        if any(w in text for w in words):
            return name
    return None


@torch.no_grad()
def render(pipe, prompts, seed: int = 0, num_inference_steps: int = 25, guidance_scale: float = 4.0,
           batch_size: int = 16, image=None, strength: float = 0.8) -> np.ndarray:
    """uint8 (N, H, W, 3) images for ``prompts``, each from ``torch.Generator().manual_seed(seed)``; with ``image``
    (uint8 (N, H, W, 3)), img2img at ``strength`` through ``StableDiffusionImg2ImgPipeline`` with the same parts."""
    # imported here: diffusers is a heavy import, needed only on this path
    from diffusers import StableDiffusionImg2ImgPipeline

    runner = pipe if image is None else StableDiffusionImg2ImgPipeline(**pipe.components)
    runner.set_progress_bar_config(disable=True)
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i: i + batch_size])
        kwargs = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, output_type="np",
                      generator=[torch.Generator().manual_seed(seed) for _ in chunk])
        if image is not None:
            kwargs.update(image=to_vae_input(image[i: i + batch_size]) / 2 + 0.5, strength=strength)
        images = runner(chunk, **kwargs).images
        out.append(np.clip(np.asarray(images) * 255 + 0.5, 0, 255).astype(np.uint8))
    return np.concatenate(out)


def evaluate_diffusion(pipe, split, clip_scorer=None, n: int = 100, seed: int = 0, **render_kwargs) -> dict:
    """On the first ``n`` images of a split, generate from each fine caption and score:

    * ``background_accuracy``: generated background (``background_of``) = the caption's;
    * ``clip_two_way``: CLIP image-image two-way identification of generated vs ground-truth images (chance 0.5);
    * ``gt_background_accuracy``: ``background_of`` on the ground truth (the classifier's own accuracy);
    * ``img2img_*``: the same from each image's own latent at strength 0.8 (the LDM base's use).
    """
    captions = [(f[0] if f else c[0]) for c, f in zip(split.captions[:n], split.fine_captions[:n])]
    truth = split.images[:n]
    expected = [background_in_caption(c) for c in captions]
    start = time.time()
    generated = render(pipe, captions, seed=seed, **render_kwargs)
    seconds_per_image = (time.time() - start) / len(captions)
    img2img = render(pipe, captions, seed=seed, image=truth, **render_kwargs)
    metrics = {"n": len(captions), "seconds_per_image": round(seconds_per_image, 3),
               "background_accuracy": float(np.mean([background_of(g) == e for g, e in zip(generated, expected)])),
               "gt_background_accuracy": float(np.mean([background_of(g) == e for g, e in zip(truth, expected)])),
               "img2img_background_accuracy": float(np.mean([background_of(g) == e
                                                              for g, e in zip(img2img, expected)]))}
    if clip_scorer is not None:
        metrics["clip_two_way"] = two_way_identification(clip_scorer, generated, truth)
        metrics["img2img_clip_two_way"] = two_way_identification(clip_scorer, img2img, truth)
    return metrics


@torch.no_grad()
def two_way_identification(scorer, generated: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of (i, j != i) pairs where generated[i] is more similar to truth[i] than to truth[j]."""
    g, t = scorer.encode_images(generated), scorer.encode_images(truth)
    sims = (g @ t.T).cpu().numpy()
    own = np.diag(sims)[:, None]
    off = ~np.eye(len(sims), dtype=bool)
    return float((own > sims)[off].mean())


def sample_grid(pipe, split, path: str, n: int = 8, seed: int = 0, **render_kwargs) -> str:
    """A PNG: per test image, ground truth | from the fine caption | from a COCO caption | img2img (0.8) from its
    latent, with the fine caption written underneath. Returns ``path``."""
    fine = [(f[0] if f else c[0]) for c, f in zip(split.captions[:n], split.fine_captions[:n])]
    coco = [c[0] for c in split.captions[:n]]
    truth = split.images[:n]
    columns = [truth, render(pipe, fine, seed=seed, **render_kwargs), render(pipe, coco, seed=seed, **render_kwargs),
               render(pipe, fine, seed=seed, image=truth, **render_kwargs)]
    scale, size = 2, truth.shape[1] * 2
    text_h, width = 46, 4 * size + 5 * 4
    canvas = Image.new("RGB", (width, n * (size + text_h) + 16), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), "ground truth | fine caption | COCO caption | img2img 0.8", fill=(0, 0, 0))
    for r in range(n):
        y = 16 + r * (size + text_h)
        for c, column in enumerate(columns):
            tile = Image.fromarray(column[r]).resize((size, size), Image.NEAREST)
            canvas.paste(tile, (4 + c * (size + 4), y))
        words, lines, line = fine[r].split(), [], ""
        for w in words:
            if len(line) + len(w) + 1 > 84:
                lines.append(line)
                line = w
            else:
                line = f"{line} {w}".strip()
        lines.append(line)
        draw.text((4, y + size + 1), "\n".join(lines[:2] + [f"COCO: {coco[r]}"][: 3 - min(len(lines), 2)]),
                  fill=(0, 0, 0))
    save_png_atomic(canvas, path)
    return path

