"""The SimNSD world: small models trained once on SimNSD and shipped inside the package.

A name ``simnsd/<component>`` (``simnsd/gpt2``, ``simnsd/clip``, ...) resolves to the packaged folder
``fgb2i_hf/world/<component>``, so every loader takes the same code path for the shipped world as for a
real model on the Hub (``gpt2``, ``CompVis/stable-diffusion-v1-4``) or a local folder.
"""

from __future__ import annotations

import contextlib
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
