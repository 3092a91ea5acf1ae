"""Stage-1 (cross-entropy) training of BrainPrefixGPT2 with transformers' ``Trainer`` (docs/training.md).

``recipes/train_ce.py`` parses :class:`CEScriptArguments` and ``TrainingArguments`` and calls :func:`run_ce`.
"""

from ..checkpoints import CheckpointError
from .arguments import SCRATCH, CEScriptArguments
from .build import build_model_and_tokenizer, first_rows_per_subject, load_ce_data, prepare_ce_data, voxel_counts_of
from .ce import CONFIG_NAME, FINAL_DIR, BrainCaptionTrainer, CaptionEpochCallback, final_evaluation, run_ce

__all__ = ["CONFIG_NAME", "FINAL_DIR", "SCRATCH", "BrainCaptionTrainer", "CEScriptArguments", "CaptionEpochCallback",
           "CheckpointError", "build_model_and_tokenizer", "final_evaluation", "first_rows_per_subject", "load_ce_data",
           "prepare_ce_data", "run_ce", "voxel_counts_of"]
