"""CLIP rewards: ``clip_text_image`` (the paper's L_ti) and ``clip_image_image`` (L_ii).

Both are cos(an embedding of the sampled caption, CLIP_image(stimulus)); they differ only in the caption's embedding:

* ``clip_text_image``: CLIP_text(caption);
* ``clip_image_image``: CLIP_image(render(caption)), the caption rendered by a text-to-image pipeline
  (:class:`~fgb2i_hf.rewards.rendering.TextToImageRenderer`, SD v1.x by default, few steps) — or, with a fitted
  render surrogate, its prediction of that embedding from CLIP_text(caption)
  (:mod:`fgb2i_hf.rewards.render_surrogate`).

Stimulus images come from the batch's ``images`` column when the trainer passes one (uint8 (H, W, 3)
per row), else from ``stimuli`` (an :class:`fgb2i_hf.data.NSDStimuli` or any ``nsd_id -> image`` mapping)
by the ``nsd_id`` column. Image embeddings are computed once per ``nsd_id`` and cached; text embeddings are
cached per CLIP model and caption, so the two rewards of one step embed each sampled caption once.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..clip import CLIPScorer
from .registry import register_reward
from .render_surrogate import (FidelityWindow, RenderSurrogate, check_surrogate_clip, check_surrogate_renderer,
                               load_render_surrogate, surrogate_renderer)
from .rendering import RENDERER_PRESETS, RenderCache, TextToImageRenderer, render_function, renderer_key


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


# Text embeddings per CLIP model (held weakly: dropped with the model) and caption, shared by every reward here.
_TEXT_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
TEXT_CACHE_SIZE = 8192


def text_embeddings(scorer: CLIPScorer, captions: Sequence[str]) -> torch.Tensor:
    """CLIP_text of ``captions`` (N, D), each distinct caption embedded once; cached per (model, caption)."""
    cache = _TEXT_CACHES.setdefault(scorer, RenderCache(TEXT_CACHE_SIZE))
    found = {c: cache.get(c) for c in dict.fromkeys(captions)}
    missing = [c for c, e in found.items() if e is None]
    if missing:
        for c, e in zip(missing, scorer.encode_text(missing)):
            found[c] = e
            cache.put(c, e)
    if not found:
        return torch.zeros(0, scorer.embed_dim, device=scorer.device)
    return torch.stack([found[c] for c in captions])


class _CaptionStimulusCosine:
    """cos(an embedding of each completion, CLIP_image of its stimulus): the one ``__call__`` of the CLIP rewards.
    A subclass says how a caption is embedded (:meth:`caption_embeddings`) or, to see the stimuli, scores
    (:meth:`score`)."""

    def __init__(self, clip, pretrained, stimuli, device):
        self.scorer = _load_scorer(clip, pretrained, device)
        self.stimulus_embeddings = _StimulusEmbeddings(self.scorer, stimuli)

    def __call__(self, completions: Sequence[str], nsd_id: Sequence[int], images=None, **columns) -> list[float]:
        if len(nsd_id) != len(completions):
            raise ValueError(f"'nsd_id' has {len(nsd_id)} rows for {len(completions)} completions")
        return self.score(list(completions), self.stimulus_embeddings(nsd_id, images)).tolist()

    def score(self, captions: list[str], stimulus_embeds: torch.Tensor) -> torch.Tensor:
        """(N,) cosines of the captions' embeddings with their stimuli's (N, D) unit vectors."""
        return (self.caption_embeddings(captions).to(stimulus_embeds.device) * stimulus_embeds).sum(-1).float()

    def caption_embeddings(self, captions: list[str]) -> torch.Tensor:
        raise NotImplementedError


@register_reward("clip_text_image")
class CLIPTextImageReward(_CaptionStimulusCosine):
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
        super().__init__(clip, pretrained, stimuli, device)

    def caption_embeddings(self, captions: list[str]) -> torch.Tensor:
        return text_embeddings(self.scorer, captions)


@register_reward("clip_image_image")
class CLIPImageImageReward(_CaptionStimulusCosine):
    """cos(CLIP_image(render(completion)), CLIP_image(stimulus)) per completion.

    Rendering: each distinct caption of a call is rendered once, in the renderer's batches; its rendering's CLIP
    embedding is cached by (caption, renderer identity, CLIP), so a caption sampled again is not rendered again.
    This assumes the renderer is a deterministic function of the caption, as :class:`TextToImageRenderer` is (one
    seed for every prompt).

    With ``render_surrogate``, every completion is scored with the surrogate's prediction of its rendering's
    embedding (so the reward is one consistent function of the caption), and a random ``surrogate_render_fraction``
    of each call's distinct captions is still rendered to keep it honest. Those captions are queued and rendered
    ``surrogate_check_batch`` at a time (a renderer call has a fixed cost: one caption per step would cost nearly
    as much as a batch); their (surrogate, rendered) reward pairs feed a running Spearman correlation
    (:meth:`log_values`, logged by the trainer as ``reward/clip_image_image/surrogate_spearman``), and a warning is
    raised when it falls below ``surrogate_min_fidelity``. The rendered values are not mixed into the reward:
    cached captions are not a random subset of the samples, and swapping true values in for them would bias the
    advantages between captions.

    Args:
        renderer: a callable ``prompts -> images`` (uint8 (N, H, W, 3), PIL list or float (N, 3, H, W)), or a
            diffusers pipeline name/path for :class:`TextToImageRenderer`; default: the surrogate's renderer when a
            surrogate is given, else the ``renderer`` preset (SD v1.4).
        render_kwargs: :class:`~fgb2i_hf.rewards.rendering.RendererSettings` fields for a renderer built here.
        clip, pretrained, stimuli, device: as for :class:`CLIPTextImageReward`.
        cache_size: rendered embeddings kept (least recently used dropped first); 0 turns the cache off.
        render_cache: a :class:`~fgb2i_hf.rewards.rendering.RenderCache` to share (instead of a new one of
            ``cache_size``), e.g. between the rewards of an ablation's rows; its keys hold the renderer's identity.
        render_surrogate: a fitted :class:`~fgb2i_hf.models.RenderSurrogate` or its folder; checked against the
            renderer and the CLIP model (refused if either differs from the ones it was fitted with).
        surrogate_render_fraction: expected fraction of each call's distinct captions still rendered (the count is
            rounded at random, so small fractions render some calls' captions and not others').
        surrogate_check_batch: captions rendered together for the check (the queue is rendered when it holds
            this many).
        surrogate_min_fidelity: warn when the running Spearman correlation (at least ``fidelity_window // 4``
            pairs) falls below this.
        fidelity_window: pairs kept for the running correlation.
        seed: seed of the choice of captions rendered in surrogate mode.
    """

    __name__ = "clip_image_image"
    needs = ("clip", "stimuli", "renderer", "render_surrogate", "device")

    def __init__(self, renderer: str | Callable | None = None, render_kwargs: dict | None = None,
                 clip: CLIPScorer | str = "ViT-L-14-quickgelu", pretrained: str | None = "openai", stimuli=None,
                 device: str | None = None, cache_size: int = 16384, render_cache: RenderCache | None = None,
                 render_surrogate: RenderSurrogate | str | None = None, surrogate_render_fraction: float = 0.01,
                 surrogate_check_batch: int = 16, surrogate_min_fidelity: float = 0.5, fidelity_window: int = 512,
                 seed: int = 0):
        super().__init__(clip, pretrained, stimuli, device)
        self.cache = render_cache if render_cache is not None else RenderCache(cache_size)
        if not 0 <= surrogate_render_fraction <= 1:
            raise ValueError(f"surrogate_render_fraction must be in [0, 1], got {surrogate_render_fraction!r}")
        if isinstance(render_surrogate, str):
            render_surrogate = load_render_surrogate(render_surrogate, device=device)
        self.surrogate = render_surrogate
        if self.surrogate is not None:
            check_surrogate_clip(self.surrogate, self.scorer)
            self.surrogate.to(self.scorer.device)
        if renderer is None and self.surrogate is not None:
            renderer = surrogate_renderer(self.surrogate, device=device, **(render_kwargs or {}))
        elif renderer is None or isinstance(renderer, str):
            settings = RENDERER_PRESETS["renderer"]
            renderer = TextToImageRenderer(renderer or settings.pretrained, device=device, settings=settings,
                                           **(render_kwargs or {}))
        elif not callable(renderer):
            raise TypeError(f"renderer must be a callable prompts -> images or a pipeline name, got {type(renderer)}")
        if self.surrogate is not None and isinstance(renderer, TextToImageRenderer):
            check_surrogate_renderer(self.surrogate, renderer)
        self.renderer = renderer
        if isinstance(surrogate_check_batch, bool) or not isinstance(surrogate_check_batch, int) \
                or surrogate_check_batch < 1:
            raise ValueError(f"surrogate_check_batch must be an int >= 1, got {surrogate_check_batch!r}")
        self.surrogate_render_fraction = surrogate_render_fraction
        self.surrogate_check_batch = surrogate_check_batch
        self._check_queue: list[tuple[str, float, torch.Tensor]] = []  # (caption, surrogate reward, stimulus)
        self.surrogate_min_fidelity = surrogate_min_fidelity
        self.fidelity = FidelityWindow(fidelity_window)
        self.rng = np.random.default_rng(seed)
        self._warned = False
        self._calls: dict[str, float] = {}

    @property
    def cache_size(self) -> int:
        return self.cache.max_size

    def _key(self, caption: str) -> tuple[str, str, str]:
        if not hasattr(self, "_render_key"):
            self._render_key = renderer_key(self.renderer)
            self._clip_key = self.scorer.name or f"clip-{id(self.scorer)}"
        return caption, self._render_key, self._clip_key

    def rendered_embeddings(self, captions: list[str]) -> torch.Tensor:
        """CLIP image embeddings of the renderings of ``captions``: each distinct caption not in the cache is
        rendered once (in the renderer's batches)."""
        found = {c: self.cache.get(self._key(c)) for c in dict.fromkeys(captions)}
        missing = [c for c, e in found.items() if e is None]
        if missing:
            for c, e in zip(missing, self.scorer.encode_images(render_function(self.renderer)(missing))):
                found[c] = e
                self.cache.put(self._key(c), e)
        self._calls["rendered"] = self._calls.get("rendered", 0.0) + len(missing)
        return torch.stack([found[c] for c in captions])

    caption_embeddings = rendered_embeddings

    def score(self, captions: list[str], stimulus_embeds: torch.Tensor) -> torch.Tensor:
        self._calls = {}
        if self.surrogate is None:
            return super().score(captions, stimulus_embeds)
        with torch.no_grad():
            predicted = self.surrogate(text_embeddings(self.scorer, captions).to(self.scorer.device))
        values = (predicted.to(stimulus_embeds.device) * stimulus_embeds).sum(-1).float()
        first_rows: dict[str, int] = {}
        for i, c in enumerate(captions):
            first_rows.setdefault(c, i)
        first = list(first_rows.values())
        count = min(int(np.floor(self.surrogate_render_fraction * len(first) + self.rng.random())), len(first))
        for i in sorted(self.rng.choice(first, size=count, replace=False).tolist()) if count else []:
            self._check_queue.append((captions[i], float(values[i]), stimulus_embeds[i]))
        if len(self._check_queue) >= self.surrogate_check_batch:
            self.check_surrogate()
        return values

    def check_surrogate(self) -> None:
        """Render the queued captions and add their (surrogate, rendered) reward pairs to the running fidelity."""
        if not self._check_queue:
            return
        captions, predicted, stimuli = zip(*self._check_queue)
        self._check_queue = []
        stimuli = torch.stack(stimuli)
        rendered = self.rendered_embeddings(list(captions)).to(stimuli.device)
        self.fidelity.add(predicted, (rendered * stimuli).sum(-1).float().cpu())
        self._check_fidelity()

    def _check_fidelity(self) -> None:
        summary = self.fidelity.summary()
        enough = len(self.fidelity) >= max(8, self.fidelity.pairs.maxlen // 4)
        if enough and not self._warned and summary["spearman"] < self.surrogate_min_fidelity:
            self._warned = True
            warnings.warn(f"clip_image_image: the render surrogate's rewards agree poorly with rendered ones on the "
                          f"last {len(self.fidelity)} rendered samples (Spearman {summary['spearman']:.3f} < "
                          f"{self.surrogate_min_fidelity}); the policy's captions may have drifted from those it was "
                          "fitted on: refit it on renderings of recent samples", stacklevel=2)

    def log_values(self) -> dict[str, float]:
        """What the trainer logs beside the reward's mean: captions rendered in the last call, the render cache's
        size, and in surrogate mode the running agreement of surrogate and rendered rewards."""
        out = {"rendered": self._calls.get("rendered", 0.0), "render_cache": float(len(self.cache))}
        if self.surrogate is not None:
            out.update({f"surrogate_{k}": v for k, v in self.fidelity.summary().items()})
        return out
