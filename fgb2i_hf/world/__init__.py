"""The SimNSD world: small models trained once on SimNSD and shipped inside the package.

A name ``simnsd/<component>`` (``simnsd/gpt2``, ``simnsd/clip``, ...) resolves to the packaged folder
``fgb2i_hf/world/<component>``, so every loader takes the same code path for the shipped world as for a
real model on the Hub (``gpt2``, ``CompVis/stable-diffusion-v1-4``) or a local folder.
"""

from __future__ import annotations

import os
from importlib import resources

WORLD_PREFIX = "simnsd/"


def world_dir() -> str:
    return str(resources.files("fgb2i_hf.world"))


def resolve_pretrained(name_or_path: str) -> str:
    """Map ``simnsd/<component>`` to its packaged folder; return any other name or path unchanged."""
    if not isinstance(name_or_path, str) or not name_or_path.startswith(WORLD_PREFIX):
        return name_or_path
    component = name_or_path[len(WORLD_PREFIX) :]
    path = os.path.join(world_dir(), component)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{name_or_path!r}: the SimNSD world has no component {component!r} (looked in {path}). "
            "Shipped components are the folders of fgb2i_hf/world/; recipes/train_world.py rebuilds them."
        )
    return path
