"""Tiny random models built from configs, for tests, the SimNSD mechanics runs and examples.

Nothing here downloads anything: every model is built from a config with random weights (seeded), and
the CLIP tokenizer is built from the BPE merges that ship with ``open_clip`` (hf-gotchas §6), so it is
token-for-token the OpenAI CLIP tokenizer.

* ``tiny_clip_tokenizer()`` — the real 49,408-token CLIP BPE, 77 tokens.
* ``tiny_sd_components(seed)`` — Stable Diffusion v1-shaped UNet/VAE/CLIP text encoder/DDIM at 32 px.
* ``tiny_vd_components(seed)`` — Versatile Diffusion-shaped image UNet + flat text UNet, VAE, CLIP text and
  vision encoders with projection (257 vision tokens, as VD's ViT-L/14 at 224 px), DDIM at 32 px.
"""

from __future__ import annotations

import functools
import gzip
import os

import torch

TINY_CROSS_ATTENTION_DIM = 32


@functools.lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict, list]:
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab)}, merges


def tiny_clip_tokenizer():
    """The OpenAI CLIP tokenizer (49,408 tokens, 77 positions), built offline from open_clip's BPE."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77)


def _tiny_clip_text_config(dim: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=dim, intermediate_size=2 * dim, num_attention_heads=4, num_hidden_layers=2,
                          vocab_size=49408, max_position_embeddings=77, projection_dim=dim,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=32, sample_size=32)


def tiny_ddim_scheduler():
    """DDIM with SD v1's training schedule (scaled-linear betas 0.00085..0.012, steps_offset 1)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def _tiny_unet_kwargs(dim: int) -> dict:
    return dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
                cross_attention_dim=dim, attention_head_dim=8, norm_num_groups=32)


def tiny_sd_components(seed: int = 0, dim: int = TINY_CROSS_ATTENTION_DIM) -> dict:
    """``vae, text_encoder, tokenizer, unet, scheduler`` of a random SD v1-shaped model (32 px images, 16x16
    latents, CLIP text width ``dim``), for ``StableDiffusion*Pipeline`` or ``FgB2ILDMPipeline``."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **_tiny_unet_kwargs(dim))
    vae = _tiny_vae()
    text_encoder = CLIPTextModel(_tiny_clip_text_config(dim))
    return dict(vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tiny_clip_tokenizer(), unet=unet.eval(),
                scheduler=tiny_ddim_scheduler())


def tiny_vd_components(seed: int = 0, dim: int = TINY_CROSS_ATTENTION_DIM, vision_patch_size: int = 2) -> dict:
    """The components of a random Versatile Diffusion-shaped model (``VersatileDiffusionDualGuidedPipeline``
    or ``FgB2IVersatileDiffusionPipeline``): ``tokenizer, image_feature_extractor, text_encoder,
    image_encoder, image_unet, text_unet, vae, scheduler``. The CLIP vision tower sees 32 px images in
    2 px patches, so it returns 257 tokens like VD's ViT-L/14 at 224 px (``vision_patch_size=4``: 65 tokens);
    text contexts have 77 tokens."""
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import UNetFlatConditionModel
    from transformers import (CLIPImageProcessor, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    torch.manual_seed(seed)
    image_unet = UNet2DConditionModel(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **_tiny_unet_kwargs(dim))
    text_unet = UNetFlatConditionModel(down_block_types=("CrossAttnDownBlockFlat", "DownBlockFlat"),
                                       up_block_types=("UpBlockFlat", "CrossAttnUpBlockFlat"),
                                       mid_block_type="UNetMidBlockFlatCrossAttn", **_tiny_unet_kwargs(dim))
    vae = _tiny_vae()
    text_encoder = CLIPTextModelWithProjection(_tiny_clip_text_config(dim))
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=dim, intermediate_size=2 * dim, num_attention_heads=4, num_hidden_layers=2, image_size=32,
        patch_size=vision_patch_size, projection_dim=dim))
    feature_extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return dict(tokenizer=tiny_clip_tokenizer(), image_feature_extractor=feature_extractor,
                text_encoder=text_encoder.eval(), image_encoder=image_encoder.eval(), image_unet=image_unet.eval(),
                text_unet=text_unet.eval(), vae=vae.eval(), scheduler=tiny_ddim_scheduler())


# An open_clip config small enough for CPU tests (as the metrics tests use): 32 px images, 16-d embeddings.
TINY_CLIP_CONFIG = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


def tiny_clip_scorer():
    """A random tiny ``CLIPScorer`` (``fgb2i_hf.clip``), e.g. for the CLIP column with random feature models."""
    from .clip import CLIPScorer

    return CLIPScorer.from_config(TINY_CLIP_CONFIG)
