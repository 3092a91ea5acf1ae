"""The two diffusion backbones of the published bases: Stable Diffusion v1.x and Versatile Diffusion."""

from __future__ import annotations

from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from ...tiny import tiny_sd_components, tiny_vd_components
from .spec import Backbone


def _sd_classes() -> dict:
    # imported here: diffusers is a heavy import, needed only on this path
    from diffusers import AutoencoderKL, UNet2DConditionModel

    return {"vae": AutoencoderKL, "text_encoder": CLIPTextModel, "tokenizer": CLIPTokenizer,
            "unet": UNet2DConditionModel}


def _vd_classes() -> dict:
    # imported here: diffusers is a heavy import, needed only on this path
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import UNetFlatConditionModel

    return {"tokenizer": CLIPTokenizer, "text_encoder": CLIPTextModelWithProjection,
            "image_encoder": CLIPVisionModelWithProjection, "image_feature_extractor": CLIPImageProcessor,
            "image_unet": UNet2DConditionModel, "text_unet": UNetFlatConditionModel, "vae": AutoencoderKL}


def _tiny_sd(seed: int) -> dict:
    return tiny_sd_components(seed=seed)


def _tiny_vd(seed: int) -> dict:
    return tiny_vd_components(seed=seed)


STABLE_DIFFUSION = Backbone(name="sd", pipeline="FgB2ILDMPipeline", default_model="CompVis/stable-diffusion-v1-4",
                            component_classes=_sd_classes, tiny_components=_tiny_sd)
VERSATILE_DIFFUSION = Backbone(name="vd", pipeline="FgB2IVersatileDiffusionPipeline",
                               default_model="shi-labs/versatile-diffusion", component_classes=_vd_classes,
                               tiny_components=_tiny_vd)
