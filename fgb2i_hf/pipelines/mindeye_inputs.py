"""MindEyeInputs: MindEye's per-image outputs (CLIP-image embeddings, blurry reconstructions) by nsd_id.

The MindEye base does not predict its features inside the pipeline: they come from MindEye's released
models or a user's run (MindEye1's diffusion prior gives 257 x 768 CLIP ViT-L/14 image-token embeddings;
its low-level pipeline gives a blurry 512 px image). This class holds them keyed by NSD id and hands the
pipeline the rows of a batch, with clear errors for ids it does not have and for shapes that do not fit.

Files: ``.safetensors`` with the tensors ``nsd_ids`` (N,) int64, ``clip_image_embeds`` (N, 257, 768) and,
optionally, ``blurry_images`` (N, 3, H, W) float in [0, 1] or (N, H, W, 3) uint8; or a ``.pt`` file with a
dict of the same keys, read with ``torch.load(weights_only=True)`` (no pickled code).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from ..clip import images_to_tensor
from ..core import save_safetensors_atomic

MINDEYE_EMBED_SHAPE = (257, 768)
KEYS = ("nsd_ids", "clip_image_embeds", "blurry_images")


class MindEyeInputs:
    """CLIP-image embeddings (N, 257, D) and optional blurry images (N, 3, H, W) in [0, 1], keyed by nsd_id.

    Args:
        nsd_ids: N distinct 0-based NSD ids.
        clip_image_embeds: (N, tokens, dim) embeddings, as MindEye's prior outputs them (unnormalised: the
            pipeline divides each by its first token's norm, as MindEye's reconstruction does).
        blurry_images: optional (N, 3, H, W) float in [0, 1], (N, H, W, 3) uint8, or a list of N PIL images.
        embed_shape: the (tokens, dim) every embedding must have; (257, 768) for Versatile Diffusion.
        source: where the inputs came from, named in error messages.
    """

    def __init__(self, nsd_ids, clip_image_embeds, blurry_images=None, embed_shape=MINDEYE_EMBED_SHAPE,
                 source: str = "MindEye inputs"):
        self.source = source
        ids = torch.as_tensor(np.asarray(nsd_ids)).long()
        if ids.ndim != 1:
            raise ValueError(f"{source}: `nsd_ids` must be 1-D, got shape {tuple(ids.shape)}")
        if len(set(ids.tolist())) != len(ids):
            raise ValueError(f"{source}: `nsd_ids` holds duplicates; each image needs one row")
        embeds = torch.as_tensor(clip_image_embeds).float()
        if embeds.ndim != 3 or (embed_shape is not None and tuple(embeds.shape[1:]) != tuple(embed_shape)):
            expected = f"(N, {embed_shape[0]}, {embed_shape[1]})" if embed_shape is not None else "(N, tokens, dim)"
            raise ValueError(f"{source}: `clip_image_embeds` must have shape {expected}, got {tuple(embeds.shape)}")
        if embeds.shape[0] != len(ids):
            raise ValueError(f"{source}: {embeds.shape[0]} CLIP-image embeddings for {len(ids)} nsd_ids")
        images = None
        if blurry_images is not None:
            try:
                images = images_to_tensor(blurry_images)
            except (ValueError, TypeError) as error:
                raise ValueError(f"{source}: `blurry_images`: {error}") from None
            if images.shape[0] != len(ids):
                raise ValueError(f"{source}: {images.shape[0]} blurry images for {len(ids)} nsd_ids")
            if images.min() < 0 or images.max() > 1:
                raise ValueError(f"{source}: float `blurry_images` must lie in [0, 1], got "
                                 f"[{images.min():.3g}, {images.max():.3g}]")
        self.nsd_ids = ids
        self.clip_image_embeds = embeds
        self.blurry_images = images
        self._row = {int(i): r for r, i in enumerate(ids.tolist())}

    def __len__(self) -> int:
        return len(self.nsd_ids)

    def __contains__(self, nsd_id) -> bool:
        return int(nsd_id) in self._row

    @property
    def embed_shape(self) -> tuple[int, int]:
        return tuple(self.clip_image_embeds.shape[1:])

    def get(self, nsd_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The embeddings (B, tokens, dim) and blurry images (B, 3, H, W) or None of these ids, in order."""
        ids = [int(i) for i in (nsd_ids.tolist() if hasattr(nsd_ids, "tolist") else nsd_ids)]
        missing = [i for i in ids if i not in self._row]
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise KeyError(f"{self.source} has no entry for nsd_id {shown} ({len(self)} ids held)")
        rows = torch.tensor([self._row[i] for i in ids], dtype=torch.long)
        images = self.blurry_images[rows] if self.blurry_images is not None else None
        return self.clip_image_embeds[rows], images

    # -- files ----------------------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike, embed_shape=MINDEYE_EMBED_SHAPE) -> "MindEyeInputs":
        """Read a ``.safetensors`` file, or a ``.pt``/``.pth`` dict (weights_only), with the keys above."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"MindEye inputs file {path} does not exist")
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            tensors = load_file(path)
        elif path.endswith((".pt", ".pth")):
            tensors = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(tensors, dict):
                raise ValueError(f"{path}: expected a dict with keys {KEYS}, got {type(tensors).__name__}")
        else:
            raise ValueError(f"{path}: MindEye inputs must be a .safetensors or .pt file")
        for key in KEYS[:2]:
            if key not in tensors:
                raise ValueError(f"{path}: missing `{key}` (has {sorted(tensors)}); expected keys {KEYS}")
        return cls(tensors["nsd_ids"], tensors["clip_image_embeds"], tensors.get("blurry_images"),
                   embed_shape=embed_shape, source=path)

    def save(self, path: str | os.PathLike) -> None:
        """Write a ``.safetensors`` file (atomically: a temporary file renamed into place)."""
        tensors = {"nsd_ids": self.nsd_ids, "clip_image_embeds": self.clip_image_embeds}
        if self.blurry_images is not None:
            tensors["blurry_images"] = self.blurry_images
        save_safetensors_atomic(tensors, path)
