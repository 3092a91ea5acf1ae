"""Text-bridged reconstruction (FgB2I stage 3) as diffusers pipelines.

* ``FgB2IPipeline`` — the base class; ``FgB2IPipeline.from_pretrained(path)`` returns the saved subclass.
* ``FgB2ILDMPipeline`` — Takagi & Nishimoto's LDM (Stable Diffusion v1.x img2img) base.
* ``FgB2IVersatileDiffusionPipeline`` — Versatile Diffusion dual-guided, with the Brain-Diffuser and
  MindEye bases; ``MindEyeInputs`` holds MindEye's CLIP-image embeddings and blurry images by nsd_id.
* ``bases`` — one spec per base method (``get_base("ldm")``), registered by name; ``build_pipeline(base, ...)``
  assembles a base's pipeline from its spec.
"""

from .pipeline_fgb2i import (
    FUSION_MODES,
    FgB2IPipeline,
    FgB2IPipelineOutput,
    classifier_free_guidance,
    composed_guidance,
    fuse_embeddings,
    pipeline_class,
    prepare_betas,
)
from .bases import BaseSpec, available_bases, get_base, register_base
from .loading import build_pipeline, load_backbone, load_brain_model
from .mindeye_inputs import MindEyeInputs
from .pipeline_fgb2i_ldm import FgB2ILDMPipeline
from .pipeline_fgb2i_versatile_diffusion import (FgB2IVersatileDiffusionPipeline, VersatileDiffusionSettings,
                                                 patch_dual_attention)

__all__ = [
    "BaseSpec",
    "FgB2IVersatileDiffusionPipeline",
    "MindEyeInputs",
    "VersatileDiffusionSettings",
    "available_bases",
    "build_pipeline",
    "get_base",
    "load_backbone",
    "load_brain_model",
    "pipeline_class",
    "register_base",
    "patch_dual_attention",
    "FUSION_MODES",
    "FgB2IPipeline",
    "FgB2IPipelineOutput",
    "FgB2ILDMPipeline",
    "classifier_free_guidance",
    "composed_guidance",
    "fuse_embeddings",
    "prepare_betas",
]
