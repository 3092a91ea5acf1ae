"""Model names: ``simnsd/<component>`` is a folder of the shipped SimNSD world, anything else a Hub id or a path.

Every loader in the package resolves names here, so the shipped world and a real model (``gpt2``,
``CompVis/stable-diffusion-v1-4``) or a local folder take the same code path. The world's location is computed
from this file's place in the package; nothing of :mod:`fgb2i_hf.simnsd` is imported.
"""

from __future__ import annotations

import os

WORLD_PREFIX = "simnsd/"
# Random tiny stand-in models built from configs (``fgb2i_hf.tiny``): mechanics only, never results.
TINY_RANDOM = "tiny-random"


def world_dir() -> str:
    """The folder holding the shipped SimNSD world components (``fgb2i_hf/simnsd/world``)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "simnsd", "world")


def resolve_pretrained(name_or_path):
    """Map ``simnsd/<component>[/sub/folder]`` to its packaged folder; return any other name or path unchanged."""
    if not isinstance(name_or_path, str) or not name_or_path.startswith(WORLD_PREFIX):
        return name_or_path
    component = name_or_path[len(WORLD_PREFIX):]
    path = os.path.join(world_dir(), *component.split("/"))
    if not component or not os.path.isdir(path):
        raise FileNotFoundError(
            f"{name_or_path!r}: the SimNSD world has no component {component!r} (looked in {path}). "
            "Shipped components are the folders of fgb2i_hf/simnsd/world/; recipes/train_world.py rebuilds them."
        )
    return path
