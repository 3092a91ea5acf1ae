"""The Brain-Diffuser base: Ozcelik & VanRullen (2023), "Natural scene reconstruction from fMRI signals using
generative latent diffusion" (ozcelikfu/brain-diffuser).

Ridge regressions predict, from repetition-averaged betas, Versatile Diffusion's CLIP-text embedding (77 x 768, the
mean over the COCO captions; alpha 1e5) and CLIP-vision embedding (257 x 768; alpha 6e4), rescaled over the split
to the training targets' statistics; Versatile Diffusion's dual-guided UNet then runs img2img from the low-level
(VDVAE) reconstruction: strength 0.75, text weight of the dual attention 0.4, 50 DDIM steps, guidance 7.5; the
unconditional contexts are the empty prompt's and a grey image's embeddings
(``scripts/versatilediffusion_reconstruct_images.py``). FgB2I averages the decoded caption's CLIP-text embedding
into the text context: ``w * text + (1 - w) * ridge text``.
"""

from ...decoders.targets import BrainDiffuserTargetExtractor
from ...tiny import tiny_brain_diffuser_extractor
from .backbones import VERSATILE_DIFFUSION
from .spec import BaseSpec, TargetSource, TargetSpec, register_base

BRAIN_DIFFUSER = register_base(BaseSpec(
    name="brain_diffuser",
    label="Brain-Diffuser",
    reference="Ozcelik & VanRullen, Scientific Reports 2023; ozcelikfu/brain-diffuser",
    backbone=VERSATILE_DIFFUSION,
    scheduler="ddim",
    targets=(TargetSpec("clip_text", component="clip_text_decoder", argument="base_text_embeds", alphas=(1e5,)),
             TargetSpec("clip_vision", component="clip_vision_decoder", argument="base_vision_embeds",
                        alphas=(6e4,))),
    target_sources={"backbone": TargetSource(load=BrainDiffuserTargetExtractor.from_pretrained,
                                             tiny=tiny_brain_diffuser_extractor, config_fields=("image_size",))},
    average_train=True,  # vdvae_regression.py / cliptext_regression.py fit on nsd_train_fmriavg_*
    rescale_predictions=True,
    pipeline_settings={"strength": 0.75, "num_inference_steps": 50, "guidance_scale": 7.5, "text_mix": 0.4,
                       "uncond": "encoded", "init_normalization": "vae", "normalize_vision_embeds": False,
                       "base_text": "decoder"},
))
