"""The Brain-Diffuser base: Ozcelik & VanRullen (2023), "Natural scene reconstruction from fMRI signals using
generative latent diffusion" (ozcelikfu/brain-diffuser).

Ridge regressions predict, from repetition-averaged betas, Versatile Diffusion's CLIP-text embedding (77 x 768, the
mean over the COCO captions; alpha 1e5), CLIP-vision embedding (257 x 768; alpha 6e4) and the VDVAE latents of
the first 31 layers (91,168 values; alpha 5e4), rescaled over the split to the training targets' statistics. The
predicted latents decode through VDVAE (Child 2021; the rest of the hierarchy sampled at temperature 1) into a
64 px low-level image, resized to 512; Versatile Diffusion's dual-guided UNet then runs img2img from it: strength 0.75, text weight of the dual attention 0.4, 50 DDIM steps, guidance 7.5; the
unconditional contexts are the empty prompt's and a grey image's embeddings
(``scripts/versatilediffusion_reconstruct_images.py``). FgB2I averages the decoded caption's CLIP-text embedding
into the text context: ``w * text + (1 - w) * ridge text``.
"""

import os

from ...decoders.targets import BrainDiffuserTargetExtractor
from ...decoders.vdvae_targets import BRAIN_DIFFUSER_VDVAE_ALPHA, VDVAETargetExtractor
from ...models.vdvae import VDVAEModel
from ...tiny import tiny_brain_diffuser_extractor, tiny_vdvae, tiny_vdvae_extractor
from .backbones import VERSATILE_DIFFUSION
from .spec import BaseSpec, ComponentSpec, TargetSource, TargetSpec, register_base

def load_vdvae(name_or_path: str) -> VDVAEModel:
    """A ``VDVAEModel`` folder, or a saved target extractor holding one (``<folder>/vdvae``)."""
    subfolder = "vdvae" if os.path.isdir(os.path.join(name_or_path, "vdvae")) else None
    return VDVAEModel.from_pretrained(name_or_path, subfolder=subfolder).eval()


BRAIN_DIFFUSER = register_base(BaseSpec(
    name="brain_diffuser",
    label="Brain-Diffuser",
    reference="Ozcelik & VanRullen, Scientific Reports 2023; ozcelikfu/brain-diffuser",
    backbone=VERSATILE_DIFFUSION,
    scheduler="ddim",
    targets=(TargetSpec("clip_text", component="clip_text_decoder", argument="base_text_embeds", alphas=(1e5,)),
             TargetSpec("clip_vision", component="clip_vision_decoder", argument="base_vision_embeds",
                        alphas=(6e4,)),
             TargetSpec("vdvae", component="vdvae_decoder", argument="low_level_latents",
                        alphas=(BRAIN_DIFFUSER_VDVAE_ALPHA,), source="vdvae")),
    target_sources={
        "backbone": TargetSource(load=BrainDiffuserTargetExtractor.from_pretrained, tiny=tiny_brain_diffuser_extractor,
                                 config_fields=("image_size",)),
        # the released ImageNet-64 VDVAE, converted: python -m fgb2i_hf.models.vdvae.convert_vdvae (docs/vdvae.md)
        "vdvae": TargetSource(load=VDVAETargetExtractor.from_pretrained, tiny=tiny_vdvae_extractor),
    },
    components={"vdvae": ComponentSpec(load=load_vdvae, tiny=tiny_vdvae, source="vdvae")},
    average_train=True,  # vdvae_regression.py / cliptext_regression.py fit on nsd_train_fmriavg_*
    rescale_predictions=True,
    pipeline_settings={"strength": 0.75, "num_inference_steps": 50, "guidance_scale": 7.5, "text_mix": 0.4,
                       "uncond": "encoded", "init_normalization": "vae", "normalize_vision_embeds": False,
                       "base_text": "decoder"},
))
