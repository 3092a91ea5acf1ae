"""The LDM base: Takagi & Nishimoto (CVPR 2023), "High-resolution image reconstruction with latent diffusion models
from human brain activity" (yu-takagi/StableDiffusionReconstruction).

Ridge regressions predict, from single-trial betas, the SD VAE latent ``z`` of the stimulus (320 px, a posterior
sample; ``codes/utils/img2feat_sd.py``) and the CLIP text conditioning ``c`` of its captions (77 x 768, averaged);
Stable Diffusion v1.4 then runs img2img from ``z`` conditioned on ``c``: strength 0.8, guidance 5.0, 50 DDIM steps
(``codes/diffusion_sd1/diffusion_decoding.py``). FgB2I replaces ``c`` by ``w * CLIP_text(caption) + (1 - w) * c``.
"""

from ...decoders.ridge import TAKAGI_ALPHAS
from ...decoders.targets import LDMTargetExtractor
from ...tiny import tiny_ldm_extractor
from .backbones import STABLE_DIFFUSION
from .spec import BaseSpec, TargetSource, TargetSpec, register_base

LDM = register_base(BaseSpec(
    name="ldm",
    label="LDM",
    reference="Takagi & Nishimoto, CVPR 2023; yu-takagi/StableDiffusionReconstruction",
    backbone=STABLE_DIFFUSION,
    scheduler="ddim",
    targets=(TargetSpec("z", component="z_decoder", argument="base_latents", alphas=TAKAGI_ALPHAS),
             TargetSpec("c", component="c_decoder", argument="base_embeds", alphas=TAKAGI_ALPHAS)),
    target_sources={"backbone": TargetSource(load=LDMTargetExtractor.from_pretrained, tiny=tiny_ldm_extractor,
                                             config_fields=("image_size", "latent_sampling", "seed"))},
    average_train=False,  # Takagi's ridge trains on single trials (ridge.py: *_betas_tr.npy)
    rescale_predictions=False,
    pipeline_settings={"strength": 0.8, "guidance_scale": 5.0, "num_inference_steps": 50},
))
