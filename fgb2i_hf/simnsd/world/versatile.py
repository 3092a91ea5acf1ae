"""``simnsd/versatile``: a tiny Versatile Diffusion (Xu et al. 2023) dual-guided model, the world's backbone of the
Brain-Diffuser and MindEye bases.

A folder in Versatile Diffusion's diffusers layout (what ``load_backbone(..., "vd")`` reads):

* ``tokenizer`` — the world CLIP tokenizer (``world_clip_tokenizer``: OpenAI CLIP's BPE padded with "!", the
  ``simnsd/clip`` context length, 40 tokens);
* ``text_encoder`` — the ``simnsd/clip`` text tower as ``CLIPTextModelWithProjection`` (``text_encoder.py``);
* ``image_encoder`` / ``image_feature_extractor`` — its ViT as ``CLIPVisionModelWithProjection`` and the
  ``CLIPImageProcessor`` that feeds it (``vision_encoder.py``): 65 tokens (8 x 8 patches + class) of width 64;
* ``vae``, ``scheduler`` — ``simnsd/diffusion``'s (64 px <-> 4 x 16 x 16; DDIM, v-prediction, zero terminal SNR);
* ``image_unet`` — a ``UNet2DConditionModel`` built with ``dual_cross_attention=True``: every attention block is
  diffusers' ``DualTransformer2DModel``, an image stream (``transformers[0]``) cross-attending to the CLIP-vision
  context and a text stream (``transformers[1]``, what VD's ``text_unet`` contributes) cross-attending to the
  CLIP-text context, mixed as ``text_weight * text + (1 - text_weight) * image``. No ``text_unet`` is needed.

The contexts are VD's normalised projected CLIP embeddings, computed by ``FgB2IVersatileDiffusionPipeline``'s own
``encode_text`` / ``encode_images`` (so training sees what the pipeline computes). The UNet is trained as the world's
diffusion UNet (``diffusion.train_denoiser``: v-prediction, EMA) on the train images' latents, each example
conditioned on its image's vision context and one of its captions' text context, with its own text weight drawn
from ``vd_text_weights`` (so both streams and their mixtures are trained), and with probability
``vd_uncond_probability`` on the unconditional contexts for classifier-free guidance: the empty prompt's and a
mid-grey image's (VD's and Brain-Diffuser's), or zeros (MindEye's) for a fraction ``vd_zero_uncond_fraction``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

from ...pipelines import FgB2IVersatileDiffusionPipeline
from .diffusion import background_in_caption, background_of, train_denoiser, two_way_identification, unet_model
from .io import compact_clip_tokenizer
from .text_encoder import convert_open_clip_text_to_hf, world_clip_tokenizer
from .vae import encode_latents
from .vision_encoder import convert_open_clip_vision_to_hf, world_clip_image_processor


@dataclass
class VersatileTrainingConfig:
    """The world Versatile Diffusion UNet's size, training and evaluation."""

    vd_block_out_channels: list[int] = field(default_factory=lambda: [32, 48], metadata={
        "help": "Channels per resolution (16, 8 latent px)."})
    vd_attention_levels: list[int] = field(default_factory=lambda: [1], metadata={
        "help": "Resolution levels (0 = 16 px) with dual cross-attention blocks (the middle block always has one); "
                "level 1 (8 x 8) matches the 8 x 8 patch grid of the vision context."})
    vd_attention_heads: int = field(default=4, metadata={"help": "Attention heads per transformer."})
    vd_layers_per_block: int = field(default=1, metadata={"help": "ResNet blocks per level (down path)."})
    vd_norm_num_groups: int = field(default=8, metadata={"help": "GroupNorm groups."})
    vd_steps: int = field(default=1200, metadata={"help": "Optimiser steps."})
    vd_batch_size: int = field(default=32, metadata={"help": "Latents per step."})
    vd_learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate (cosine decay)."})
    vd_warmup_steps: int = field(default=200, metadata={"help": "Linear warm-up steps."})
    vd_ema_decay: float = field(default=0.999, metadata={"help": "EMA decay of the saved weights."})
    vd_text_weights: list[float] = field(default_factory=lambda: [0.0, 0.4, 1.0], metadata={
        "help": "Text weights of the dual attention, one drawn per example: 0 = image variation (MindEye's base), "
                "0.4 = Brain-Diffuser's mix, 1 = text-to-image."})
    vd_uncond_probability: float = field(default=0.1, metadata={
        "help": "Fraction of examples conditioned on the unconditional contexts (for classifier-free guidance)."})
    vd_zero_uncond_fraction: float = field(default=0.5, metadata={
        "help": "Of those, the fraction with zero contexts (MindEye's unconditional branch); the rest get the empty "
                "prompt's and the grey image's (Versatile Diffusion's and Brain-Diffuser's)."})
    vd_fine_caption_probability: float = field(default=0.5, metadata={
        "help": "Probability of the fine caption's text context rather than a COCO-like caption's."})
    vd_eval_steps: int = field(default=25, metadata={
        "help": "DDIM steps of the image-variation and text-to-image evaluation (img2img uses Brain-Diffuser's 50)."})
    vd_eval_guidance_scale: float = field(default=4.0, metadata={
        "help": "Guidance of the image-variation and text-to-image evaluation (img2img: Brain-Diffuser's 7.5)."})

    def __post_init__(self):
        if not self.vd_text_weights or any(not 0.0 <= w <= 1.0 for w in self.vd_text_weights):
            raise ValueError(f"vd_text_weights must be weights in [0, 1], got {self.vd_text_weights}")
        for name in ("vd_uncond_probability", "vd_zero_uncond_fraction", "vd_fine_caption_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")

    def model(self, sample_size: int, latent_channels: int, cross_attention_dim: int):
        return unet_model(self.vd_block_out_channels, self.vd_attention_levels, self.vd_attention_heads,
                          self.vd_layers_per_block, self.vd_norm_num_groups, sample_size=sample_size,
                          latent_channels=latent_channels, cross_attention_dim=cross_attention_dim,
                          dual_cross_attention=True)


def versatile_encoders(clip_scorer, diffusion_path: str) -> dict:
    """The fixed components of the world VD: ``tokenizer``, ``text_encoder``, ``image_encoder``,
    ``image_feature_extractor`` from a ``CLIPScorer``, ``vae`` and ``scheduler`` from a ``simnsd/diffusion``
    folder."""
    # imported here: diffusers is a heavy import, needed only on this path
    from diffusers import AutoencoderKL, DDIMScheduler

    components = {"tokenizer": world_clip_tokenizer(clip_scorer.model.context_length),
                  "text_encoder": convert_open_clip_text_to_hf(clip_scorer, with_projection=True),
                  "image_encoder": convert_open_clip_vision_to_hf(clip_scorer),
                  "image_feature_extractor": world_clip_image_processor(clip_scorer),
                  "vae": AutoencoderKL.from_pretrained(diffusion_path, subfolder="vae").eval(),
                  "scheduler": DDIMScheduler.from_pretrained(diffusion_path, subfolder="scheduler")}
    for module in components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    return components


def versatile_pipeline(image_unet, base: str = "brain_diffuser", **components):
    """``FgB2IVersatileDiffusionPipeline`` of the world components (its call runs ``base``'s settings)."""
    pipe = FgB2IVersatileDiffusionPipeline(image_unet=image_unet, base=base, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def set_text_weights(unet, text_weights, text_tokens: int, vision_tokens: int) -> None:
    """Per-example text weights of every dual attention block: ``text_weights`` (B,) broadcast over (C, H, W)
    (``DualTransformer2DModel`` multiplies its streams by ``mix_ratio``, which may be a tensor)."""
    # imported here: diffusers is a heavy import, needed only on this path
    from diffusers.models import DualTransformer2DModel

    mix = torch.as_tensor(text_weights, dtype=torch.float32).view(-1, 1, 1, 1)
    for module in unet.modules():
        if isinstance(module, DualTransformer2DModel):
            module.mix_ratio = mix.to(next(module.parameters()).device)
            module.condition_lengths = [text_tokens, vision_tokens]
            module.transformer_index_for_condition = [1, 0]


@torch.no_grad()
def text_contexts(pipe, texts, batch_size: int = 512) -> torch.Tensor:
    """(N, text tokens, D) VD text contexts (``pipe.encode_text``), float32 on the CPU."""
    return torch.cat([pipe.encode_text(list(texts[i: i + batch_size])).float().cpu()
                      for i in range(0, len(texts), batch_size)])


@torch.no_grad()
def vision_contexts(pipe, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """(N, vision tokens, D) VD image contexts (``pipe.encode_images``) of uint8 images (N, H, W, 3)."""
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i: i + batch_size])).permute(0, 3, 1, 2).float() / 255.0
        out.append(pipe.encode_images(x).float().cpu())
    return torch.cat(out)


def caption_rows(split):
    """``(texts, coco_rows, fine_rows)``: every caption of a split, and per image the rows of its COCO-like and of
    its fine captions."""
    texts, coco, fine = [], [], []
    for caps, fines in zip(split.captions, split.fine_captions):
        coco.append(list(range(len(texts), len(texts) + len(caps))))
        texts += list(caps)
        fine.append(list(range(len(texts), len(texts) + len(fines))))
        texts += list(fines)
    return texts, coco, fine


def train_versatile(config: VersatileTrainingConfig, data, clip_scorer, diffusion_path: str, seed: int = 0,
                    device: str = "cpu", progress: bool = True):
    """Train the dual-attention UNet on ``data.train``; returns ``(FgB2IVersatileDiffusionPipeline (Brain-Diffuser
    base) with the EMA UNet, record)``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    components = versatile_encoders(clip_scorer, diffusion_path)
    train = data.train
    mean, std = encode_latents(components["vae"], train.images, device=device)
    dim = components["text_encoder"].config.projection_dim
    unet = config.model(mean.shape[-1], mean.shape[1], dim)
    pipe = versatile_pipeline(unet, **components).to(device)
    texts, coco_rows, fine_rows = caption_rows(train)
    text = text_contexts(pipe, texts)
    vision = vision_contexts(pipe, train.images)
    with torch.no_grad():
        uncond_text, uncond_vision = (c[0].float().cpu() for c in pipe.unconditional_contexts(1, torch.float32))
    text_tokens, vision_tokens = text.shape[1], vision.shape[1]
    encode_seconds = time.time() - start
    weights = np.asarray(config.vd_text_weights, dtype=np.float32)
    unet.train()

    def conditioning(rows):
        chosen = [fine_rows[i][rng.integers(len(fine_rows[i]))]
                  if fine_rows[i] and rng.random() < config.vd_fine_caption_probability
                  else coco_rows[i][rng.integers(len(coco_rows[i]))] for i in rows]
        text_context, vision_context = text[chosen].clone(), vision[rows].clone()
        drop = torch.from_numpy(rng.random(len(rows)) < config.vd_uncond_probability)
        zero = torch.from_numpy(rng.random(len(rows)) < config.vd_zero_uncond_fraction)
        text_context[drop & ~zero], vision_context[drop & ~zero] = uncond_text, uncond_vision
        text_context[drop & zero], vision_context[drop & zero] = 0.0, 0.0
        set_text_weights(unet, weights[rng.integers(len(weights), size=len(rows))], text_tokens, vision_tokens)
        return torch.cat([text_context, vision_context], dim=1)

    ema, loop = train_denoiser(
        unet, pipe.scheduler, mean, std, pipe.vae.config.scaling_factor, conditioning, steps=config.vd_steps,
        batch_size=config.vd_batch_size, learning_rate=config.vd_learning_rate, warmup_steps=config.vd_warmup_steps,
        ema_decay=config.vd_ema_decay, rng=rng, generator=generator, device=device, desc="simnsd/versatile unet",
        progress=progress, start=start)
    pipe = versatile_pipeline(ema.to("cpu"), **{k: v for k, v in pipe.components.items()
                                                if k in components}).to("cpu")
    losses = loop.losses
    record = {"config": asdict(config), "seed": seed, **loop.summary(),
              "context_and_latent_encoding_seconds": round(encode_seconds, 1), "train_pairs": len(texts),
              "unet_parameters": sum(p.numel() for p in ema.parameters()), "text_tokens": text_tokens,
              "vision_tokens": vision_tokens,
              "loss_curve": [round(float(np.mean(losses[i: i + 100])), 4) for i in range(0, len(losses), 100)]}
    return pipe, record


def save_versatile(pipe, folder: str) -> str:
    """Write the world VD in Versatile Diffusion's diffusers layout (``model_index.json`` of diffusers'
    ``VersatileDiffusionDualGuidedPipeline``, no ``text_unet``) into the existing empty ``folder``."""
    # imported here: diffusers is a heavy import, needed only on this path
    from diffusers.pipelines.deprecated.versatile_diffusion import VersatileDiffusionDualGuidedPipeline

    names = ("tokenizer", "image_feature_extractor", "text_encoder", "image_encoder", "image_unet", "vae", "scheduler")
    VersatileDiffusionDualGuidedPipeline(**{n: getattr(pipe, n) for n in names}, text_unet=None).save_pretrained(
        folder)
    compact_clip_tokenizer(os.path.join(folder, "tokenizer"))
    return folder


# --- evaluation ---------------------------------------------------------------------------------------------------

def _uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(images) * 255 + 0.5, 0, 255).astype(np.uint8)


@torch.no_grad()
def generate(pipe, text_context, vision_context, *, text_weight: float | None = None, image=None, seed: int = 0,
             batch_size: int = 25, **call_kwargs) -> np.ndarray:
    """uint8 (N, H, W, 3) from per-row contexts through the pipeline's Brain-Diffuser call (``w = 0``: the contexts
    are the base's), image i from ``torch.Generator().manual_seed(seed)``; ``image``: uint8 init images (img2img)."""
    out = []
    for i in range(0, len(vision_context), batch_size):
        rows = slice(i, i + batch_size)
        n = len(vision_context[rows])
        kwargs = dict(call_kwargs)
        if image is not None:
            kwargs["image"] = torch.from_numpy(np.ascontiguousarray(image[rows])).permute(0, 3, 1, 2).float() / 255
        if text_weight is not None:
            kwargs["text_mix"] = text_weight
        result = pipe(w=0.0, base_text_embeds=text_context[rows], base_vision_embeds=vision_context[rows],
                      generator=[torch.Generator().manual_seed(seed) for _ in range(n)], output_type="np", **kwargs)
        out.append(_uint8(result.images))
    return np.concatenate(out)


@torch.no_grad()
def denoising_loss(pipe, images: np.ndarray, text_context, vision_context, text_weight: float, *, seed: int = 0,
                   timesteps: int = 8, batch_size: int = 50) -> float:
    """Mean v-prediction MSE of the UNet (the training loss) on uint8 ``images`` (N, H, W, 3) conditioned on per-row
    contexts (N, tokens, D) at one ``text_weight``: each image's posterior mean, noised at ``timesteps`` evenly
    spaced timesteps with noise from ``torch.Generator().manual_seed(seed)`` (the same noise for every context, so
    two contexts' losses differ only by the conditioning)."""
    unet, scheduler = pipe.image_unet, pipe.scheduler
    mean, _ = encode_latents(pipe.vae, images)
    z = mean * pipe.vae.config.scaling_factor
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((timesteps, *z.shape), generator=generator)
    steps = torch.linspace(0, scheduler.config.num_train_timesteps - 1, timesteps).round().long()
    alphas = scheduler.alphas_cumprod
    total = 0.0
    for k, t in enumerate(steps):
        a, s = alphas[t].sqrt(), (1 - alphas[t]).sqrt()
        for i in range(0, len(z), batch_size):
            rows = slice(i, i + batch_size)
            n = len(z[rows])
            set_text_weights(unet, [text_weight] * n, text_context.shape[1], vision_context.shape[1])
            noisy, target = a * z[rows] + s * noise[k, rows], a * noise[k, rows] - s * z[rows]
            context = torch.cat([text_context[rows], vision_context[rows]], dim=1)
            pred = unet(noisy, t.repeat(n), context).sample
            total += float(((pred - target) ** 2).mean()) * n
    return total / (timesteps * len(z))


def denoising_losses(pipe, split, n: int = 100, seed: int = 0) -> dict:
    """The loss of :func:`denoising_loss` on the first ``n`` images of a split, each stream with its own context and
    with the next image's (a control), and unconditioned: ``image_stream`` (text weight 0: the image's vision
    context), ``text_stream`` (text weight 1: its fine caption's text context), ``unconditional``."""
    truth = split.images[:n]
    fine = [(f[0] if f else c[0]) for c, f in zip(split.captions[:n], split.fine_captions[:n])]
    vision, text = vision_contexts(pipe, truth), text_contexts(pipe, fine)
    uncond_text, uncond_vision = (c.float().cpu() for c in pipe.unconditional_contexts(len(truth), torch.float32))

    def loss(text_context, vision_context, weight):
        return round(denoising_loss(pipe, truth, text_context, vision_context, weight, seed=seed), 5)

    return {"n": len(truth), "image_stream": loss(uncond_text, vision, 0.0),
            "image_stream_next_image": loss(uncond_text, vision.roll(-1, 0), 0.0),
            "text_stream": loss(text, uncond_vision, 1.0), "text_stream_next_image": loss(text.roll(-1, 0),
                                                                                          uncond_vision, 1.0),
            "unconditional": loss(uncond_text, uncond_vision, 0.0)}


def evaluate_versatile(pipe, split, clip_scorer, n: int = 100, seed: int = 0, num_inference_steps: int = 25,
                       guidance_scale: float = 4.0) -> dict:
    """On the first ``n`` images of a split (CLIP two-way identification against the ground truth, chance 0.5):

    * ``image_variation``: from each image's vision context, text weight 0; its control ``..._next_image``: each
      image drawn from the next image's context and scored against its own ground truth (chance: 0.5);
    * ``text_to_image``: from the fine caption's text context, text weight 1 (also the background's accuracy
      against the caption's);
    * ``img2img``: Brain-Diffuser's call (strength 0.75, text weight 0.4, guidance 7.5, 50 DDIM steps) from the
      true image, with the true vision context and the mean text context of the image's COCO-like captions (what
      Brain-Diffuser's ridge regressions are fitted to): a perfect brain decoder's reconstruction.
    """
    truth = split.images[:n]
    fine = [(f[0] if f else c[0]) for c, f in zip(split.captions[:n], split.fine_captions[:n])]
    vision = vision_contexts(pipe, truth)
    fine_text = text_contexts(pipe, fine)
    coco_text = torch.stack([text_contexts(pipe, caps).mean(0) for caps in split.captions[:n]])
    uncond_text, uncond_vision = pipe.unconditional_contexts(len(truth), torch.float32)
    sampling = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed)
    start = time.time()
    variation = generate(pipe, uncond_text, vision, text_weight=0.0, **sampling)
    seconds_per_image = (time.time() - start) / len(truth)
    shifted = generate(pipe, uncond_text, vision.roll(-1, 0), text_weight=0.0, **sampling)
    text_images = generate(pipe, fine_text, uncond_vision, text_weight=1.0, **sampling)
    img2img = generate(pipe, coco_text, vision, image=truth, seed=seed)  # the base's own settings
    expected = [background_in_caption(c) for c in fine]
    truth_background = [background_of(im) for im in truth]

    def agreement(images, labels):
        return float(np.mean([background_of(im) == b for im, b in zip(images, labels)]))

    return {"n": len(truth), "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
            "seconds_per_image": round(seconds_per_image, 3),
            "image_variation_two_way": two_way_identification(clip_scorer, variation, truth),
            "image_variation_background_agreement": agreement(variation, truth_background),
            "image_variation_next_image_two_way": two_way_identification(clip_scorer, shifted, truth),
            "text_to_image_two_way": two_way_identification(clip_scorer, text_images, truth),
            "text_to_image_background_accuracy": agreement(text_images, expected),
            "img2img_brain_diffuser_two_way": two_way_identification(clip_scorer, img2img, truth),
            "img2img_brain_diffuser_background_agreement": agreement(img2img, truth_background),
            "img2img_settings": {k: getattr(pipe.base, k)
                                 for k in ("strength", "num_inference_steps", "guidance_scale", "text_mix")}}


def sample_grid(pipe, split, path: str, n: int = 8, seed: int = 0, num_inference_steps: int = 25,
                guidance_scale: float = 4.0) -> str:
    """A PNG: per test image, ground truth | image variation (text weight 0) | text-to-image from the fine caption
    (text weight 1) | Brain-Diffuser img2img from the true image and contexts. Returns ``path``."""
    truth = split.images[:n]
    vision = vision_contexts(pipe, truth)
    fine = text_contexts(pipe, [(f[0] if f else c[0]) for c, f in zip(split.captions[:n], split.fine_captions[:n])])
    coco = torch.stack([text_contexts(pipe, caps).mean(0) for caps in split.captions[:n]])
    uncond_text, uncond_vision = pipe.unconditional_contexts(n, torch.float32)
    sampling = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed)
    columns = [truth, generate(pipe, uncond_text, vision, text_weight=0.0, **sampling),
               generate(pipe, fine, uncond_vision, text_weight=1.0, **sampling),
               generate(pipe, coco, vision, image=truth, seed=seed)]
    size = truth.shape[1] * 2
    canvas = Image.new("RGB", (4 * size + 5 * 4, n * (size + 4) + 16), (255, 255, 255))
    ImageDraw.Draw(canvas).text((4, 2), "truth | variation (text 0) | fine caption (text 1) | Brain-Diffuser "
                                "img2img", fill=(0, 0, 0))
    for r in range(n):
        for c, column in enumerate(columns):
            tile = Image.fromarray(column[r]).resize((size, size), Image.NEAREST)
            canvas.paste(tile, (4 + c * (size + 4), 16 + r * (size + 4)))
    canvas.save(path)
    return path
