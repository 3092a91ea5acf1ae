"""fgb2i_hf: fine-grained brain-to-image reconstruction (FgB2I, arXiv 2505.22150) on the Hugging Face stack."""

__version__ = "0.1.0"

import importlib

_SUBMODULES = ("captions", "data", "decoders", "metrics", "pipelines", "rewards", "rl", "world")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fgb2i_hf' has no attribute {name!r}")
