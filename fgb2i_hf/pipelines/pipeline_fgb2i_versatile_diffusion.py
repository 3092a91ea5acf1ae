"""FgB2IVersatileDiffusionPipeline: FgB2I on the Versatile Diffusion bases, Brain-Diffuser and MindEye.

Versatile Diffusion's dual-guided UNet runs two cross-attention streams in every attention block, one on a
text context (77 CLIP-text tokens) and one on an image context (257 CLIP-vision tokens), and mixes their
outputs: ``out = m * text_stream + (1 - m) * image_stream`` (diffusers' ``DualTransformer2DModel``,
``mix_ratio`` = m, the text weight). This pipeline reuses diffusers' deprecated
``VersatileDiffusionDualGuidedPipeline`` (it subclasses it: the dual-attention conversion and the
text encoding are diffusers' own) and replaces the call.

The base (``base=`` at construction; its settings are the registered spec's ``pipeline_settings``, saved in
``model_index.json``) decides the call's defaults and how the text bridge fuses, through
:class:`VersatileDiffusionSettings`: a base with its own text stream (``text_mix`` set, e.g. Brain-Diffuser's 0.4)
averages the decoded caption's embedding into its ridge text context, ``w * text + (1 - w) * base``; a base with
none (``text_mix=None``, MindEye) takes the caption's embedding as the text context and ``w`` as the dual attention's
text weight, so the paper's weighted average happens where text and image conditioning meet. See
``fgb2i_hf/pipelines/bases/brain_diffuser.py`` and ``mindeye.py`` for the published settings.

In ``fusion="guidance"`` the base and text conditions are separate UNet branches composed in guidance
(see ``pipeline_fgb2i``); for MindEye the text branch uses m = 1 (text alone).

diffusers 0.42 bug worked around here: its UNet blocks pass ``encoder_attention_mask`` to every attention
module, which ``DualTransformer2DModel.forward`` does not accept, so the stock dual-guided pipeline fails
with a TypeError. ``patch_dual_attention`` adds a forward pre-hook that drops the (always ``None``) mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.models import DualTransformer2DModel
from diffusers.pipelines.deprecated.versatile_diffusion import VersatileDiffusionDualGuidedPipeline
from diffusers.utils.torch_utils import randn_tensor

from ..clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, images_to_tensor
from .bases import get_base
from .mindeye_inputs import MindEyeInputs
from .pipeline_fgb2i import (
    FgB2IPipeline,
    FgB2IPipelineOutput,
    classifier_free_guidance,
    composed_guidance,
    fuse_embeddings,
    prepare_betas,
    repeat_rows,
)

VD_VISION_TOKENS = 257  # CLIP ViT-L/14 at 224 px: 16 x 16 patches + the class token


@dataclass(frozen=True)
class VersatileDiffusionSettings:
    """How a base runs on Versatile Diffusion (the call's defaults and the fusion rule)."""

    strength: float
    num_inference_steps: int
    guidance_scale: float
    text_mix: float | None  # the dual attention's text weight; None: the base has no text stream, w is the weight
    uncond: str  # "encoded": empty prompt + grey image through the encoders; "zeros"
    init_normalization: str  # "vae": [0, 1] -> [-1, 1]; "clip": CLIP mean/std (MindEye's code)
    normalize_vision_embeds: bool  # divide each embedding by its first token's norm (MindEye)
    base_text: str  # "decoder": the base's text context is clip_text_decoder's prediction; "none": zeros

    def __post_init__(self):
        if self.uncond not in ("encoded", "zeros"):
            raise ValueError(f"settings.uncond must be 'encoded' or 'zeros', got {self.uncond!r}")
        if self.init_normalization not in ("vae", "clip"):
            raise ValueError(f"settings.init_normalization must be 'vae' or 'clip', got {self.init_normalization!r}")
        if self.base_text not in ("decoder", "none"):
            raise ValueError(f"settings.base_text must be 'decoder' or 'none', got {self.base_text!r}")
        if (self.base_text == "none") != (self.text_mix is None):
            raise ValueError("a base without a text context (base_text='none') takes w as its text weight "
                             "(text_mix=None), and one with a text context needs a text_mix")


def derived_generators(generator, salt: int):
    """Fresh generator(s) seeded from each given one's initial seed and ``salt``: a stage that draws from these
    leaves the given generators' streams untouched (None stays None)."""
    if generator is None:
        return None

    def derived(g):
        return torch.Generator(device=g.device).manual_seed((g.initial_seed() * 1_000_003 + salt) % (2**63))

    return [derived(g) for g in generator] if isinstance(generator, list) else derived(generator)


LOW_LEVEL_SALT = 7_919  # the generators of the low-level stage (VDVAE samples, MindEye's prior)


def candidate_generators(generator, k: int):
    """The generator(s) of best-of-N candidate ``k``: candidate 0 uses the given ones (so ``best_of_n=1`` is the
    plain call), the others generators derived from them and ``k``."""
    if k == 0:
        return generator
    return derived_generators(generator, k) if generator is not None else torch.Generator().manual_seed(k)


def _drop_encoder_attention_mask(module, args, kwargs):
    mask = kwargs.pop("encoder_attention_mask", None)
    if mask is not None:
        raise ValueError("DualTransformer2DModel does not support an encoder attention mask")
    return args, kwargs


def patch_dual_attention(unet) -> int:
    """Make a dual-attention UNet callable in diffusers 0.42 (see the module docstring); returns the count."""
    patched = 0
    for module in unet.modules():
        if isinstance(module, DualTransformer2DModel) and not getattr(module, "_fgb2i_mask_hook", False):
            module.register_forward_pre_hook(_drop_encoder_attention_mask, with_kwargs=True)
            module._fgb2i_mask_hook = True
            patched += 1
    return patched


class FgB2IVersatileDiffusionPipeline(FgB2IPipeline, VersatileDiffusionDualGuidedPipeline):
    """Brain-Diffuser or MindEye (``base=``) on Versatile Diffusion, with the FgB2I text bridge.

    Components: Versatile Diffusion's ``tokenizer``, ``text_encoder`` (CLIPTextModelWithProjection),
    ``image_unet``, ``vae``, ``scheduler``, and optionally ``image_encoder`` + ``image_feature_extractor``
    (only for Brain-Diffuser's grey-image unconditional context) and ``text_unet`` (only to build the dual
    attention from a universal VD checkpoint, e.g. ``shi-labs/versatile-diffusion``; drop it afterwards with
    ``remove_unused_weights()``); ``brain_model`` + ``caption_tokenizer`` for captions; for Brain-Diffuser,
    ``clip_text_decoder`` (betas -> 77 x 768) and ``clip_vision_decoder`` (betas -> 257 x 768) RidgeDecoders, and
    its low-level stage: ``vdvae_decoder`` (a RidgeDecoder, betas -> the first k VDVAE latent layers, flattened)
    with ``vdvae`` (a ``VDVAEModel`` that decodes them into the init image); for MindEye, ``mindeye_model`` (a
    ``MindEyeModel``: its prior gives the CLIP-image context, its low-level head the blurry init image).

    Every input a base computes from betas can also be passed in instead (``base_*_embeds``, ``image``,
    ``low_level_latents``, ``mindeye_inputs``), e.g. from a user's own run of the original code.
    """

    model_cpu_offload_seq = "brain_model->mindeye_model->vdvae->text_encoder->image_encoder->image_unet->vae"
    _optional_components = ["image_feature_extractor", "image_encoder", "text_unet", "brain_model",
                            "caption_tokenizer", "clip_text_decoder", "clip_vision_decoder", "vdvae_decoder", "vdvae",
                            "mindeye_model"]

    def __init__(
        self,
        tokenizer,
        text_encoder,
        image_unet,
        vae,
        scheduler,
        image_feature_extractor=None,
        image_encoder=None,
        text_unet=None,
        brain_model=None,
        caption_tokenizer=None,
        clip_text_decoder=None,
        clip_vision_decoder=None,
        vdvae_decoder=None,
        vdvae=None,
        mindeye_model=None,
        base: str = "brain_diffuser",
        settings: dict | None = None,
    ):
        # Not super().__init__(): the next class in the MRO is VersatileDiffusionDualGuidedPipeline, whose
        # __init__ registers a fixed set of modules; ours registers its own.
        DiffusionPipeline.__init__(self)
        if settings is None:
            settings = dict(get_base(base).pipeline_settings)
        self._settings = VersatileDiffusionSettings(**settings)
        self.register_modules(tokenizer=tokenizer, image_feature_extractor=image_feature_extractor,
                              text_encoder=text_encoder, image_encoder=image_encoder, image_unet=image_unet,
                              text_unet=text_unet, vae=vae, scheduler=scheduler, brain_model=brain_model,
                              caption_tokenizer=caption_tokenizer, clip_text_decoder=clip_text_decoder,
                              clip_vision_decoder=clip_vision_decoder, vdvae_decoder=vdvae_decoder, vdvae=vdvae,
                              mindeye_model=mindeye_model)
        self.register_to_config(base=base, settings=dict(settings))
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        if not getattr(self.image_unet.config, "dual_cross_attention", False):
            if self.text_unet is None:
                raise ValueError("image_unet has no dual attention (a universal VD checkpoint): pass `text_unet` "
                                 "so its text transformers can be merged in")
            self._convert_to_dual_attention()
        patch_dual_attention(self.image_unet)

    @property
    def base(self) -> VersatileDiffusionSettings:
        """The settings of this pipeline's base (``self.config.base``)."""
        return self._settings

    @property
    def context_dim(self) -> int:
        return self.image_unet.config.cross_attention_dim

    @property
    def text_tokens(self) -> int:
        return self.text_encoder.config.max_position_embeddings

    @property
    def vision_tokens(self) -> int | None:
        """Tokens of the CLIP-vision context: patches + class token of the image encoder (257 for VD), or
        ``None`` without an image encoder (then the embeddings passed in decide)."""
        if self.image_encoder is None:
            return None
        config = self.image_encoder.config
        return (config.image_size // config.patch_size) ** 2 + 1

    def set_dual_attention(self, text_weight: float, text_tokens: int, vision_tokens: int) -> None:
        """Mix the dual attention streams: ``out = text_weight * text + (1 - text_weight) * image``.

        Diffusers' ``set_transformer_params`` does the same with the image context fixed at 257 tokens; this
        takes the token counts from the contexts, so smaller CLIP vision towers work too.
        """
        for module in self.image_unet.modules():
            if isinstance(module, DualTransformer2DModel):
                module.mix_ratio = text_weight
                module.condition_lengths = [text_tokens, vision_tokens]
                module.transformer_index_for_condition = [1, 0]  # text context -> text stream, image -> image

    # -- encoders (VD's normalised CLIP embeddings) ---------------------------------------------------------
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """VD's CLIP-text context (N, 77, D): projected tokens over the pooled embedding's norm (diffusers' VD)."""
        return self._encode_text_prompt(list(texts), self._execution_device, 1, False)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """VD's CLIP-vision context (N, 257, D) of float images (N, 3, H, W) in [0, 1].

        Post-LN tokens through the visual projection, divided by the class token's norm (VD's definition);
        pixels are not rescaled by 1/255 since they are in [0, 1] already.
        """
        if self.image_encoder is None or self.image_feature_extractor is None:
            raise ValueError("this pipeline has no `image_encoder`/`image_feature_extractor` to encode images with")
        pixels = self.image_feature_extractor(images=list(images), do_rescale=False, return_tensors="pt").pixel_values
        hidden = self.image_encoder(pixels.to(self._execution_device, self.image_encoder.dtype)).last_hidden_state
        embeds = self.image_encoder.visual_projection(self.image_encoder.vision_model.post_layernorm(hidden))
        return embeds / embeds[:, :1].norm(dim=-1, keepdim=True)

    def unconditional_contexts(self, batch_size: int, dtype, vision_tokens: int | None = None):
        """The (text, image) contexts of the unconditional branch, as the base defines them."""
        device = self._execution_device
        if self.base.uncond == "zeros":
            vision_tokens = vision_tokens or self.vision_tokens or VD_VISION_TOKENS
            return (torch.zeros(batch_size, self.text_tokens, self.context_dim, device=device, dtype=dtype),
                    torch.zeros(batch_size, vision_tokens, self.context_dim, device=device, dtype=dtype))
        text = self.encode_text([""]).to(dtype)
        grey = torch.full((1, 3, 224, 224), 0.5)
        image = self.encode_images(grey).to(dtype)
        return text.expand(batch_size, -1, -1), image.expand(batch_size, -1, -1)

    def preprocess_init_images(self, image, height: int, width: int) -> torch.Tensor:
        """Low-level images -> (N, 3, height, width), normalised as the base feeds them to the VAE."""
        images = images_to_tensor(image)
        if images.min() < 0 or images.max() > 1:
            raise ValueError(f"init images must be in [0, 1] (float) or uint8, got [{images.min():.3g}, "
                             f"{images.max():.3g}]")
        if tuple(images.shape[-2:]) != (height, width):
            images = F.interpolate(images, size=(height, width), mode="bicubic", antialias=True,
                                   align_corners=False).clamp(0, 1)
        if self.base.init_normalization == "clip":
            mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
            return (images - mean) / std
        return images * 2.0 - 1.0

    # -- the dual-attention UNet --------------------------------------------------------------------------
    def predict_branches(self, latents: torch.Tensor, t, branches: list[tuple[torch.Tensor, float]]):
        """Noise predictions of each (context (N, 77 + 257, D), text weight) branch, one UNet call per weight."""
        eps = [None] * len(branches)
        vision_tokens = branches[0][0].shape[1] - self.text_tokens
        for mix in dict.fromkeys(m for _, m in branches):
            index = [i for i, (_, m) in enumerate(branches) if m == mix]
            self.set_dual_attention(mix, self.text_tokens, vision_tokens)
            contexts = torch.cat([branches[i][0] for i in index])
            model_input = torch.cat([latents] * len(index)) if len(index) > 1 else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            out = self.image_unet(model_input, t, encoder_hidden_states=contexts, return_dict=False)[0]
            for i, e in zip(index, out.chunk(len(index))):
                eps[i] = e
        return eps

    # -- the bases' own models --------------------------------------------------------------------------------
    @staticmethod
    def row_generators(generator, batch_size: int, per_row: int):
        """One generator per row of betas (the first of its images' generators), or the single one given."""
        if isinstance(generator, list):
            return [generator[i * per_row] for i in range(batch_size)]
        return generator

    def vdvae_images(self, betas, subject, low_level_latents, generator) -> torch.Tensor:
        """Brain-Diffuser's low-level stage: flattened VDVAE latents of the first k layers (given, or predicted by
        ``vdvae_decoder``) decoded by ``vdvae``, the rest of the hierarchy sampled -> (B, 3, s, s) in [0, 1]."""
        if self.vdvae is None:
            raise ValueError("`low_level_latents` need the pipeline's `vdvae` to decode them")
        if low_level_latents is None:
            low_level_latents = self.predict_with(self.vdvae_decoder, "vdvae_decoder", self._need(betas), subject,
                                                  None, self.vdvae.device, self.vdvae.dtype)
        latents = torch.as_tensor(low_level_latents).to(self.vdvae.device, self.vdvae.dtype)
        return self.vdvae.decode(latents, generator=generator).float()

    def mindeye_inputs_from_betas(self, betas, subject, generator, vision_tokens: int | None):
        """MindEye's prior samples (B, T, D) and blurry images (B, 3, H, W) in [0, 1] (or None), one row at a time
        when ``generator`` is a list, so each row's samples do not depend on the batch it came in."""
        model = self.mindeye_model
        betas = self._need(betas).to(model.device)
        rows = range(betas.shape[0])
        subjects = [subject] * betas.shape[0] if isinstance(subject, str) else list(subject)
        if isinstance(generator, list):
            embeds = torch.cat([model.generate_embeddings(betas[i : i + 1], subjects[i], generator=generator[i])
                                for i in rows])
        else:
            embeds = model.generate_embeddings(betas, subject, generator=generator)
        if vision_tokens is not None and embeds.shape[1] != vision_tokens:
            raise ValueError(f"mindeye_model predicts {embeds.shape[1]} CLIP-image tokens; this backbone's image "
                             f"context has {vision_tokens}: the model was trained for another CLIP")
        blurry = None
        if model.config.low_level:
            blurry = model.decode_blurry(model.blurry_latents(betas, subject), self.vae)
        return embeds, blurry

    def choose_best(self, candidates: list, predicted: torch.Tensor, num_images_per_prompt: int):
        """MindEye's best-of-N: per image, the candidate whose CLIP-image embedding is closest (cosine) to the
        predicted one. ``candidates``: N tensors (B * n, 3, H, W) in [0, 1]; returns (B * n, 3, H, W)."""
        from ..models.mindeye.retrieval import best_of_n

        stacked = torch.stack(candidates, dim=1)  # (B * n, N, 3, H, W)
        embeds = torch.stack([self.encode_images(c) for c in candidates], dim=1)  # (B * n, N, T, D)
        target = repeat_rows(predicted, num_images_per_prompt).to(embeds.device, embeds.dtype)
        if embeds.shape[2:] != target.shape[1:]:
            raise ValueError(f"best_of_n compares the candidates' CLIP-image tokens {tuple(embeds.shape[2:])} with the "
                             f"predicted ones {tuple(target.shape[1:])}: they must match")
        index = best_of_n(embeds, target).to(stacked.device)
        return stacked[torch.arange(stacked.shape[0], device=stacked.device), index]

    # -- the call ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        betas=None,
        subject: str | list[str] | None = None,
        *,
        base_betas=None,
        w: float = 0.5,
        fusion: str = "average",
        captions: list[str] | None = None,
        image=None,
        low_level_latents: torch.Tensor | None = None,
        base_text_embeds: torch.Tensor | None = None,
        base_vision_embeds: torch.Tensor | None = None,
        nsd_ids=None,
        mindeye_inputs: MindEyeInputs | None = None,
        negative_text_embeds: torch.Tensor | None = None,
        negative_vision_embeds: torch.Tensor | None = None,
        strength: float | None = None,
        text_mix: float | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        eta: float = 0.0,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        best_of_n: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        caption_generation_kwargs: dict | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Reconstruct images from betas on the pipeline's base (``self.config.base``).

        Args:
            betas, subject: as in ``FgB2ILDMPipeline``; needed for captions (w > 0) and the base's models.
            base_betas: the same rows normalised as the base's own models (ridge decoders, MindEye) were fit, when
                that differs from the brain model's (e.g. Brain-Diffuser's decoders on repetition-averaged rows);
                default ``betas``.
            w, fusion, captions: the text bridge (see ``pipeline_fgb2i``).
            image: the low-level reconstructions to start from (B images: PIL, uint8 (B, H, W, 3) or float
                (B, 3, H, W) in [0, 1]); ``None``: the base's own low-level stage (Brain-Diffuser's VDVAE from
                ``vdvae_decoder``/``low_level_latents`` + ``vdvae``, MindEye's blurry image from ``mindeye_model``)
                when the pipeline has it, else generate from noise (strength is then unused).
            low_level_latents: Brain-Diffuser: (B, D_k) flattened VDVAE latents instead of ``vdvae_decoder``'s
                (e.g. predictions rescaled over a whole split).
            base_text_embeds: Brain-Diffuser's CLIP-text (B, 77, D), instead of ``clip_text_decoder``.
            base_vision_embeds: CLIP-vision (B, 257, D): Brain-Diffuser's instead of ``clip_vision_decoder``,
                MindEye's prior output.
            nsd_ids, mindeye_inputs: MindEye: look up ``base_vision_embeds`` and ``image`` by NSD id.
            negative_text_embeds, negative_vision_embeds: (L, D) or (1, L, D) to override the base's
                unconditional contexts.
            strength, text_mix, guidance_scale, num_inference_steps: default to the base's published values;
                ``text_mix`` is fixed to ``w`` for MindEye.
            height, width: output size (default: the UNet's sample size x the VAE factor, 512 for VD).
            best_of_n: MindEye's best-of-N (its paper: 16): sample N candidates per image and keep the one whose
                CLIP-image embedding (the pipeline's image encoder) is closest to the predicted one; 1 = off.
            num_images_per_prompt, generator, eta, caption_generation_kwargs, output_type, return_dict: as in
                ``FgB2ILDMPipeline``.
        """
        base = self.base
        # 1. check inputs, fill in the base's defaults
        self.check_fusion(w, fusion)
        strength = base.strength if strength is None else strength
        guidance_scale = base.guidance_scale if guidance_scale is None else guidance_scale
        num_inference_steps = base.num_inference_steps if num_inference_steps is None else num_inference_steps
        self.check_counts(num_inference_steps, num_images_per_prompt)
        if isinstance(best_of_n, bool) or not isinstance(best_of_n, int) or best_of_n < 1:
            raise ValueError(f"`best_of_n` must be a positive int (1 = off), got {best_of_n!r}")
        if base.text_mix is None and text_mix is not None:
            raise ValueError(f"the {self.config.base} base has no text stream of its own: its text weight is `w`")
        base_mix = base.text_mix if text_mix is None else text_mix
        height = height or self.image_unet.config.sample_size * self.vae_scale_factor
        width = width or self.image_unet.config.sample_size * self.vae_scale_factor
        device, dtype = self._execution_device, self.image_unet.dtype
        if betas is not None:
            betas, subject = prepare_betas(betas, subject)
        base_betas = betas if base_betas is None else self.check_base_betas(base_betas, betas, subject)
        if mindeye_inputs is not None:
            if nsd_ids is None:
                raise ValueError("`mindeye_inputs` needs `nsd_ids` (one per row) to look the inputs up")
            looked_up_embeds, looked_up_images = mindeye_inputs.get(nsd_ids)
            base_vision_embeds = looked_up_embeds if base_vision_embeds is None else base_vision_embeds
            image = looked_up_images if image is None else image
        batch_size = self._batch_size(betas, base_vision_embeds, base_text_embeds)
        self.check_generator(generator, batch_size * num_images_per_prompt)
        do_cfg = guidance_scale > 1.0
        text_shape = (self.text_tokens, self.context_dim)
        # the image encoder's token count binds only where the base runs it (its grey-image unconditional context);
        # otherwise the given embeddings set the length
        vision_tokens = self.vision_tokens if base.uncond == "encoded" else None

        # 2. the base's own models from betas: MindEye's prior and low-level head, Brain-Diffuser's VDVAE stage,
        # on generators of their own, so the diffusion's noise is the same whether the stage runs here or its
        # outputs are passed in
        row_generators = derived_generators(self.row_generators(generator, batch_size, num_images_per_prompt),
                                            LOW_LEVEL_SALT)
        if base_vision_embeds is None and self.mindeye_model is not None:
            base_vision_embeds, blurry = self.mindeye_inputs_from_betas(base_betas, subject, row_generators,
                                                                        vision_tokens or self.vision_tokens)
            image = blurry if image is None else image
        if image is None and (low_level_latents is not None or self.vdvae_decoder is not None):
            image = self.vdvae_images(base_betas, subject, low_level_latents, row_generators)
        init_images_out = images_to_tensor(image) if image is not None else None
        if vision_tokens is None and base_vision_embeds is not None:
            vision_tokens = torch.as_tensor(base_vision_embeds).shape[-2]
        vision_shape = (vision_tokens or VD_VISION_TOKENS, self.context_dim)

        # 3. the base method's conditioning
        if base_vision_embeds is None:
            if self.clip_vision_decoder is None:
                raise ValueError(f"the {self.config.base} base needs its CLIP-image embeddings: pass "
                                 "`base_vision_embeds` (or `mindeye_inputs` with `nsd_ids`), or give the pipeline a "
                                 "`clip_vision_decoder`")
            base_vision_embeds = self.predict_with(self.clip_vision_decoder, "clip_vision_decoder", self._need(base_betas),
                                                   subject, vision_shape, device, dtype)
        vision = self.check_embeds("base_vision_embeds", base_vision_embeds, batch_size, vision_shape, device, dtype)
        if base.normalize_vision_embeds:
            vision = vision / (vision[:, :1].norm(dim=-1, keepdim=True) + 1e-6)
        if base.base_text == "decoder":
            if base_text_embeds is None:
                base_text_embeds = self.predict_with(self.clip_text_decoder, "clip_text_decoder", self._need(base_betas),
                                                     subject, text_shape, device, dtype)
            base_text = self.check_embeds("base_text_embeds", base_text_embeds, batch_size, text_shape, device,
                                          dtype)
            base_embeds = base_text
        else:
            if base_text_embeds is not None:
                raise ValueError(f"the {self.config.base} base has no text embedding of its own; `base_text_embeds` "
                                 "is for bases with a text context")
            base_text = torch.zeros(batch_size, *text_shape, device=device, dtype=dtype)
            base_embeds = vision

        # 4. the text bridge (skipped entirely at w = 0)
        text_embeds = None
        if captions is not None:
            captions = self.check_captions(captions, batch_size)
        if w > 0:
            if captions is None:
                captions = self.decode_captions(self._need(betas), subject, caption_generation_kwargs)
            text_embeds = self.encode_text(captions).to(dtype)

        # 5. the UNet branches as (dual context, text weight)
        def dual(text_context, image_context):
            return repeat_rows(torch.cat([text_context, image_context], dim=1), num_images_per_prompt)

        fused, used_mix = None, None
        if w == 0:
            used_mix = base_mix if base_mix is not None else 0.0
            fused = torch.cat([base_text, vision], dim=1)
            conds = [(dual(base_text, vision), used_mix)]
        elif fusion == "average":
            if base.text_mix is not None:  # the base has a text stream: average into it (the paper)
                text_context, used_mix = fuse_embeddings(text_embeds, base_text, w), base_mix
            else:
                text_context, used_mix = text_embeds, float(w)
            fused = torch.cat([text_context, vision], dim=1)
            conds = [(dual(text_context, vision), used_mix)]
        else:  # guidance: MindEye's text branch is text alone (m = 1)
            conds = [(dual(base_text, vision), base_mix if base_mix is not None else 0.0),
                     (dual(text_embeds, vision), base_mix if base_mix is not None else 1.0)]
        branches = conds
        if do_cfg:  # the unconditional branch runs through the same mixture as the (first) condition
            uncond_text, uncond_vision = self.unconditional_contexts(batch_size, dtype, vision_shape[0])
            if negative_text_embeds is not None:
                uncond_text = self.check_embeds("negative_text_embeds", negative_text_embeds, 1, text_shape, device,
                                                dtype).expand(batch_size, -1, -1)
            if negative_vision_embeds is not None:
                uncond_vision = self.check_embeds("negative_vision_embeds", negative_vision_embeds, 1, vision_shape,
                                                  device, dtype).expand(batch_size, -1, -1)
            branches = [(dual(uncond_text, uncond_vision), conds[0][1])] + conds
        n_conds = len(branches) - int(do_cfg)

        # 6-8. start latents, denoise, decode; best-of-N repeats them with other noise and keeps the closest
        def sample(generator, output_type):
            total = batch_size * num_images_per_prompt
            if image is not None:
                init_images = self.preprocess_init_images(image, height, width)
                if init_images.shape[0] != batch_size:
                    raise ValueError(f"got {init_images.shape[0]} init images for a batch of {batch_size}")
                timesteps = self.img2img_timesteps(num_inference_steps, strength, device)
                init_latents = self.encode_init_images(repeat_rows(init_images, num_images_per_prompt), generator,
                                                       dtype)
                latents = self.noised_latents(init_latents, timesteps[:1], generator)
            else:
                self.scheduler.set_timesteps(num_inference_steps, device=device)
                timesteps = self.scheduler.timesteps
                shape = (total, self.image_unet.config.in_channels, height // self.vae_scale_factor,
                         width // self.vae_scale_factor)
                latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
                latents = latents * self.scheduler.init_noise_sigma

            def predict_noise(latents, t):
                eps = self.predict_branches(latents, t, branches)
                eps_uncond = eps[0] if do_cfg else None
                if n_conds == 1:
                    return classifier_free_guidance(eps_uncond, eps[-1], guidance_scale) if do_cfg else eps[-1]
                return composed_guidance(eps_uncond, eps[-2], eps[-1], guidance_scale, w)

            latents = self.denoise(latents, timesteps, predict_noise, self.step_kwargs(generator, eta))
            return self.decode_latents_to_images(latents, output_type)

        if best_of_n == 1:
            images = sample(generator, output_type)
        else:
            candidates = [sample(candidate_generators(generator, k), "pt") for k in range(best_of_n)]
            images = self.choose_best(candidates, vision, num_images_per_prompt)
            if output_type != "pt":
                images = self.image_processor.postprocess(images * 2.0 - 1.0, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, captions
        return FgB2IPipelineOutput(images=images, captions=captions, base_embeds=base_embeds, text_embeds=text_embeds,
                                   fused_embeds=fused, w=float(w), fusion=fusion, text_mix=used_mix,
                                   init_images=init_images_out)

    @staticmethod
    def _batch_size(betas, *embeds) -> int:
        if betas is not None:
            return betas.shape[0]
        for e in embeds:
            if e is not None:
                return torch.as_tensor(e).shape[0] if torch.as_tensor(e).ndim == 3 else 1
        raise ValueError("pass `betas` (with `subject`), or the base's embeddings (`base_vision_embeds`, "
                         "`mindeye_inputs` with `nsd_ids`, `base_text_embeds`)")

    @staticmethod
    def _need(betas):
        if betas is None:
            raise ValueError("`betas` are needed here (ridge predictions or caption decoding); pass them with "
                             "`subject`, or pass the features and `captions` directly")
        return betas
