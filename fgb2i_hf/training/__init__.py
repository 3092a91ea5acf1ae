"""Stage-1 (cross-entropy) training of BrainPrefixGPT2 with transformers' ``Trainer`` (docs/training.md).

:class:`BrainCaptionTrainer` (caption metrics at every evaluation) and :class:`CaptionEpochCallback` (the caption a
row trains on follows the epoch). The run around them — data, checks, model, final evaluation, the Hub — is
``fgb2i_hf.drivers.ce.run_ce``, which ``recipes/train_ce.py`` calls.
"""

from ..core.checkpoints import CheckpointError
from ..core.deprecation import moved_names
from .ce import BrainCaptionTrainer, CaptionEpochCallback

__all__ = ["BrainCaptionTrainer", "CaptionEpochCallback", "CheckpointError"]

_MOVED_TO_DRIVERS = ("CONFIG_NAME", "FINAL_DIR", "SCRATCH", "CEScriptArguments", "build_model_and_tokenizer",
                     "final_evaluation", "load_ce_data", "prepare_ce_data", "run_ce",
                     "voxel_counts_of")

__getattr__ = moved_names(__name__, "fgb2i_hf.drivers.ce", _MOVED_TO_DRIVERS)
