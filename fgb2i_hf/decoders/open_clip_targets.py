"""``clip_vision`` targets (image tokens as Versatile Diffusion reads them) from an open_clip ViT, e.g. ``simnsd/clip``.

Versatile Diffusion's image conditioning is, per token, ``visual_projection(post_layernorm(last_hidden_state))``
divided by token 0's norm (``BrainDiffuserTargetExtractor.clip_vision``). For an open_clip ``VisionTransformer``
the same quantity is ``ln_post(transformer(tokens)) @ proj`` over all tokens (class token first), which this
extractor computes; it lets MindEye train on the SimNSD world's CLIP until a Versatile-Diffusion-layout world model
exists. Images are resized to the model's input size with ``CLIPScorer.preprocess`` (bicubic, antialiased).
"""

from __future__ import annotations

import numpy as np
import torch

from ..clip import CLIPScorer
from .targets import TargetExtractor

OPEN_CLIP_CONFIG = "open_clip_config.json"


class OpenCLIPImageTokenExtractor(TargetExtractor):
    """``clip_vision``: (N, 1 + patches, embed_dim) normalised image tokens of an open_clip ViT image tower."""

    base = "open_clip_tokens"
    image_targets = ("clip_vision",)
    components = ("clip",)

    def __init__(self, clip, *, device=None, dtype: torch.dtype = torch.float32, name_or_path: str | None = None):
        self.clip = clip
        visual = clip.model.visual
        for name in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj"):
            if getattr(visual, name, None) is None:
                raise ValueError(f"{name_or_path or 'the CLIP'}: image tower has no {name!r}; a ViT open_clip model "
                                 "(VisionTransformer with a projection) is needed for image tokens")
        super().__init__(device, dtype, name_or_path)

    @classmethod
    def from_pretrained(cls, name_or_path: str, pretrained: str | None = None, **kwargs):
        return cls(CLIPScorer.from_pretrained(name_or_path, pretrained=pretrained), name_or_path=name_or_path,
                   **kwargs)

    def encode_images(self, name, images: np.ndarray, keys):
        visual = self.clip.model.visual
        x = self.clip.preprocess(images).to(self.device, self.dtype)
        x = visual.conv1(x).flatten(2).transpose(1, 2)  # (B, patches, width)
        cls_token = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls_token, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.transformer(visual.ln_pre(x))
        embeds = visual.ln_post(x) @ visual.proj
        return embeds / embeds[:, :1].norm(dim=-1, keepdim=True)


__all__ = ["OPEN_CLIP_CONFIG", "OpenCLIPImageTokenExtractor"]
