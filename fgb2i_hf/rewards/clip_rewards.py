"""CLIP rewards: ``clip_text_image`` (the paper's L_ti) and ``clip_image_image`` (L_ii).

* ``clip_text_image``: cosine between the CLIP embedding of the sampled caption and that of the stimulus.
* ``clip_image_image``: an image is rendered from the sampled caption by a text-to-image diffusion
  pipeline (SD v1.x by default, few steps), and the reward is the CLIP cosine between it and the stimulus.

Stimulus images come from the batch's ``images`` column when the trainer passes one (uint8 (H, W, 3)
per row), else from ``stimuli`` (an :class:`fgb2i_hf.data.NSDStimuli` or any ``nsd_id -> image`` mapping)
by the ``nsd_id`` column. Image embeddings are computed once per ``nsd_id`` and cached.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..clip import CLIPScorer
from .registry import register_reward


def _load_scorer(clip: CLIPScorer | str, pretrained: str | None, device) -> CLIPScorer:
    if isinstance(clip, CLIPScorer):
        return clip.to(device) if device is not None else clip
    return CLIPScorer.from_pretrained(clip, pretrained=pretrained, device=device)


class _StimulusEmbeddings:
    """CLIP embeddings of stimulus images, cached per nsd_id."""

    def __init__(self, scorer: CLIPScorer, stimuli=None):
        self.scorer, self.stimuli, self.cache = scorer, stimuli, {}

    def __call__(self, nsd_ids: Sequence[int], images: Sequence[Any] | None) -> torch.Tensor:
        first_row: dict[int, int] = {}
        for i, n in enumerate(nsd_ids):
            if int(n) not in self.cache:
                first_row.setdefault(int(n), i)
        missing = list(first_row.values())
        if missing:
            if images is not None:
                batch = [np.asarray(images[i]) for i in missing]
            elif self.stimuli is not None:
                batch = [np.asarray(self.stimuli[int(nsd_ids[i])]) for i in missing]
            else:
                raise ValueError("a CLIP reward needs the stimulus images: pass an 'images' column or "
                                 "construct the reward with stimuli=NSDStimuli(root)")
            embeddings = self.scorer.encode_images(np.stack(batch))
            for i, e in zip(missing, embeddings):
                self.cache[int(nsd_ids[i])] = e
        return torch.stack([self.cache[int(n)] for n in nsd_ids])


@register_reward("clip_text_image")
class CLIPTextImageReward:
    """cos(CLIP_text(completion), CLIP_image(stimulus)) per completion, in [-1, 1].

    Args:
        clip: a :class:`CLIPScorer` or a name for :meth:`CLIPScorer.from_pretrained` (default OpenAI ViT-L/14).
        pretrained: open_clip pretrained tag when ``clip`` is an open_clip model name.
        stimuli: ``nsd_id -> uint8 (H, W, 3)`` mapping, used when the batch has no ``images`` column.
    """

    __name__ = "clip_text_image"
    needs = ("clip", "stimuli", "device")

    def __init__(self, clip: CLIPScorer | str = "ViT-L-14-quickgelu", pretrained: str | None = "openai",
                 stimuli=None, device: str | None = None):
        self.scorer = _load_scorer(clip, pretrained, device)
        self.stimulus_embeddings = _StimulusEmbeddings(self.scorer, stimuli)

    def __call__(self, completions: Sequence[str], nsd_id: Sequence[int], images=None, **columns) -> list[float]:
        if len(nsd_id) != len(completions):
            raise ValueError(f"'nsd_id' has {len(nsd_id)} rows for {len(completions)} completions")
        image_emb = self.stimulus_embeddings(nsd_id, images)
        text_emb = self.scorer.encode_text(list(completions))
        return (text_emb * image_emb).sum(-1).tolist()


class TextToImageRenderer:
    """Render captions with a diffusers text-to-image pipeline: ``renderer(prompts) -> uint8 (N, H, W, 3)``.

    Every prompt is rendered from the same seed, so a caption always gets the same image and the reward
    is a deterministic function of the caption.
    """

    def __init__(self, pipeline: str | Any = "CompVis/stable-diffusion-v1-4", num_inference_steps: int = 4,
                 guidance_scale: float = 7.5, height: int | None = None, width: int | None = None, seed: int = 0,
                 device: str | None = None, batch_size: int = 8, dtype: torch.dtype | None = None):
        if isinstance(pipeline, str):
            from diffusers import DiffusionPipeline

            from ..core import resolve_pretrained

            pipeline = DiffusionPipeline.from_pretrained(resolve_pretrained(pipeline), **({"dtype": dtype} if dtype else {}))
            if device is not None:
                pipeline = pipeline.to(device)
        self.pipeline = pipeline
        if hasattr(self.pipeline, "set_progress_bar_config"):
            self.pipeline.set_progress_bar_config(disable=True)
        self.kwargs = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        if height is not None:
            self.kwargs["height"] = height
        if width is not None:
            self.kwargs["width"] = width
        self.seed, self.batch_size = seed, batch_size

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        out = []
        for i in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[i : i + self.batch_size])
            generators = [torch.Generator().manual_seed(self.seed) for _ in chunk]
            images = self.pipeline(chunk, generator=generators, output_type="np", **self.kwargs).images
            out.append(np.clip(np.asarray(images) * 255.0 + 0.5, 0, 255).astype(np.uint8))
        return np.concatenate(out)


@register_reward("clip_image_image")
class CLIPImageImageReward:
    """cos(CLIP_image(render(completion)), CLIP_image(stimulus)) per completion.

    Args:
        renderer: a callable ``prompts -> images`` (uint8 (N, H, W, 3), PIL list or float (N, 3, H, W)),
            or a diffusers pipeline name/path for :class:`TextToImageRenderer`.
        render_kwargs: keyword arguments of :class:`TextToImageRenderer` (steps, guidance, size, seed).
        clip, pretrained, stimuli, device: as for :class:`CLIPTextImageReward`.
        cache_size: CLIP embeddings of renderings kept per caption text (least recently used dropped first), so a
            caption sampled again is not rendered again; this assumes the renderer is a deterministic function of
            the caption, as :class:`TextToImageRenderer` is (one seed for every prompt). 0 turns the cache off.
    """

    __name__ = "clip_image_image"
    needs = ("clip", "stimuli", "renderer", "device")

    def __init__(self, renderer: str | Callable = "CompVis/stable-diffusion-v1-4", render_kwargs: dict | None = None,
                 clip: CLIPScorer | str = "ViT-L-14-quickgelu", pretrained: str | None = "openai", stimuli=None,
                 device: str | None = None, cache_size: int = 16384):
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.cache_size = cache_size
        self.rendered: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.renderer = renderer if callable(renderer) else TextToImageRenderer(renderer, device=device,
                                                                                 **(render_kwargs or {}))
        self.scorer = _load_scorer(clip, pretrained, device)
        self.stimulus_embeddings = _StimulusEmbeddings(self.scorer, stimuli)

    def __call__(self, completions: Sequence[str], nsd_id: Sequence[int], images=None, **columns) -> list[float]:
        if len(nsd_id) != len(completions):
            raise ValueError(f"'nsd_id' has {len(nsd_id)} rows for {len(completions)} completions")
        image_emb = self.stimulus_embeddings(nsd_id, images)
        rendered_emb = self.rendered_embeddings(list(completions))
        return (rendered_emb * image_emb).sum(-1).tolist()

    def rendered_embeddings(self, captions: list[str]) -> torch.Tensor:
        """CLIP image embeddings of the renderings of ``captions``; each distinct caption not in the cache is
        rendered once."""
        if not self.cache_size:
            return self.scorer.encode_images(self.renderer(captions))
        new = [c for c in dict.fromkeys(captions) if c not in self.rendered]
        fresh = dict(zip(new, self.scorer.encode_images(self.renderer(new)))) if new else {}
        out = torch.stack([fresh[c] if c in fresh else self.rendered[c] for c in captions])
        for c in dict.fromkeys(captions):
            self.rendered[c] = fresh.get(c, self.rendered.get(c))
            self.rendered.move_to_end(c)
        while len(self.rendered) > self.cache_size:
            self.rendered.popitem(last=False)
        return out
