"""Assemble FgB2I pipelines from their parts: a diffusion backbone by name, the brain model, the decoders.

    pipe = build_pipeline("ldm", "CompVis/stable-diffusion-v1-4", brain_model="out/brain_model",
                          decoders={"z_decoder": "out/decoders/subj01/z", "c_decoder": "out/decoders/subj01/c"})

Backbones load component by component from their standard subfolders (``vae``, ``unet``, ``text_encoder``
...), which also works for ``shi-labs/versatile-diffusion``, whose model_index.json names its text UNet
under a pipeline module diffusers 0.42 no longer has. ``"tiny-random"`` builds random tiny components
(``fgb2i_hf.testing``; mechanics only), and ``encoders_from=`` replaces the encoders with those the ridge
decoders' targets were computed with (``fit_decoders`` saves them to ``<output_dir>/target_models``), so
predicted and decoded embeddings live in the same space.
"""

from __future__ import annotations

import os

import torch

from ..world import loading_config_field, resolve_pretrained

TINY_RANDOM = "tiny-random"
BACKBONE_OF_BASE = {"ldm": "sd", "brain_diffuser": "vd", "mindeye": "vd"}
DEFAULT_DIFFUSION_MODELS = {"sd": "CompVis/stable-diffusion-v1-4", "vd": "shi-labs/versatile-diffusion"}
DEFAULT_SCHEDULERS = {"ldm": "ddim", "brain_diffuser": "ddim", "mindeye": "unipc"}  # Takagi, Brain-Diffuser, MindEye
DECODER_COMPONENTS = {"ldm": ("z_decoder", "c_decoder"), "brain_diffuser": ("clip_text_decoder", "clip_vision_decoder"),
                      "mindeye": ()}


def _scheduler_classes() -> dict:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler, UniPCMultistepScheduler

    return {"ddim": DDIMScheduler, "unipc": UniPCMultistepScheduler, "pndm": PNDMScheduler,
            "dpm": DPMSolverMultistepScheduler}


def _component_classes(kind: str) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (CLIPImageProcessor, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer,
                              CLIPVisionModelWithProjection)

    if kind == "sd":
        return {"vae": AutoencoderKL, "text_encoder": CLIPTextModel, "tokenizer": CLIPTokenizer,
                "unet": UNet2DConditionModel}
    from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import UNetFlatConditionModel

    return {"tokenizer": CLIPTokenizer, "text_encoder": CLIPTextModelWithProjection,
            "image_encoder": CLIPVisionModelWithProjection, "image_feature_extractor": CLIPImageProcessor,
            "image_unet": UNet2DConditionModel, "text_unet": UNetFlatConditionModel, "vae": AutoencoderKL}


def _load_component(cls, path: str, name: str, dtype, **kwargs):
    import transformers

    if issubclass(cls, (transformers.PreTrainedTokenizerBase, transformers.ImageProcessingMixin)):
        return cls.from_pretrained(path, subfolder=name, **kwargs)
    return cls.from_pretrained(path, subfolder=name, dtype=dtype, **kwargs)


def _has_subfolder(path: str, name: str) -> bool | None:
    """True/False for a local folder; None (unknown, try it) for a Hub name."""
    return os.path.isdir(os.path.join(path, name)) if os.path.isdir(path) else None


def load_backbone(name_or_path: str, kind: str, *, scheduler: str | None = None, encoders_from: str | None = None,
                  dtype: torch.dtype = torch.float32, seed: int = 0, **hub_kwargs) -> dict:
    """The diffusion components of a Stable Diffusion v1.x (``kind="sd"``) or Versatile Diffusion (``"vd"``)
    model, as keyword arguments for ``FgB2ILDMPipeline`` / ``FgB2IVersatileDiffusionPipeline``.

    Args:
        name_or_path: a Hub name, a local folder in the diffusers layout, ``simnsd/<name>``, or
            ``"tiny-random"`` (random tiny components, seeded by ``seed``).
        scheduler: ``"ddim"``, ``"unipc"``, ``"pndm"`` or ``"dpm"``, built from the model's scheduler config
            (default: the model's own scheduler; DDIM for ``"tiny-random"``).
        encoders_from: a folder whose subfolders (``vae``, ``text_encoder``, ``tokenizer``, ``image_encoder``,
            ``image_feature_extractor``) replace the backbone's: the models the decoders' targets came from.
        hub_kwargs: ``revision``, ``cache_dir``, ``token``... for ``from_pretrained``.
    """
    if kind not in DEFAULT_DIFFUSION_MODELS:
        raise ValueError(f"backbone kind must be 'sd' or 'vd', got {kind!r}")
    classes = _component_classes(kind)
    path = resolve_pretrained(name_or_path)
    if path == TINY_RANDOM:
        from ..testing import tiny_sd_components, tiny_vd_components

        components = (tiny_sd_components if kind == "sd" else tiny_vd_components)(seed=seed)
        if dtype != torch.float32:
            components = {k: (v.to(dtype) if isinstance(v, torch.nn.Module) else v) for k, v in components.items()}
    else:
        if os.path.exists(os.path.expanduser(path)) and not os.path.isdir(path):
            raise ValueError(f"{name_or_path}: expected a folder in the diffusers layout or a Hub name")
        components = {}
        for name, cls in classes.items():
            if _has_subfolder(path, name) is False:
                continue  # e.g. no text_unet beside an already dual image_unet
            components[name] = _load_component(cls, path, name, dtype, **hub_kwargs)
        if scheduler is None:
            from diffusers import DDIMScheduler

            config = DDIMScheduler.load_config(path, subfolder="scheduler", **hub_kwargs)
            scheduler = {v.__name__: k for k, v in _scheduler_classes().items()}.get(config.get("_class_name"), "ddim")
        components["scheduler"] = _scheduler_classes()[scheduler].from_pretrained(path, subfolder="scheduler",
                                                                                   **hub_kwargs)
    if scheduler is not None and path == TINY_RANDOM:
        components["scheduler"] = _scheduler_classes()[scheduler].from_config(components["scheduler"].config)
    if encoders_from is not None:
        encoders_from = resolve_pretrained(encoders_from)
        replaced = [name for name in ("vae", "text_encoder", "tokenizer", "image_encoder", "image_feature_extractor")
                    if name in classes and os.path.isdir(os.path.join(encoders_from, name))]
        if not replaced:
            raise ValueError(f"{encoders_from}: no encoder subfolders (vae, text_encoder, tokenizer, image_encoder, "
                             "image_feature_extractor) to take the decoders' target models from")
        for name in replaced:
            components[name] = _load_component(classes[name], encoders_from, name, dtype)
    return components


def build_pipeline(base: str, diffusion_model: str | None = None, *, brain_model=None, caption_tokenizer=None,
                   decoders: dict | None = None, scheduler: str | None = None, encoders_from: str | None = None,
                   dtype: torch.dtype = torch.float32, device: str | torch.device | None = None, seed: int = 0,
                   voxel_counts: dict[str, int] | None = None):
    """An FgB2I pipeline for ``base`` (``"ldm"``, ``"brain_diffuser"``, ``"mindeye"``).

    Args:
        diffusion_model: see ``load_backbone`` (default: SD v1.4 for LDM, Versatile Diffusion otherwise).
        brain_model: a BrainPrefixGPT2 or a path/name to load one from (its tokenizer is loaded from the same
            place unless ``caption_tokenizer`` is given), or ``"tiny-random"``: a random tiny one for
            ``voxel_counts`` (mechanics only).
        decoders: ``{component: RidgeDecoder or path}``; LDM takes ``z_decoder``/``c_decoder``,
            Brain-Diffuser ``clip_text_decoder``/``clip_vision_decoder``, MindEye none.
        scheduler: default Takagi/Brain-Diffuser DDIM, MindEye UniPC.
    """
    if base not in BACKBONE_OF_BASE:
        raise ValueError(f"`base` must be one of {sorted(BACKBONE_OF_BASE)}, got {base!r}")
    kind = BACKBONE_OF_BASE[base]
    diffusion_model = diffusion_model or DEFAULT_DIFFUSION_MODELS[kind]
    with loading_config_field("diffusion_model", diffusion_model):
        components = load_backbone(diffusion_model, kind, scheduler=scheduler or DEFAULT_SCHEDULERS[base],
                                   encoders_from=encoders_from, dtype=dtype, seed=seed)
    if brain_model == TINY_RANDOM:
        from ..testing import tiny_brain_prefix_gpt2

        if not voxel_counts:
            raise ValueError("brain_model='tiny-random' needs `voxel_counts` ({subject: number of voxels})")
        brain_model, caption_tokenizer = tiny_brain_prefix_gpt2(dict(voxel_counts), seed=seed)
    elif isinstance(brain_model, (str, os.PathLike)):
        from transformers import AutoTokenizer

        from ..models import BrainPrefixGPT2

        with loading_config_field("brain_model", brain_model):
            path = resolve_pretrained(str(brain_model))
            caption_tokenizer = caption_tokenizer or AutoTokenizer.from_pretrained(path)
            brain_model = BrainPrefixGPT2.from_pretrained(path, dtype=dtype).eval()
    elif isinstance(caption_tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        caption_tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(str(caption_tokenizer)))
    loaded = {}
    for name, decoder in (decoders or {}).items():
        if name not in DECODER_COMPONENTS[base]:
            raise ValueError(f"the {base} base takes decoders {DECODER_COMPONENTS[base] or '(none)'}, not {name!r}")
        if isinstance(decoder, (str, os.PathLike)):
            from ..decoders import RidgeDecoder

            decoder = RidgeDecoder.from_pretrained(resolve_pretrained(str(decoder)))
        loaded[name] = decoder
    if kind == "sd":
        from .pipeline_fgb2i_ldm import FgB2ILDMPipeline

        pipe = FgB2ILDMPipeline(**components, brain_model=brain_model, caption_tokenizer=caption_tokenizer, **loaded)
    else:
        from .pipeline_fgb2i_versatile_diffusion import FgB2IVersatileDiffusionPipeline

        pipe = FgB2IVersatileDiffusionPipeline(**components, brain_model=brain_model,
                                               caption_tokenizer=caption_tokenizer, base=base, **loaded)
        if pipe.text_unet is not None:
            pipe.remove_unused_weights()  # its transformers now live in the dual image UNet
    return pipe.to(device) if device is not None else pipe
