"""Pluggable rewards for REINFORCE co-training, in trl's convention ``reward(completions, **columns)``."""

from .clip_rewards import CLIPImageImageReward, CLIPTextImageReward, TextToImageRenderer
from .object_accuracy import object_accuracy
from .registry import RewardError, available_rewards, call_reward, get_reward, register_reward, reward_name

__all__ = [
    "CLIPImageImageReward",
    "CLIPTextImageReward",
    "RewardError",
    "TextToImageRenderer",
    "available_rewards",
    "call_reward",
    "get_reward",
    "object_accuracy",
    "register_reward",
    "reward_name",
]
