"""Stage 2: REINFORCE co-training with pluggable rewards, on accelerate."""

from .reinforce import BASELINES, EpochShuffleSampler, ReinforceConfig, ReinforceTrainer, advantages, sequence_mask

__all__ = ["BASELINES", "EpochShuffleSampler", "ReinforceConfig", "ReinforceTrainer", "advantages", "sequence_mask"]
