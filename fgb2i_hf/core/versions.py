"""The versions recorded beside every artifact (checkpoints, decoders, tables), for reproducibility."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

RECORDED = ("torch", "transformers", "diffusers", "accelerate", "datasets", "trl", "peft", "open_clip_torch",
            "himalaya", "numpy")
# Distribution name -> module name, where they differ.
MODULES = {"open_clip_torch": "open_clip"}


def versions() -> dict[str, str]:
    """``{package: version}`` of fgb2i_hf, the main libraries that are installed, and Python."""
    from .._version import __version__

    out = {"fgb2i_hf": __version__}
    for name in RECORDED:
        version = _version(name)
        if version is not None:
            out[name] = version
    out["python"] = platform.python_version()
    return out


def _version(name: str) -> str | None:
    # An imported module's own ``__version__`` first: torch's carries the build's local tag (``2.14.1+cu130``),
    # which its distribution metadata lacks. Nothing is imported here for it.
    module = sys.modules.get(MODULES.get(name, name))
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return str(version)
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
