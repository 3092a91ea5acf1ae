"""Stage-1 (cross-entropy) training of BrainPrefixGPT2 with transformers' ``Trainer`` (docs/training.md).

:class:`BrainCaptionTrainer` (caption metrics at every evaluation) and :class:`CaptionEpochCallback` (the caption a
row trains on follows the epoch). The run around them — data, checks, model, final evaluation, the Hub — is
``fgb2i_hf.drivers.ce.run_ce``, which ``recipes/train_ce.py`` calls.
"""

import importlib
import warnings

from ..core.checkpoints import CheckpointError
from .ce import BrainCaptionTrainer, CaptionEpochCallback

__all__ = ["BrainCaptionTrainer", "CaptionEpochCallback", "CheckpointError"]

_MOVED_TO_DRIVERS = ("CONFIG_NAME", "FINAL_DIR", "SCRATCH", "CEScriptArguments", "build_model_and_tokenizer",
                     "final_evaluation", "load_ce_data", "prepare_ce_data", "run_ce",
                     "voxel_counts_of")


def __getattr__(name):
    # Deprecated aliases (removed in the next release), resolved at attribute access so that this layer keeps no
    # import of the drivers above it.
    if name in _MOVED_TO_DRIVERS:
        warnings.warn(f"fgb2i_hf.training.{name} moved to fgb2i_hf.drivers.ce.{name}; the old name will be removed "
                      "in the next release", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("fgb2i_hf.drivers.ce"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
