"""FgB2ILDMPipeline: FgB2I on the LDM base of Takagi & Nishimoto (CVPR 2023).

The base method (yu-takagi/StableDiffusionReconstruction, ``diffusion_decoding.py``): ridge regressions
predict, from the betas, the VAE latent ``z`` of the stimulus and the CLIP text conditioning ``c`` of its
captions; Stable Diffusion v1.x then runs img2img from ``z`` conditioned on ``c`` (strength 0.8,
guidance 5.0, 50 DDIM steps, the unconditional embedding is that of the empty prompt).

FgB2I replaces ``c`` by ``w * CLIP_text(decoded caption) + (1 - w) * c`` (``fusion="average"``), or
composes the two conditions in guidance (``fusion="guidance"``); see ``pipeline_fgb2i``.

``z`` is a scaled SD latent (``vae.config.scaling_factor * E(x)``), the target ``recipes/fit_decoders.py``
fits. By default it is the img2img start latent as it is (output size = z's size x 8). With ``height``/
``width`` different from that, the pipeline does what Takagi's code does with its 4 x 40 x 40 latents of
320 px images: decode z, resize the image (bicubic) to height x width, and encode it again (a posterior
sample drawn with ``generator``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPTextModel, CLIPTokenizer

from .pipeline_fgb2i import (
    FgB2IPipeline,
    FgB2IPipelineOutput,
    classifier_free_guidance,
    composed_guidance,
    fuse_embeddings,
    prepare_betas,
    repeat_rows,
)


class FgB2ILDMPipeline(FgB2IPipeline):
    """Takagi & Nishimoto's LDM reconstruction with the FgB2I text bridge.

    Components: ``vae``, ``text_encoder`` (``CLIPTextModel``), ``tokenizer``, ``unet``, ``scheduler`` (Stable
    Diffusion v1.x, e.g. ``CompVis/stable-diffusion-v1-4`` with a DDIM scheduler); ``brain_model``
    (BrainPrefixGPT2) and ``caption_tokenizer`` (GPT-2) for the captions; ``z_decoder`` and ``c_decoder``
    (RidgeDecoder: betas -> z (4, h, w) and betas -> c (77, D)). All four FgB2I components are optional:
    without them pass ``captions=``, ``base_latents=``, ``base_embeds=`` to the call.
    """

    model_cpu_offload_seq = "brain_model->text_encoder->unet->vae"
    _optional_components = ["brain_model", "caption_tokenizer", "z_decoder", "c_decoder"]
    # Takagi & Nishimoto's img2img settings (diffusion_decoding.py); a base's ``settings`` may override them
    default_settings = {"strength": 0.8, "guidance_scale": 5.0, "num_inference_steps": 50}

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        brain_model=None,
        caption_tokenizer=None,
        z_decoder=None,
        c_decoder=None,
        base: str = "ldm",
        settings: dict | None = None,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler, brain_model=brain_model, caption_tokenizer=caption_tokenizer,
                              z_decoder=z_decoder, c_decoder=c_decoder)
        unknown = sorted(set(settings or {}) - set(self.default_settings))
        if unknown:
            raise ValueError(f"settings {unknown} are not settings of {type(self).__name__} "
                             f"(it has {sorted(self.default_settings)})")
        self.register_to_config(base=base, settings=dict(settings or {}))
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @property
    def text_embedding_shape(self) -> tuple[int, int]:
        return (self.tokenizer.model_max_length, self.text_encoder.config.hidden_size)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """SD v1 text conditioning: the CLIP text encoder's last hidden state over 77 padded tokens (N, 77, D)."""
        ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self._execution_device))[0]

    def resize_latents(self, latents: torch.Tensor, size: tuple[int, int], generator) -> torch.Tensor:
        """Takagi's round trip: decode, resize the image (bicubic, in [0, 1]), encode again (posterior sample)."""
        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        images = (images / 2 + 0.5).clamp(0, 1)
        images = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        return self.encode_init_images(images * 2.0 - 1.0, generator, latents.dtype)

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
        base_latents: torch.Tensor | None = None,
        base_embeds: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        strength: float | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        eta: float = 0.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        caption_generation_kwargs: dict | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Reconstruct images from betas.

        Args:
            betas: (B, V) betas of one subject, or B rows of several subjects (see ``prepare_betas``).
            subject: the subject name, or one per row.
            base_betas: the same rows normalised as the ridge decoders were fit, when that differs from the brain
                model's (default ``betas``).
            w: fusion weight: 0 = Takagi & Nishimoto exactly, 1 = the decoded caption's embedding alone.
            fusion: ``"average"`` (paper) or ``"guidance"`` (compose in classifier-free guidance).
            captions: B captions to use instead of decoding them from the betas.
            base_latents: (B, 4, h, w) scaled latents z, instead of ``z_decoder.predict(betas)``.
            base_embeds: (B, 77, D) text conditioning c, instead of ``c_decoder.predict(betas)``.
            height, width: output size; when it differs from z's, z goes through Takagi's VAE round trip.
            strength, guidance_scale, num_inference_steps, eta: img2img settings (default: the base's settings,
                else Takagi's 0.8, 5.0, 50; eta 0).
            num_images_per_prompt: samples per row of betas.
            generator: a ``torch.Generator`` or one per image (B * num_images_per_prompt).
            caption_generation_kwargs: passed to ``brain_model.generate_captions`` (e.g. ``num_beams``).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.

        Returns:
            ``FgB2IPipelineOutput`` (or ``(images, captions)`` with ``return_dict=False``).
        """
        # 1. check inputs
        self.check_fusion(w, fusion)
        strength = self.setting("strength", strength)
        guidance_scale = self.setting("guidance_scale", guidance_scale)
        num_inference_steps = self.setting("num_inference_steps", num_inference_steps)
        self.check_counts(num_inference_steps, num_images_per_prompt)
        device, dtype = self._execution_device, self.unet.dtype
        if betas is not None:
            betas, subject = prepare_betas(betas, subject)
        elif base_latents is None or base_embeds is None or (w > 0 and captions is None):
            raise ValueError("pass `betas` (with `subject`), or all of `base_latents`, `base_embeds` and, for "
                             "w > 0, `captions`")
        base_betas = betas if base_betas is None else self.check_base_betas(base_betas, betas, subject)
        batch_size = betas.shape[0] if betas is not None else torch.as_tensor(base_latents).shape[0]
        self.check_generator(generator, batch_size * num_images_per_prompt)
        do_cfg = guidance_scale > 1.0

        # 2. the base method's conditioning: z and c
        if base_latents is None:
            base_latents = self.predict_with(self.z_decoder, "z_decoder", base_betas, subject, None, device, dtype)
        base_latents = torch.as_tensor(base_latents).to(device=device, dtype=dtype)
        if (base_latents.ndim != 4 or base_latents.shape[0] != batch_size
                or base_latents.shape[1] != self.unet.config.in_channels):
            raise ValueError(f"z must be ({batch_size}, {self.unet.config.in_channels}, h, w) scaled VAE latents, "
                             f"got {tuple(base_latents.shape)}")
        if base_embeds is None:
            base_embeds = self.predict_with(self.c_decoder, "c_decoder", base_betas, subject,
                                            self.text_embedding_shape, device, dtype)
        base_embeds = self.check_embeds("base_embeds", base_embeds, batch_size, self.text_embedding_shape,
                                        device, dtype)

        # 3. the text bridge (skipped entirely at w = 0, so the base run is untouched)
        text_embeds = None
        if captions is not None:
            captions = self.check_captions(captions, batch_size)
        if w > 0:
            if captions is None:
                captions = self.decode_captions(betas, subject, caption_generation_kwargs)
            text_embeds = self.encode_text(captions).to(dtype)

        # 4. the UNet branches: [uncond,] cond  (average)  or  [uncond,] base, text  (guidance)
        uncond = self.encode_text([""] * batch_size).to(dtype) if do_cfg else None
        fused = None
        if w == 0:
            conds = [base_embeds]
            fused = base_embeds
        elif fusion == "average":
            fused = fuse_embeddings(text_embeds, base_embeds, w)
            conds = [fused]
        else:
            conds = [base_embeds, text_embeds]
        branches = ([uncond] if do_cfg else []) + conds
        contexts = torch.cat([repeat_rows(b, num_images_per_prompt) for b in branches])

        # 5. start latents: z (at the output size) noised to the first kept timestep
        timesteps = self.img2img_timesteps(num_inference_steps, strength, device)
        init_latents = repeat_rows(base_latents, num_images_per_prompt)
        z_size = (base_latents.shape[2] * self.vae_scale_factor, base_latents.shape[3] * self.vae_scale_factor)
        size = (height or z_size[0], width or z_size[1])
        if size != z_size:
            init_latents = self.resize_latents(init_latents, size, generator)
        latents = self.noised_latents(init_latents, timesteps[:1], generator)

        # 6. denoise
        def predict_noise(latents, t):
            k = len(branches)
            model_input = torch.cat([latents] * k) if k > 1 else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            eps = self.unet(model_input, t, encoder_hidden_states=contexts, return_dict=False)[0].chunk(k)
            if len(conds) == 1:
                return classifier_free_guidance(eps[0], eps[1], guidance_scale) if do_cfg else eps[0]
            eps_uncond = eps[0] if do_cfg else None
            return composed_guidance(eps_uncond, eps[-2], eps[-1], guidance_scale, w)

        latents = self.denoise(latents, timesteps, predict_noise, self.step_kwargs(generator, eta))

        # 7. decode
        images = self.decode_latents_to_images(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, captions
        return FgB2IPipelineOutput(images=images, captions=captions, base_embeds=base_embeds,
                                   text_embeds=text_embeds, fused_embeds=fused, w=float(w), fusion=fusion)
