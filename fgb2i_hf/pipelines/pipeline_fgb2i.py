"""FgB2IPipeline: the base class of the text-bridged reconstruction pipelines (FgB2I stage 3).

Every FgB2I pipeline does the same four things before it diffuses:

1. decode a fine-grained caption from the betas with ``BrainPrefixGPT2.generate_captions`` (or take
   ``captions=`` from the caller);
2. embed the caption with the backbone's own CLIP text encoder, into the space of the base method's
   semantic conditioning;
3. compute the base method's conditioning from the betas (ridge decoders) or take it from the caller;
4. fuse the two, in one of two modes:

   * ``fusion="average"`` (the paper): ``fused = w * text + (1 - w) * base`` and the base method then runs
     unchanged with ``fused`` in place of its own conditioning;
   * ``fusion="guidance"`` (ours; the paper's open question 2): both conditions enter classifier-free
     guidance, ``eps = eps_u + s * [(1 - w) * (eps_base - eps_u) + w * (eps_text - eps_u)]``, one UNet
     branch each, so the two are composed in noise space instead of being averaged in embedding space.

``w = 0`` is the base method itself: neither the captioner nor the text encoder runs and the random
stream is exactly the base method's, so the images are bit-identical to the base run at the same seed.
``w = 1`` is text alone.

``FgB2IPipeline.from_pretrained(path)`` returns the subclass recorded in ``model_index.json``
(``_class_name``): diffusers 0.42 resolves only its own pipeline classes, so the base class reads the
index, imports the ``fgb2i_hf`` modules its components live in (never any other module) and dispatches.
"""

from __future__ import annotations

import importlib
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..core import as_betas, resolve_pretrained

FUSION_MODES = ("average", "guidance")
PACKAGE = __name__.split(".")[0]

# FgB2I pipeline classes by name, filled by FgB2IPipeline.__init_subclass__; read by from_pretrained.
_PIPELINE_CLASSES: dict[str, type] = {}


@dataclass
class FgB2IPipelineOutput(BaseOutput):
    """What an FgB2I pipeline returns.

    Attributes:
        images: ``num_images`` reconstructions (B * num_images_per_prompt of them), as PIL images, a float
            array (N, H, W, 3) in [0, 1], a float tensor (N, 3, H, W) in [0, 1], or latents, by
            ``output_type``.
        captions: the B decoded (or given) captions; ``None`` when ``w = 0`` and none were given.
        base_embeds: the base method's semantic conditioning (B, L, D): LDM c (77 x 768), Brain-Diffuser's
            CLIP-text (77 x 768), MindEye's CLIP-image (257 x 768).
        text_embeds: CLIP text embedding of the captions (B, 77, D); ``None`` when ``w = 0``.
        fused_embeds: the conditioning the UNet saw for the conditional branch (B, L, D); for Versatile
            Diffusion the text and image contexts concatenated along L. ``None`` in guidance mode, where
            the two conditions enter as separate branches.
        w: the fusion weight.
        fusion: ``"average"`` or ``"guidance"``.
        text_mix: Versatile Diffusion only: the text weight of the dual attention that was used.
        init_images: the low-level images the img2img started from (B, 3, h, w) in [0, 1], at their own size
            (Brain-Diffuser's VDVAE images, MindEye's blurry images, or the ones passed in); ``None`` from noise.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    captions: list[str] | None = None
    base_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    fused_embeds: torch.Tensor | None = None
    w: float | None = None
    fusion: str | None = None
    text_mix: float | None = None
    init_images: torch.Tensor | None = None


# -- fusion rules (pure functions, tested on their own) -------------------------------------------------


def fuse_embeddings(text_embeds: torch.Tensor, base_embeds: torch.Tensor, w: float) -> torch.Tensor:
    """The paper's fusion: ``w * text + (1 - w) * base`` (same shape, e.g. (B, 77, 768))."""
    if text_embeds.shape != base_embeds.shape:
        raise ValueError(
            f"cannot fuse a text embedding of shape {tuple(text_embeds.shape)} with a base embedding of shape "
            f"{tuple(base_embeds.shape)}: both must live in the same CLIP text space"
        )
    return w * text_embeds + (1.0 - w) * base_embeds


def classifier_free_guidance(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Standard CFG: ``eps_u + s * (eps_c - eps_u)`` (Ho & Salimans 2022)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def composed_guidance(eps_uncond: torch.Tensor | None, eps_base: torch.Tensor, eps_text: torch.Tensor,
                      scale: float, w: float) -> torch.Tensor:
    """Guidance-mode fusion: ``eps_u + s * [(1 - w)(eps_base - eps_u) + w (eps_text - eps_u)]``.

    Without guidance (``eps_uncond is None``, i.e. s <= 1) this is the plain mixture
    ``(1 - w) eps_base + w eps_text``, which is what the formula gives at s = 1.
    """
    if eps_uncond is None:
        return (1.0 - w) * eps_base + w * eps_text
    return eps_uncond + scale * ((1.0 - w) * (eps_base - eps_uncond) + w * (eps_text - eps_uncond))


# -- inputs ---------------------------------------------------------------------------------------------


def prepare_betas(betas, subject) -> tuple[torch.Tensor, str | list[str]]:
    """Betas as one float32 tensor (B, V) and the subject(s), as BrainPrefixGPT2 takes them
    (:func:`fgb2i_hf.core.as_betas`; a list naming one subject becomes that name).

    ``betas`` is a tensor or array (B, V) or (V,), or a sequence of B 1-D rows (e.g. ``dataset[i:j]["betas"]``);
    rows of different lengths (mixed subjects) are zero-padded on the right and need one subject per row.
    """
    if subject is None:
        raise ValueError("`subject` is required with `betas`: a subject name ('subj01') or one per row")
    tensor, subject = as_betas(betas, subject)
    if not isinstance(subject, str) and len(set(subject)) == 1:
        subject = subject[0]
    return tensor, subject


def repeat_rows(tensor: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """Each row n times in a row (B, ...) -> (B * n, ...), the order of ``num_images_per_prompt``."""
    if tensor is None or n == 1:
        return tensor
    return tensor.repeat_interleave(n, dim=0)


# -- the base class -------------------------------------------------------------------------------------


class FgB2IPipeline(DiffusionPipeline):
    """Base class of the FgB2I pipelines; ``FgB2IPipeline.from_pretrained(path)`` returns the right subclass.

    Subclasses register ``brain_model`` (a ``BrainPrefixGPT2``) and ``caption_tokenizer`` (its GPT-2
    tokenizer) beside their diffusion components, and implement ``__call__``. Both are optional
    components: a pipeline without them still runs with ``captions=`` or at ``w = 0``.
    """

    # Passed to generate_captions under the caller's kwargs; empty: the model's own defaults (greedy,
    # max_new_tokens = config.max_caption_tokens).
    default_caption_generation_kwargs: dict[str, Any] = {}
    # The call's defaults where the base's settings (``self.config.settings``) give none.
    default_settings: dict[str, Any] = {}

    def setting(self, name: str, given=None):
        """``given`` unless it is None, else the base's setting (``config.settings``), else the class default."""
        if given is not None:
            return given
        settings = getattr(self.config, "settings", None) or {}
        if name in settings:
            return settings[name]
        if name in self.default_settings:
            return self.default_settings[name]
        raise ValueError(f"no value for {name!r}: pass it to the call or set it in the base's settings")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _PIPELINE_CLASSES[cls.__name__] = cls

    # -- loading ----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Load a saved FgB2I pipeline; on ``FgB2IPipeline`` itself, the class named in model_index.json.

        ``simnsd/<name>`` resolves to the packaged SimNSD world. The ``fgb2i_hf`` modules that define the
        components (BrainPrefixGPT2, RidgeDecoder) are imported first, because diffusers 0.42 resolves a
        component's module only from ``sys.modules``.
        """
        path = resolve_pretrained(str(pretrained_model_name_or_path))
        hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only",
                                             "force_download", "proxies") if k in kwargs}
        config = DiffusionPipeline.load_config(path, **hub_kwargs)
        import_component_modules(config)
        saved_name = config.get("_class_name")
        target = cls
        if cls is FgB2IPipeline:
            target = _PIPELINE_CLASSES.get(saved_name)
            if target is None:
                raise ValueError(
                    f"{path}: model_index.json names the pipeline class {saved_name!r}, which is not an FgB2I "
                    f"pipeline (known: {sorted(_PIPELINE_CLASSES)}). Load base-model checkpoints with the concrete "
                    "class, e.g. FgB2ILDMPipeline.from_pretrained('CompVis/stable-diffusion-v1-4', brain_model=...)"
                )
        elif saved_name in _PIPELINE_CLASSES and not issubclass(_PIPELINE_CLASSES[saved_name], cls):
            raise ValueError(f"{path} holds a {saved_name}, not a {cls.__name__}; load it with {saved_name} "
                             "or FgB2IPipeline.from_pretrained")
        return super(FgB2IPipeline, target).from_pretrained(path, **kwargs)

    # -- shared steps of __call__ -----------------------------------------------------------------------
    @staticmethod
    def check_fusion(w: float, fusion: str) -> None:
        if not isinstance(w, (int, float)) or not 0.0 <= float(w) <= 1.0:
            raise ValueError(f"`w` must be a number in [0, 1] (0 = base method, 1 = text alone), got {w!r}")
        if fusion not in FUSION_MODES:
            raise ValueError(f"`fusion` must be one of {FUSION_MODES}, got {fusion!r}")

    @staticmethod
    def check_counts(num_inference_steps, num_images_per_prompt) -> None:
        """Both must be positive ints: 0 steps or 0 images per prompt would fail deep inside the scheduler or the
        UNet (ZeroDivisionError, a size mismatch), a float in ``range``."""
        for name, value in (("num_inference_steps", num_inference_steps),
                            ("num_images_per_prompt", num_images_per_prompt)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")

    def decode_captions(self, betas: torch.Tensor, subject, generation_kwargs: dict | None = None) -> list[str]:
        """Fine-grained captions from the betas with ``brain_model.generate_captions`` (one per row)."""
        if getattr(self, "brain_model", None) is None or getattr(self, "caption_tokenizer", None) is None:
            raise ValueError(
                "this pipeline has no `brain_model`/`caption_tokenizer` to decode captions with: pass both "
                "components, or pass `captions=` (one per row), or use w=0 (the base method)"
            )
        kwargs = {**self.default_caption_generation_kwargs, **(generation_kwargs or {})}
        device = next(self.brain_model.parameters()).device
        captions = self.brain_model.generate_captions(betas.to(device), subject, self.caption_tokenizer, **kwargs)
        if len(captions) != betas.shape[0]:
            raise ValueError(
                f"brain_model.generate_captions returned {len(captions)} captions for {betas.shape[0]} rows; "
                "the pipeline needs exactly one caption per row (num_return_sequences=1)"
            )
        return list(captions)

    @staticmethod
    def check_base_betas(base_betas, betas, subject) -> torch.Tensor:
        """``base_betas`` as a tensor with as many rows (and columns) as ``betas``."""
        if betas is None:
            raise ValueError("`base_betas` go with `betas` (the same rows, normalised as the base's models were fit)")
        base_betas, _ = prepare_betas(base_betas, subject)
        if tuple(base_betas.shape) != tuple(betas.shape):
            raise ValueError(f"`base_betas` must have the shape of `betas` {tuple(betas.shape)}, got "
                             f"{tuple(base_betas.shape)}")
        return base_betas

    @staticmethod
    def check_captions(captions, batch_size: int) -> list[str]:
        if isinstance(captions, str):
            captions = [captions]
        captions = list(captions)
        if len(captions) != batch_size or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"`captions` must be {batch_size} strings (one per row), got {captions!r:.200}")
        return captions

    @staticmethod
    def predict_with(decoder, name: str, betas: torch.Tensor, subject, expected_shape: tuple[int, ...] | None,
                     device, dtype) -> torch.Tensor:
        """``decoder.predict(betas, subject=)`` with clear errors for a missing decoder, mixed subjects, shapes."""
        if decoder is None:
            raise ValueError(f"this pipeline has no `{name}` component: pass it, or pass its output to the call")
        if not isinstance(subject, str):
            raise ValueError(f"`{name}` is fitted on one subject; call the pipeline once per subject "
                             f"(this batch mixes {sorted(set(subject))})")
        predicted = torch.as_tensor(decoder.predict(betas.to(getattr(decoder, "device", betas.device)), subject=subject))
        if predicted.shape[0] != betas.shape[0]:
            raise ValueError(f"`{name}` predicted {predicted.shape[0]} rows for {betas.shape[0]} rows of betas")
        if expected_shape is not None and tuple(predicted.shape[1:]) != tuple(expected_shape):
            raise ValueError(f"`{name}` predicts targets of shape {tuple(predicted.shape[1:])}; this pipeline "
                             f"needs {tuple(expected_shape)}")
        return predicted.to(device=device, dtype=dtype)

    @staticmethod
    def check_embeds(name: str, embeds: torch.Tensor, batch_size: int, shape: tuple[int, ...], device, dtype):
        embeds = torch.as_tensor(embeds)
        if embeds.ndim == len(shape):
            embeds = embeds[None]
        if embeds.shape[0] != batch_size or tuple(embeds.shape[1:]) != tuple(shape):
            raise ValueError(f"`{name}` must have shape ({batch_size}, {', '.join(map(str, shape))}), "
                             f"got {tuple(embeds.shape)}")
        return embeds.to(device=device, dtype=dtype)

    def img2img_timesteps(self, num_inference_steps: int, strength: float, device) -> torch.Tensor:
        """The last ``int(num_inference_steps * strength)`` timesteps of the schedule (SDEdit, as in the bases)."""
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"`strength` must be in (0, 1], got {strength}")
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        kept = min(int(num_inference_steps * strength), num_inference_steps)
        if kept == 0:
            raise ValueError(f"strength {strength} with {num_inference_steps} steps leaves no denoising step")
        start = (num_inference_steps - kept) * self.scheduler.order
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        return self.scheduler.timesteps[start:]

    def encode_init_images(self, images: torch.Tensor, generator, dtype) -> torch.Tensor:
        """VAE latents (scaled) of preprocessed images (N, 3, H, W); a sample of the posterior, as the bases do."""
        images = images.to(device=self._execution_device, dtype=self.vae.dtype)
        if isinstance(generator, list):
            latents = torch.cat([self.vae.encode(images[i : i + 1]).latent_dist.sample(generator[i])
                                 for i in range(images.shape[0])])
        else:
            latents = self.vae.encode(images).latent_dist.sample(generator)
        return (self.vae.config.scaling_factor * latents).to(dtype)

    def noised_latents(self, init_latents: torch.Tensor, timestep: torch.Tensor, generator) -> torch.Tensor:
        """``init_latents`` noised to the first kept timestep: the img2img start point."""
        noise = randn_tensor(init_latents.shape, generator=generator, device=init_latents.device,
                             dtype=init_latents.dtype)
        return self.scheduler.add_noise(init_latents, noise, timestep.repeat(init_latents.shape[0]))

    def step_kwargs(self, generator, eta: float) -> dict:
        """``eta`` and ``generator`` for the schedulers whose ``step`` takes them (DDIM does; UniPC does not)."""
        import inspect

        accepted = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in accepted:
            kwargs["eta"] = eta
        if "generator" in accepted:
            kwargs["generator"] = generator
        return kwargs

    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor,
                predict_noise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], step_kwargs: dict) -> torch.Tensor:
        """The sampling loop, with a progress bar; ``predict_noise(latents, t)`` returns the guided noise."""
        with self.progress_bar(total=len(timesteps)) as progress:
            for t in timesteps:
                noise = predict_noise(latents, t)
                latents = self.scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
                progress.update()
        return latents

    def decode_latents_to_images(self, latents: torch.Tensor, output_type: str):
        if output_type == "latent":
            return latents
        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        return self.image_processor.postprocess(images, output_type=output_type)

    @staticmethod
    def check_generator(generator, total: int) -> None:
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(f"got a list of {len(generator)} generators for {total} images "
                             "(batch size x num_images_per_prompt); pass one per image or a single generator")


def pipeline_class(name: str) -> type:
    """The FgB2I pipeline class registered under ``name`` (every ``FgB2IPipeline`` subclass registers itself)."""
    if name not in _PIPELINE_CLASSES:
        raise ValueError(f"no FgB2I pipeline class named {name!r} (known: {sorted(_PIPELINE_CLASSES)})")
    return _PIPELINE_CLASSES[name]


def import_component_modules(model_index: dict) -> list[str]:
    """Import the ``fgb2i_hf`` modules named as component libraries in a model_index.json; return them.

    Only modules of this package are imported: a repository's model index never makes us run other code.
    """
    imported = []
    for value in model_index.values():
        if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str):
            library = value[0]
            if library == PACKAGE or library.startswith(PACKAGE + "."):
                importlib.import_module(library)
                imported.append(library)
    return imported
