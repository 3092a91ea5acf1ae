"""Assemble FgB2I pipelines from their parts: a base (by name), a diffusion backbone, the brain model, the decoders.

    pipe = build_pipeline("ldm", "CompVis/stable-diffusion-v1-4", brain_model="out/brain_model",
                          decoders={"z_decoder": "out/decoders/subj01/z", "c_decoder": "out/decoders/subj01/c"})

The base's spec (``fgb2i_hf.pipelines.bases``) names the backbone, the pipeline class, the default scheduler and the
decoder components. Backbones load component by component from their standard subfolders (``vae``, ``unet``,
``text_encoder``...), which also works for ``shi-labs/versatile-diffusion``, whose model_index.json names its text
UNet under a pipeline module diffusers 0.42 no longer has. ``"tiny-random"`` builds random tiny components
(``fgb2i_hf.tiny``; mechanics only), and ``encoders_from=`` replaces the encoders with those the ridge decoders'
targets were computed with (``fit_decoders`` saves them to ``<output_dir>/target_models``), so predicted and
decoded embeddings live in the same space.
"""

from __future__ import annotations

import os

import torch

from ..core import TINY_RANDOM, loading_config_field, resolve_pretrained
from .bases import Backbone, BaseSpec, get_base


def _scheduler_classes() -> dict:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler, UniPCMultistepScheduler

    return {"ddim": DDIMScheduler, "unipc": UniPCMultistepScheduler, "pndm": PNDMScheduler,
            "dpm": DPMSolverMultistepScheduler}


def _load_component(cls, path: str, name: str, dtype, **kwargs):
    import transformers

    if issubclass(cls, (transformers.PreTrainedTokenizerBase, transformers.ImageProcessingMixin)):
        return cls.from_pretrained(path, subfolder=name, **kwargs)
    return cls.from_pretrained(path, subfolder=name, dtype=dtype, **kwargs)


def _has_subfolder(path: str, name: str) -> bool | None:
    """True/False for a local folder; None (unknown, try it) for a Hub name."""
    return os.path.isdir(os.path.join(path, name)) if os.path.isdir(path) else None


def _backbone(kind: Backbone | str) -> Backbone:
    from .bases import STABLE_DIFFUSION, VERSATILE_DIFFUSION

    if isinstance(kind, Backbone):
        return kind
    known = {b.name: b for b in (STABLE_DIFFUSION, VERSATILE_DIFFUSION)}
    if kind not in known:
        raise ValueError(f"backbone kind must be one of {sorted(known)} or a Backbone, got {kind!r}")
    return known[kind]


def load_backbone(name_or_path: str, kind: Backbone | str, *, scheduler: str | None = None,
                  encoders_from: str | None = None, dtype: torch.dtype = torch.float32, seed: int = 0,
                  **hub_kwargs) -> dict:
    """The diffusion components of a backbone (``kind``: a :class:`Backbone`, ``"sd"`` or ``"vd"``), as keyword
    arguments for its FgB2I pipeline.

    Args:
        name_or_path: a Hub name, a local folder in the diffusers layout, ``simnsd/<name>``, or
            ``"tiny-random"`` (random tiny components, seeded by ``seed``).
        scheduler: ``"ddim"``, ``"unipc"``, ``"pndm"`` or ``"dpm"``, built from the model's scheduler config
            (default: the model's own scheduler; DDIM for ``"tiny-random"``).
        encoders_from: a folder whose subfolders (``vae``, ``text_encoder``, ``tokenizer``, ``image_encoder``,
            ``image_feature_extractor``) replace the backbone's: the models the decoders' targets came from.
        hub_kwargs: ``revision``, ``cache_dir``, ``token``... for ``from_pretrained``.
    """
    backbone = _backbone(kind)
    classes = backbone.component_classes()
    path = resolve_pretrained(name_or_path)
    if path == TINY_RANDOM:
        components = backbone.tiny_components(seed)
        if dtype != torch.float32:
            components = {k: (v.to(dtype) if isinstance(v, torch.nn.Module) else v) for k, v in components.items()}
        if scheduler is not None:
            components["scheduler"] = _scheduler_classes()[scheduler].from_config(components["scheduler"].config)
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
    if encoders_from is not None:
        encoders_from = resolve_pretrained(encoders_from)
        replaced = [name for name in backbone.encoder_components
                    if name in classes and os.path.isdir(os.path.join(encoders_from, name))]
        if not replaced:
            raise ValueError(f"{encoders_from}: no encoder subfolders {list(backbone.encoder_components)} to take "
                             "the decoders' target models from")
        for name in replaced:
            components[name] = _load_component(classes[name], encoders_from, name, dtype)
    return components


def load_brain_model(brain_model, caption_tokenizer=None, *, dtype: torch.dtype = torch.float32, seed: int = 0,
                     voxel_counts: dict[str, int] | None = None):
    """(BrainPrefixGPT2, tokenizer) from a model, a path/name (its tokenizer from the same place unless given), or
    ``"tiny-random"`` (a random tiny one for ``voxel_counts``; mechanics only); ``(None, tokenizer)`` for None."""
    if brain_model == TINY_RANDOM:
        from ..tiny import tiny_brain_prefix_gpt2

        if not voxel_counts:
            raise ValueError("brain_model='tiny-random' needs `voxel_counts` ({subject: number of voxels})")
        return tiny_brain_prefix_gpt2(dict(voxel_counts), seed=seed)
    from transformers import AutoTokenizer

    if isinstance(brain_model, (str, os.PathLike)):
        from ..models import BrainPrefixGPT2

        with loading_config_field("brain_model", brain_model):
            path = resolve_pretrained(str(brain_model))
            caption_tokenizer = caption_tokenizer or AutoTokenizer.from_pretrained(path)
            brain_model = BrainPrefixGPT2.from_pretrained(path, dtype=dtype).eval()
    if isinstance(caption_tokenizer, (str, os.PathLike)):
        caption_tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(str(caption_tokenizer)))
    return brain_model, caption_tokenizer


def build_pipeline(base: str | BaseSpec, diffusion_model: str | None = None, *, brain_model=None,
                   caption_tokenizer=None, decoders: dict | None = None, scheduler: str | None = None,
                   encoders_from: str | None = None, dtype: torch.dtype = torch.float32,
                   device: str | torch.device | None = None, seed: int = 0,
                   voxel_counts: dict[str, int] | None = None, components: dict | None = None):
    """The FgB2I pipeline of a base (a registered name such as ``"ldm"``, ``"brain_diffuser"``, ``"mindeye"``, or
    a :class:`~fgb2i_hf.pipelines.bases.BaseSpec`).

    Args:
        diffusion_model: see ``load_backbone`` (default: the base's backbone's published model).
        brain_model: a BrainPrefixGPT2 or a path/name to load one from, or ``"tiny-random"`` (see
            :func:`load_brain_model`).
        decoders: ``{component: RidgeDecoder or path}`` among the base's decoder components (LDM ``z_decoder``/
            ``c_decoder``, Brain-Diffuser ``clip_text_decoder``/``clip_vision_decoder``, MindEye none).
        scheduler: default: the base's (Takagi/Brain-Diffuser DDIM, MindEye UniPC).
        components: ``{name: model, path or "tiny-random"}`` of the base's own models (its spec's ``components``:
            MindEye's ``mindeye_model``, Brain-Diffuser's ``vdvae``).
    """
    from .pipeline_fgb2i import pipeline_class

    spec = base if isinstance(base, BaseSpec) else get_base(base)
    diffusion_model = diffusion_model or spec.backbone.default_model
    with loading_config_field("diffusion_model", diffusion_model):
        backbone = load_backbone(diffusion_model, spec.backbone, scheduler=scheduler or spec.scheduler,
                                 encoders_from=encoders_from, dtype=dtype, seed=seed)
    brain_model, caption_tokenizer = load_brain_model(brain_model, caption_tokenizer, dtype=dtype, seed=seed,
                                                      voxel_counts=voxel_counts)
    loaded = {}
    for name, decoder in (decoders or {}).items():
        if name not in spec.decoder_components:
            raise ValueError(f"the {spec.name} base takes decoders {list(spec.decoder_components) or '(none)'}, "
                             f"not {name!r}")
        if isinstance(decoder, (str, os.PathLike)):
            from ..decoders import RidgeDecoder

            decoder = RidgeDecoder.from_pretrained(resolve_pretrained(str(decoder)))
        loaded[name] = decoder
    for name, model in (components or {}).items():
        if name not in spec.components:
            raise ValueError(f"the {spec.name} base has components {list(spec.components) or '(none)'}, not {name!r}")
        if isinstance(model, (str, os.PathLike)):
            with loading_config_field(f"components.{name}", model):
                model = spec.components[name].build(resolve_pretrained(str(model)), seed=seed,
                                                    voxel_counts=voxel_counts, backbone=backbone)
        if isinstance(model, torch.nn.Module) and dtype != torch.float32:
            model = model.to(dtype)
        loaded[name] = model
    cls = pipeline_class(spec.backbone.pipeline)
    pipe = cls(**backbone, brain_model=brain_model, caption_tokenizer=caption_tokenizer, **loaded,
               base=spec.name, settings=dict(spec.pipeline_settings))
    if getattr(pipe, "text_unet", None) is not None:
        pipe.remove_unused_weights()  # its transformers now live in the dual image UNet
    return pipe.to(device) if device is not None else pipe
