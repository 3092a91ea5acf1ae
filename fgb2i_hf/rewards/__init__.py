"""Pluggable rewards for REINFORCE co-training, in trl's convention ``reward(completions, **columns)``."""

from .clip_rewards import CLIPImageImageReward, CLIPTextImageReward, TextToImageRenderer
from .object_accuracy import object_accuracy
from .registry import (RewardError, RewardResources, available_rewards, call_reward, get_reward, register_reward,
                       reward_name, reward_needs)

__all__ = [
    "CLIPImageImageReward",
    "CLIPTextImageReward",
    "RewardError",
    "RewardResources",
    "TextToImageRenderer",
    "available_rewards",
    "call_reward",
    "get_reward",
    "object_accuracy",
    "register_reward",
    "reward_name",
    "reward_needs",
]
