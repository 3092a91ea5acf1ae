"""The versions recorded beside every artifact (checkpoints, decoders, tables), for reproducibility."""

from __future__ import annotations

import importlib.metadata
import platform

RECORDED = ("torch", "transformers", "diffusers", "accelerate", "datasets", "trl", "peft", "open_clip_torch",
            "numpy")


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
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
