"""The image-image reward's settings that the RL run and the surrogate fit share: which CLIP, which renderer.

The RL run's ``image_reward`` chooses how ``clip_image_image`` gets the CLIP embedding of a sampled caption's
rendering:

    renderer   render every (uncached) caption with the paper's kind of renderer (SD v1.4, few steps)
    distilled  render with a one-/few-step distilled model (SD-Turbo by default; LCM-LoRA with
               render_scheduler: LCMScheduler, render_lora: latent-consistency/lcm-lora-sdv1-5 on an SD v1.x base)
    surrogate  predict it with a fitted render surrogate (surrogate_path), rendering only a small fraction to check it

A renderer kind (``renderer`` or ``distilled``) is a preset of ``fgb2i_hf.rewards.RENDERER_PRESETS``; the
``render_*`` fields override it (None: the preset's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..clip import CLIPScorer
from ..core import loading_config_field
from ..rewards import (
    TextToImageRenderer,
    check_surrogate_clip,
    load_render_surrogate,
    renderer_settings,
    surrogate_renderer,
)

IMAGE_REWARD_KINDS = ("renderer", "distilled", "surrogate")
RENDERER_KINDS = ("renderer", "distilled")


@dataclass
class RenderArguments:
    clip_model: str = field(default="ViT-L-14-quickgelu", metadata={"help": "CLIP for the CLIP rewards (name or folder)."})
    clip_pretrained: str | None = field(default="openai", metadata={"help": "open_clip pretrained tag."})
    renderer: str | None = field(default=None, metadata={
        "help": "Text-to-image pipeline (name or folder); default: the kind's preset (SD v1.4; distilled: SD-Turbo)."})
    render_steps: int | None = field(default=None, metadata={"help": "Denoising steps (default: the preset's)."})
    render_guidance: float | None = field(default=None, metadata={"help": "Guidance scale (default: the preset's)."})
    render_size: int | None = field(default=None, metadata={"help": "Rendered image side (default: the pipeline's)."})
    render_scheduler: str | None = field(default=None, metadata={
        "help": "diffusers scheduler class to render with, e.g. LCMScheduler (default: the pipeline's)."})
    render_lora: str | None = field(default=None, metadata={
        "help": "LoRA fused into the renderer, e.g. latent-consistency/lcm-lora-sdv1-5."})
    render_batch_size: int | None = field(default=None, metadata={"help": "Prompts per renderer call."})

    def check_render_arguments(self) -> None:
        for name in ("render_steps", "render_size", "render_batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be >= 1, got {value!r}")

    def drawing_overrides(self) -> dict:
        """The ``render_*`` fields that change what is drawn, as ``RendererSettings`` fields (None: not set)."""
        return dict(pretrained=self.renderer, num_inference_steps=self.render_steps,
                    guidance_scale=self.render_guidance, height=self.render_size, width=self.render_size,
                    scheduler=self.render_scheduler, lora=self.render_lora)

    def renderer_settings(self, kind: str):
        """``RendererSettings`` of the renderer kind (``renderer`` or ``distilled``) with these overrides."""
        if kind not in RENDERER_KINDS:
            raise ValueError(f"a renderer kind is one of {RENDERER_KINDS}, got {kind!r}")
        return renderer_settings(kind, batch_size=self.render_batch_size, **self.drawing_overrides())


def load_clip(args: RenderArguments, device=None):
    with loading_config_field("clip_model", args.clip_model):
        return CLIPScorer.from_pretrained(args.clip_model, pretrained=args.clip_pretrained, device=device)


def build_renderer(args: RenderArguments, kind: str, device=None):
    """The renderer of ``kind`` (``renderer`` or ``distilled``) on ``device``, in float16 on a GPU."""
    settings = args.renderer_settings(kind)
    with loading_config_field("renderer", settings.pretrained):
        return TextToImageRenderer(device=device, settings=settings)


def load_surrogate_and_renderer(args: RenderArguments, surrogate_path: str | None, scorer, device=None):
    """``image_reward: surrogate``: the surrogate from ``surrogate_path`` (checked against the CLIP model) and the
    renderer it was fitted on, rebuilt from its record (checked against it, weights included). Drawing settings
    given in ``args`` must agree with the record: the surrogate predicts that renderer's images only."""
    if not surrogate_path:
        raise ValueError("image_reward: surrogate needs surrogate_path, a surrogate fitted for this renderer and CLIP "
                         "by recipes/fit_reward_surrogate.py (or set image_reward: renderer or distilled)")
    surrogate = load_render_surrogate(surrogate_path, device=device)
    check_surrogate_clip(surrogate, scorer, f"the render surrogate {surrogate_path}")
    recorded = surrogate.config.renderer["settings"]
    given = {k: v for k, v in args.drawing_overrides().items() if v is not None}
    differ = {k: (recorded.get(k), v) for k, v in given.items() if recorded.get(k) != v}
    if differ:
        raise ValueError(f"the render surrogate {surrogate_path} was fitted on a renderer with other settings "
                         f"(recorded vs given: {differ}); drop those render_* settings or refit the surrogate")
    extra = {} if args.render_batch_size is None else {"batch_size": args.render_batch_size}
    with loading_config_field("surrogate_path", surrogate_path):
        renderer = surrogate_renderer(surrogate, device=device, **extra)
    return surrogate, renderer
