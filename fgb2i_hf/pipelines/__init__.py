"""Text-bridged reconstruction (FgB2I stage 3) as diffusers pipelines.

* ``FgB2IPipeline`` — the base class; ``FgB2IPipeline.from_pretrained(path)`` returns the saved subclass.
* ``FgB2ILDMPipeline`` — Takagi & Nishimoto's LDM (Stable Diffusion v1.x img2img) base.
* ``FgB2IVersatileDiffusionPipeline`` — Versatile Diffusion dual-guided, with the Brain-Diffuser and
  MindEye bases; ``MindEyeInputs`` holds MindEye's CLIP-image embeddings and blurry images by nsd_id.
"""

from .pipeline_fgb2i import (
    FUSION_MODES,
    FgB2IPipeline,
    FgB2IPipelineOutput,
    classifier_free_guidance,
    composed_guidance,
    fuse_embeddings,
    prepare_betas,
)
from .loading import TINY_RANDOM, build_pipeline, load_backbone
from .mindeye_inputs import MindEyeInputs
from .pipeline_fgb2i_ldm import FgB2ILDMPipeline
from .pipeline_fgb2i_versatile_diffusion import BASES, FgB2IVersatileDiffusionPipeline, patch_dual_attention

__all__ = [
    "BASES",
    "FgB2IVersatileDiffusionPipeline",
    "MindEyeInputs",
    "TINY_RANDOM",
    "build_pipeline",
    "load_backbone",
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
