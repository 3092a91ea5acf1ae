"""The MindEye base: Scotti et al. (NeurIPS 2023), "Reconstructing the Mind's Eye: fMRI-to-Image with Contrastive
Learning and Diffusion Priors" (MedARC-AI/fMRI-reconstruction-NSD).

MindEye's diffusion prior gives 257 x 768 CLIP ViT-L/14 image embeddings (divided by their first token's norm, as
``utils.reconstruction`` does) that condition Versatile Diffusion's image stream alone (text weight 0, text context
zeros); img2img from the blurry low-level reconstruction (normalised with CLIP's mean and std before the VAE, as
MindEye's code does): strength 0.85, 20 UniPC steps, guidance 3.5, zero unconditional contexts
(``Reconstructions.py``). FgB2I: MindEye has no text embedding to average with, so the paper's weighted average is
taken where text and image conditioning meet, in the dual attention: text context = CLIP_text(caption), text
weight = w.

The MindEye model (``fgb2i_hf.models.mindeye``: backbone, diffusion prior, low-level head; trained with
``recipes/train_mindeye.py`` or converted from the released checkpoints) is the pipeline's ``mindeye_model``.
"""

from ...models.mindeye import MindEyeModel
from ...tiny import tiny_mindeye
from .backbones import VERSATILE_DIFFUSION
from .spec import BaseSpec, ComponentSpec, register_base

MINDEYE = register_base(BaseSpec(
    name="mindeye",
    label="MindEye",
    reference="Scotti et al., NeurIPS 2023; MedARC-AI/fMRI-reconstruction-NSD",
    backbone=VERSATILE_DIFFUSION,
    scheduler="unipc",
    targets=(),
    target_sources={},
    average_train=False,  # MindEye trains on one repetition per step and tests on averages
    rescale_predictions=False,
    pipeline_settings={"strength": 0.85, "num_inference_steps": 20, "guidance_scale": 3.5, "text_mix": None,
                       "uncond": "zeros", "init_normalization": "clip", "normalize_vision_embeds": True,
                       "base_text": "none"},
    components={"mindeye_model": ComponentSpec(load=MindEyeModel.from_pretrained, tiny=tiny_mindeye)},
))
