"""Pluggable rewards for REINFORCE co-training, in trl's convention ``reward(completions, **columns)``."""

from .clip_rewards import CLIPImageImageReward, CLIPTextImageReward, text_embeddings
from .object_accuracy import object_accuracy
from .registry import (RewardError, RewardResources, available_rewards, call_reward, get_reward, register_reward,
                       reward_name, reward_needs)
from .render_surrogate import (FidelityWindow, SurrogateFitConfig, check_surrogate_clip, check_surrogate_renderer,
                               clip_identity, fit_render_surrogate, load_render_surrogate, spearman,
                               surrogate_renderer)
from .rendering import (RENDERER_PRESETS, RenderCache, RendererSettings, TextToImageRenderer, renderer_settings,
                        weights_sha256)

__all__ = [
    "CLIPImageImageReward",
    "CLIPTextImageReward",
    "FidelityWindow",
    "RENDERER_PRESETS",
    "RenderCache",
    "RendererSettings",
    "RewardError",
    "RewardResources",
    "SurrogateFitConfig",
    "TextToImageRenderer",
    "available_rewards",
    "call_reward",
    "check_surrogate_clip",
    "check_surrogate_renderer",
    "clip_identity",
    "fit_render_surrogate",
    "get_reward",
    "load_render_surrogate",
    "object_accuracy",
    "register_reward",
    "renderer_settings",
    "reward_name",
    "reward_needs",
    "spearman",
    "surrogate_renderer",
    "text_embeddings",
]
