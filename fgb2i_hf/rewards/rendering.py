"""Text-to-image rendering for the image-image reward: the renderer, its settings and identity, and the cache.

* :class:`RendererSettings` — every setting of a renderer in one place; :data:`RENDERER_PRESETS` names the two
  kinds the RL driver offers: ``renderer`` (the paper's kind, SD v1.4 in a few DDIM/PNDM steps with guidance) and
  ``distilled`` (a one-step distilled model, SD-Turbo by default; LCM-LoRA is ``scheduler="LCMScheduler"`` with
  ``lora="latent-consistency/lcm-lora-sdv1-5"`` on an SD v1.x base).
* :class:`TextToImageRenderer` — a diffusers pipeline run in batches (float16 on a GPU), every prompt from the same
  seed, so that a caption always gets the same image: the rendering is a deterministic function of the caption and
  the renderer's identity, which is what lets the rendered embeddings be cached and a surrogate stand in for it.
* :meth:`TextToImageRenderer.identity` — the pretrained name, the settings that change what is drawn, the scheduler's
  config and a SHA-256 of the weights (LoRA fused in): :class:`RenderCache` keys on it, and a fitted render
  surrogate records it and is refused by a renderer with another identity.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Hashable, Sequence

import numpy as np
import torch

from ..core import resolve_pretrained

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class RendererSettings:
    """How a caption is rendered. Fields other than ``batch_size`` and ``dtype`` change the image (they are in the
    renderer's identity); those two change only speed and rounding."""

    pretrained: str = field(default="CompVis/stable-diffusion-v1-4", metadata={
        "help": "diffusers text-to-image pipeline: Hub id, folder or simnsd/<name>."})
    num_inference_steps: int = field(default=4, metadata={"help": "Denoising steps."})
    guidance_scale: float = field(default=7.5, metadata={"help": "Classifier-free guidance (<= 1: one pass, none)."})
    height: int | None = field(default=None, metadata={"help": "Image height (None: the pipeline's own)."})
    width: int | None = field(default=None, metadata={"help": "Image width (None: the pipeline's own)."})
    seed: int = field(default=0, metadata={"help": "Seed of every prompt's initial noise (and of LCM's noise)."})
    scheduler: str | None = field(default=None, metadata={
        "help": "diffusers scheduler class built from the pipeline's scheduler config, e.g. 'LCMScheduler' "
                "(None: the pipeline's own)."})
    lora: str | None = field(default=None, metadata={
        "help": "LoRA weights loaded and fused into the pipeline, e.g. 'latent-consistency/lcm-lora-sdv1-5'."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per pipeline call."})
    dtype: str = field(default="auto", metadata={"help": "'auto' (float16 on CUDA, else float32), or a dtype name."})

    def __post_init__(self):
        if isinstance(self.num_inference_steps, bool) or not isinstance(self.num_inference_steps, int) \
                or self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {self.num_inference_steps!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}")

    def drawing(self) -> dict:
        """The settings that change what is drawn (all but ``batch_size`` and ``dtype``)."""
        return {k: v for k, v in asdict(self).items() if k not in ("batch_size", "dtype")}

    def torch_dtype(self, device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.float16 if torch.device(device or "cpu").type == "cuda" else torch.float32
        return DTYPES[self.dtype]


#: The two renderer kinds of the RL driver's ``image_reward`` (the third, ``surrogate``, renders with the renderer
#: its surrogate was fitted on). SD-Turbo: one step, no guidance, 512 px (Sauer et al. 2023, its model card).
RENDERER_PRESETS = {
    "renderer": RendererSettings(),
    "distilled": RendererSettings(pretrained="stabilityai/sd-turbo", num_inference_steps=1, guidance_scale=0.0),
}


def renderer_settings(kind: str, **overrides) -> RendererSettings:
    """The preset ``kind`` with the ``overrides`` that are not None."""
    if kind not in RENDERER_PRESETS:
        raise ValueError(f"renderer kind must be one of {sorted(RENDERER_PRESETS)}, got {kind!r}")
    names = {f.name for f in fields(RendererSettings)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown renderer settings {sorted(unknown)}; known: {sorted(names)}")
    return replace(RENDERER_PRESETS[kind], **{k: v for k, v in overrides.items() if v is not None})


def weights_sha256(modules: dict[str, torch.nn.Module]) -> str:
    """SHA-256 of the named modules' weights (names, shapes and float16 values), independent of device and of the
    dtype they are held in (float32 weights and their float16 copy hash alike)."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        for key, tensor in sorted(modules[name].state_dict().items()):
            digest.update(f"{name}.{key}:{tuple(tensor.shape)}".encode())
            if tensor.is_floating_point():
                tensor = tensor.to(torch.float16)
            digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def identity_key(identity: dict) -> str:
    """A short stable hash of an identity dict (the render cache's and the surrogate's key)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _jsonable_config(config) -> dict:
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, default=str))


class TextToImageRenderer:
    """Render captions with a diffusers text-to-image pipeline: ``renderer(prompts) -> uint8 (N, H, W, 3)``.

    Every prompt is rendered from the same seed (one CPU generator per prompt, so the noise does not depend on the
    batch it falls in), so a caption always gets the same image and the reward is a deterministic function of the
    caption. Prompts are rendered ``batch_size`` at a time, in ``dtype`` (float16 on CUDA by default), on ``device``.
    The safety checker is not loaded: it would replace flagged renderings by black images, which is noise here.

    Args:
        pipeline: a pipeline name or folder (loaded with ``settings.pretrained`` set to it), or a built pipeline
            (``settings.pretrained`` then only names it).
        device: where the pipeline runs.
        settings: a :class:`RendererSettings`; keyword arguments override its fields
            (``TextToImageRenderer("simnsd/diffusion", num_inference_steps=25, guidance_scale=4.0)``).
    """

    def __init__(self, pipeline: str | Any | None = None, device: str | torch.device | None = None,
                 settings: RendererSettings | None = None, **overrides):
        settings = replace(settings or RendererSettings(), **overrides)
        if isinstance(pipeline, str):
            settings = replace(settings, pretrained=pipeline)
        self.settings = settings
        if pipeline is None or isinstance(pipeline, str):
            pipeline = self._load(settings.pretrained, settings.torch_dtype(device))
        self.pipeline = self._configure(pipeline, settings)
        if device is not None:  # the dtype is set when loading; a pipeline object keeps its own
            self.pipeline = self.pipeline.to(device)
        if hasattr(self.pipeline, "set_progress_bar_config"):
            self.pipeline.set_progress_bar_config(disable=True)
        self.kwargs = dict(num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale)
        self.kwargs.update({k: v for k, v in (("height", settings.height), ("width", settings.width)) if v is not None})
        self._identity = None

    @staticmethod
    def _load(name: str, dtype: torch.dtype):
        # imported here: diffusers is a heavy import, needed only on this path
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(resolve_pretrained(name), dtype=dtype, safety_checker=None,
                                                 requires_safety_checker=False)

    @staticmethod
    def _configure(pipeline, settings: RendererSettings):
        if settings.scheduler:
            # imported here: diffusers is a heavy import, needed only on this path
            import diffusers

            cls = getattr(diffusers, settings.scheduler, None)
            if cls is None or not hasattr(cls, "from_config"):
                raise ValueError(f"scheduler {settings.scheduler!r} is not a diffusers scheduler class")
            pipeline.scheduler = cls.from_config(pipeline.scheduler.config)
        if settings.lora:
            pipeline.load_lora_weights(resolve_pretrained(settings.lora))
            pipeline.fuse_lora()
            pipeline.unload_lora_weights()  # the fused weights stay; the adapter layers go
        return pipeline

    # -- identity -----------------------------------------------------------------------------------------------
    def identity(self) -> dict:
        """What determines the renderings: pretrained name, pipeline and scheduler (class and config), the drawing
        settings and the weights' SHA-256 (computed once)."""
        if self._identity is None:
            modules = {k: v for k, v in getattr(self.pipeline, "components", {}).items()
                       if isinstance(v, torch.nn.Module)}
            scheduler = getattr(self.pipeline, "scheduler", None)
            self._identity = {
                "settings": self.settings.drawing(),
                "pipeline_class": type(self.pipeline).__name__,
                "scheduler_class": type(scheduler).__name__ if scheduler is not None else None,
                "scheduler_config": _jsonable_config(scheduler.config) if scheduler is not None else None,
                "weights_sha256": weights_sha256(modules),
            }
        return self._identity

    @property
    def key(self) -> str:
        return identity_key(self.identity())

    # -- rendering ----------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.pipeline, "device", "cpu"))

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.pipeline, "dtype", torch.float32)

    @torch.no_grad()
    def render(self, prompts: Sequence[str]) -> torch.Tensor:
        """float (N, 3, H, W) in [0, 1] on the pipeline's device, quantised to 8 bits exactly as ``__call__``'s uint8
        images are (so CLIP sees the same values either way, without a trip through the host)."""
        out = []
        for i in range(0, len(prompts), self.settings.batch_size):
            chunk = list(prompts[i : i + self.settings.batch_size])
            generators = [torch.Generator().manual_seed(self.settings.seed) for _ in chunk]
            images = self.pipeline(chunk, generator=generators, output_type="pt", **self.kwargs).images
            out.append(torch.floor((images.float() * 255.0 + 0.5).clamp(0, 255)) / 255.0)
        return torch.cat(out)

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        images = (self.render(prompts) * 255.0).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()


def render_function(renderer):
    """``prompts -> images`` for the CLIP image encoder: the on-device float path of a :class:`TextToImageRenderer`,
    else the callable itself."""
    return renderer.render if isinstance(renderer, TextToImageRenderer) else renderer


def renderer_key(renderer) -> str:
    """The cache key of a renderer: its identity's hash, or for a plain callable its ``key`` attribute if it has one,
    else one that is unique to the object (a plain callable's identity is unknown, so nothing is shared)."""
    if hasattr(renderer, "identity"):
        return identity_key(renderer.identity())
    return str(getattr(renderer, "key", None) or f"callable-{id(renderer)}")


class RenderCache:
    """CLIP image embeddings of renderings, least recently used dropped first, keyed by (caption, renderer key,
    CLIP key): a caption rendered once is not rendered again by the same renderer with the same settings, and one
    rendered by another renderer (or embedded by another CLIP) never answers for it.

    ``max_size`` 0 keeps nothing (every lookup misses)."""

    def __init__(self, max_size: int = 16384):
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 0:
            raise ValueError(f"cache_size must be an int >= 0, got {max_size!r}")
        self.max_size = max_size
        self.entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: Hashable) -> torch.Tensor | None:
        value = self.entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        if not self.max_size:
            return
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_size:
            self.entries.popitem(last=False)
