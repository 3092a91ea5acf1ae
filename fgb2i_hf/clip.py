"""CLIP image and text embeddings for scores and rewards (CLIP-S, the CLIP rewards, the CLIP image metric).

One small wrapper around an ``open_clip`` model so that metrics, rewards and the caption audit embed
text and images the same way:

* real runs: ``CLIPScorer.from_pretrained("ViT-L-14-quickgelu", pretrained="openai")`` — OpenAI CLIP
  ViT-L/14 (QuickGELU, as the OpenAI weights need; see open_clip's model names);
* the shipped SimNSD world: ``CLIPScorer.from_pretrained("simnsd/clip")`` — a folder holding
  ``open_clip_config.json`` and ``open_clip_model.safetensors``;
* tests: ``CLIPScorer.from_config({...})`` — random weights from an open_clip config dict.

Images enter as uint8 arrays (N, H, W, 3), PIL images, or float tensors (N, 3, H, W) in [0, 1]; they are
resized to the model's input size (bicubic, antialiased, no crop: NSD stimuli are square) and
normalised with the model's mean and std. Embeddings come back L2-normalised, float32, on the model's
device.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .core import atomic_write_json, resolve_pretrained, save_safetensors_atomic

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


def images_to_tensor(images) -> torch.Tensor:
    """uint8 (N,H,W,3) array / list of PIL images / float (N,3,H,W) tensor in [0,1] -> float (N,3,H,W) in [0,1]."""
    if isinstance(images, torch.Tensor):
        if images.dtype == torch.uint8:
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"uint8 image tensors must be (N, H, W, 3), got {tuple(images.shape)}")
            return images.permute(0, 3, 1, 2).float() / 255.0
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"float image tensors must be (N, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        return images.float()
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"image arrays must be (N, H, W, 3), got {images.shape}")
        scale = 255.0 if images.dtype == np.uint8 else 1.0
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / scale
    if isinstance(images, (list, tuple)):
        arrays = [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images]
        if len({a.shape for a in arrays}) > 1:
            raise ValueError(f"images in one batch must share a size, got {sorted({a.shape for a in arrays})}")
        return images_to_tensor(np.stack(arrays))
    raise TypeError(f"expected images as a uint8 array, a list of PIL images or a tensor, got {type(images)}")


def openai_clip_tokenizer(model_max_length: int = 77):
    """OpenAI CLIP's BPE tokenizer (49,408 tokens) as a transformers ``CLIPTokenizer``, built offline from the
    vocabulary open_clip ships (hf-gotchas §6): content ids equal ``open_clip.get_tokenizer("ViT-L-14")``'s."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=model_max_length)


class CLIPScorer(nn.Module):
    """An open_clip model with its tokenizer and image normalisation; ``encode_text``/``encode_images``."""

    def __init__(self, model: nn.Module, tokenizer, image_size: int, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
                 name: str | None = None):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.name = name

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict, quick_gelu: bool = True, name: str | None = None) -> "CLIPScorer":
        """Random weights from an open_clip config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``)."""
        from open_clip.model import CLIP
        from open_clip.tokenizer import SimpleTokenizer

        config = dict(config)
        quick_gelu = config.pop("quick_gelu", quick_gelu)
        model = CLIP(**config, quick_gelu=quick_gelu)
        context_length = config.get("text_cfg", {}).get("context_length", 77)
        image_size = config.get("vision_cfg", {}).get("image_size", 224)
        scorer = cls(model, SimpleTokenizer(context_length=context_length), image_size, name=name)
        scorer.config = dict(config, quick_gelu=quick_gelu)
        return scorer

    @classmethod
    def from_pretrained(cls, name_or_path: str = "ViT-L-14-quickgelu", pretrained: str | None = "openai",
                        device: str | torch.device | None = None) -> "CLIPScorer":
        """A folder saved by :meth:`save_pretrained` (or ``simnsd/clip``), else an open_clip model name."""
        path = resolve_pretrained(name_or_path)
        if os.path.isdir(path):
            config_file = os.path.join(path, CONFIG_NAME)
            if not os.path.exists(config_file):
                raise FileNotFoundError(f"{path}: expected {CONFIG_NAME} and {WEIGHTS_NAME} (a CLIPScorer folder)")
            with open(config_file) as f:
                config = json.load(f)
            scorer = cls.from_config(config, name=name_or_path)
            from safetensors.torch import load_file

            scorer.model.load_state_dict(load_file(os.path.join(path, WEIGHTS_NAME)))
        else:
            import open_clip

            model, _, preprocess = open_clip.create_model_and_transforms(path, pretrained=pretrained)
            size = model.visual.image_size
            size = size[0] if isinstance(size, (tuple, list)) else size
            mean = getattr(model.visual, "image_mean", None) or OPENAI_CLIP_MEAN
            std = getattr(model.visual, "image_std", None) or OPENAI_CLIP_STD
            scorer = cls(model, open_clip.get_tokenizer(path), size, mean, std, name=name_or_path)
        return scorer.to(device) if device is not None else scorer

    def save_pretrained(self, path: str) -> None:
        if not hasattr(self, "config"):
            raise ValueError("only a CLIPScorer built from a config dict can be saved as a folder")
        save_safetensors_atomic(self.model.state_dict(), os.path.join(path, WEIGHTS_NAME))
        atomic_write_json(os.path.join(path, CONFIG_NAME), self.config)

    # -- embeddings ---------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.mean.device

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def preprocess(self, images) -> torch.Tensor:
        x = images_to_tensor(images).to(self.device)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True,
                              align_corners=False).clamp(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """(N,) strings -> (N, D) unit vectors."""
        out = [self.model.encode_text(self.tokenize(texts[i : i + batch_size]), normalize=True)
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out).float() if out else torch.zeros(0, self.embed_dim, device=self.device)

    @torch.no_grad()
    def encode_images(self, images, batch_size: int = 64) -> torch.Tensor:
        """(N, H, W, 3) uint8 / PIL list / (N, 3, H, W) float in [0, 1] -> (N, D) unit vectors."""
        x = images_to_tensor(images)
        out = [self.model.encode_image(self.preprocess(x[i : i + batch_size]), normalize=True)
               for i in range(0, len(x), batch_size)]
        return torch.cat(out).float() if out else torch.zeros(0, self.embed_dim, device=self.device)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[-1]) if hasattr(self.model, "text_projection") else -1
