"""Model names: ``simnsd/<component>`` is a folder of the shipped SimNSD world, anything else a Hub id or a path.

Every loader in the package resolves names here, so the shipped world and a real model (``gpt2``,
``CompVis/stable-diffusion-v1-4``) or a local folder take the same code path. The world's location is computed
from this file's place in the package; nothing of :mod:`fgb2i_hf.simnsd` is imported.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def loading_config_field(field: str, name_or_path):
    """Name the config field whose model id or path could not be loaded.

    The Hub's and the file system's errors (an unknown id, offline without a cached copy, a missing folder) say
    neither which setting gave the name nor, often, the name itself; the error is re-raised, same class, with both.
    """
    try:
        yield
    except OSError as e:
        message = (f"{field}={name_or_path!r}: cannot load it ({type(e).__name__}: {str(e).strip().splitlines()[0]}); "
                   "check the id or path, or download it first (offline, HF_HUB_OFFLINE=1 allows cached models only)")
        try:
            error = type(e)(message)
        except Exception:
            error = OSError(message)
        raise error from e
