"""Tiny random-weight target models (SD VAE + CLIP text; VD CLIP text + vision) for tests and SimNSD smoke runs.

Built from configs, seeded, offline: the CLIP tokenizer is rebuilt from open_clip's bundled BPE (the same
49,408 token ids as OpenAI CLIP; hf-gotchas §6). Targets from random models carry no semantics — they exercise
the mechanics (shapes, batching, caching, fitting) only.
"""

from __future__ import annotations

import gzip

import torch

from .targets import BrainDiffuserTargetExtractor, LDMTargetExtractor

TINY_RANDOM = "tiny-random"


def clip_tokenizer(model_max_length: int = 77):
    """OpenAI CLIP's BPE tokenizer as a transformers ``CLIPTokenizer``, from open_clip's bundled vocabulary."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=model_max_length)


def _text_config(width: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, projection_dim=width)


def tiny_ldm_extractor(model_seed: int = 0, width: int = 32, image_size: int = 32, **kwargs) -> LDMTargetExtractor:
    """SD-shaped components: a VAE with 4 latent channels and one downsampling (z: 4 x s/2 x s/2), and a
    ``width``-wide CLIP text encoder (c: 77 x width)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    with torch.random.fork_rng():
        torch.manual_seed(model_seed)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64),
                            latent_channels=4, layers_per_block=1, sample_size=image_size)
        text_encoder = CLIPTextModel(_text_config(width))
    return LDMTargetExtractor(vae, clip_tokenizer(), text_encoder, image_size=image_size, name_or_path=TINY_RANDOM,
                              **kwargs)


def tiny_brain_diffuser_extractor(model_seed: int = 0, width: int = 32, image_size: int = 32,
                                  **kwargs) -> BrainDiffuserTargetExtractor:
    """VD-shaped components: CLIP text with projection (77 x width) and CLIP vision with projection at
    ``image_size`` px, patch 4 (clip_vision: (image_size/4)^2 + 1 tokens x width)."""
    from transformers import (CLIPImageProcessor, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    with torch.random.fork_rng():
        torch.manual_seed(model_seed)
        text_encoder = CLIPTextModelWithProjection(_text_config(width))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4,
            image_size=image_size, patch_size=4, projection_dim=width))
    processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    return BrainDiffuserTargetExtractor(clip_tokenizer(), text_encoder, processor, image_encoder,
                                        image_size=image_size, name_or_path=TINY_RANDOM, **kwargs)


TINY_EXTRACTORS = {"ldm": tiny_ldm_extractor, "brain_diffuser": tiny_brain_diffuser_extractor}
