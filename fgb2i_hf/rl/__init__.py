"""Stage 2: REINFORCE co-training with pluggable rewards, on accelerate."""

from ..core.checkpoints import CheckpointError
from .reinforce import BASELINES, EpochShuffleSampler, ReinforceConfig, ReinforceTrainer, advantages, sequence_mask

__all__ = ["BASELINES", "CheckpointError", "EpochShuffleSampler", "ReinforceConfig", "ReinforceTrainer", "advantages",
           "sequence_mask"]
