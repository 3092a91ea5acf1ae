"""Detail enhancement (FgB2I stage 1): a vision-language model writes one fine-grained caption per stimulus.

``ImageCaptioner`` wraps any transformers image-text-to-text model (``AutoModelForImageTextToText`` +
``AutoProcessor``; LLaVA-1.5 by default) with a prompt and generation settings; ``enhance_captions`` runs it
over NSD stimuli read by ``nsd_id`` and appends the captions to the fine-captions JSONL cache (see
:mod:`fgb2i_hf.captions.cache`), resuming where an earlier run stopped.

LLaVA-1.5 in transformers (docs/source/en/model_doc/llava.md): the prompt is ``"USER: <image>\\n{prompt}
ASSISTANT:"`` (what llava-hf's chat template renders), batches are padded on the left, the processor expands
``<image>`` into one token per image patch, and greedy decoding makes the captions deterministic.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

from ..core import resolve_pretrained
from .cache import CaptionCache, settings_hash
from .length import CLIP_CONTEXT_LENGTH, truncate_to_clip_tokens

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"
# Ours (the paper does not publish its prompt): ask for the details FgB2I wants, briefly enough for 77 CLIP tokens.
DEFAULT_PROMPT = ("Describe this image in two or three sentences: name the objects, their colors and sizes, "
                  "what they are doing and where they are.")
LLAVA_PROMPT_FORMAT = "USER: <image>\n{prompt} ASSISTANT:"
DEFAULT_GENERATION_KWARGS = {"max_new_tokens": 96, "do_sample": False, "num_beams": 1}


class NotAVisionLanguageModelError(ValueError):
    """The model asked for cannot caption images (transformers has no image-text-to-text class for it)."""


def _resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"dtype must be 'auto' or a torch dtype name such as 'float16', got {dtype!r}")
    return resolved


class ImageCaptioner:
    """One vision-language model, its processor, a prompt and generation settings.

    Args:
        model: an image-text-to-text model (e.g. ``LlavaForConditionalGeneration``), in eval mode.
        processor: its processor (image processor + tokenizer; padding is set to the left).
        model_id: the name recorded in each caption record (e.g. ``llava-hf/llava-1.5-7b-hf``).
        revision: the model revision recorded in each record.
        prompt: the instruction; wrapped by the processor's chat template when it has one (and
            ``use_chat_template``), else in LLaVA-1.5's ``"USER: <image>\\n{prompt} ASSISTANT:"``.
        generation_kwargs: ``generate`` settings merged over ``DEFAULT_GENERATION_KWARGS`` (greedy, 96 new tokens).
        max_clip_tokens: captions are cut to this many CLIP tokens at a sentence end (None: no limit).
    """

    def __init__(self, model, processor, model_id: str, revision: str | None = "main", prompt: str = DEFAULT_PROMPT,
                 generation_kwargs: dict | None = None, max_clip_tokens: int | None = CLIP_CONTEXT_LENGTH,
                 use_chat_template: bool = True):
        if not hasattr(processor, "image_processor"):
            raise NotAVisionLanguageModelError(
                f"{model_id}: its processor ({type(processor).__name__}) has no image processor, so it cannot "
                "take images; expected a vision-language model's processor (e.g. LlavaProcessor)")
        if not prompt or not prompt.strip():
            raise ValueError("prompt must be a non-empty instruction, e.g. 'Describe this image in detail.'")
        self.model = model.eval()
        self.processor = processor
        self.model_id = model_id
        self.revision = revision
        self.prompt = prompt
        self.generation_kwargs = {**DEFAULT_GENERATION_KWARGS, **(generation_kwargs or {})}
        self.max_clip_tokens = max_clip_tokens
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # generation continues from the last position of every row
            if tokenizer.pad_token is None and tokenizer.eos_token is not None:
                tokenizer.pad_token = tokenizer.eos_token  # padded positions are masked by the attention mask
        self.prompt_text = self._render_prompt(prompt, use_chat_template)
        self.settings_hash = settings_hash(model_id, revision, self.prompt_text, self.generation_kwargs, max_clip_tokens)

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_id: str = DEFAULT_MODEL, revision: str | None = "main", device=None, dtype=None,
                        **kwargs) -> "ImageCaptioner":
        """Load a model and processor by Hub name, local folder or ``simnsd/<component>``.

        ``device``: ``"auto"``/None (CUDA if available, else CPU) or a torch device; ``dtype``: ``"auto"``/None
        (float16 on CUDA, float32 on CPU) or a dtype (name). Other keyword arguments go to ``__init__``.
        """
        path = resolve_pretrained(model_id)
        try:
            config = AutoConfig.from_pretrained(path, revision=revision)
        except (OSError, ValueError) as e:
            raise NotAVisionLanguageModelError(
                f"{model_id}: cannot load a transformers model config from it ({type(e).__name__}: {e}); expected "
                f"a vision-language model such as {DEFAULT_MODEL}") from None
        if type(config) not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
            archs = ", ".join(getattr(config, "architectures", None) or []) or "no architectures listed"
            raise NotAVisionLanguageModelError(
                f"{model_id}: is a {config.model_type!r} model ({archs}), not a vision-language model: transformers' "
                f"AutoModelForImageTextToText has no class for it. Pass an image-text-to-text model such as "
                f"{DEFAULT_MODEL}")
        device = _resolve_device(device)
        torch_dtype = _resolve_dtype(dtype, device)
        load_kwargs = {"revision": revision, "dtype": torch_dtype}
        if device.type == "cuda":
            load_kwargs["device_map"] = {"": str(device)}
        model = AutoModelForImageTextToText.from_pretrained(path, **load_kwargs)
        if device.type != "cuda":
            model = model.to(device)
        processor = AutoProcessor.from_pretrained(path, revision=revision)
        return cls(model, processor, model_id=model_id, revision=revision, **kwargs)

    def _render_prompt(self, prompt: str, use_chat_template: bool) -> str:
        if use_chat_template and getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        image_token = getattr(self.processor, "image_token", None) or "<image>"
        return LLAVA_PROMPT_FORMAT.replace("<image>", image_token).format(prompt=prompt)

    # -- captioning ---------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def prepare(self, images) -> dict:
        """uint8 images (N, H, W, 3) (array or list of arrays / PIL images) -> model inputs (on CPU)."""
        pil = [im.convert("RGB") if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, np.uint8))
               for im in images]
        return self.processor(images=pil, text=[self.prompt_text] * len(pil), padding=True, return_tensors="pt")

    @torch.no_grad()
    def generate(self, inputs) -> list[str]:
        """Model inputs from :meth:`prepare` -> decoded, whitespace-normalised captions (not length-limited)."""
        inputs = inputs.to(self.device, self.dtype)
        kwargs = dict(self.generation_kwargs)
        tokenizer = getattr(self.processor, "tokenizer", None)
        if "pad_token_id" not in kwargs and tokenizer is not None:
            kwargs["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        out = self.model.generate(**inputs, **kwargs)
        if not getattr(self.model.config, "is_encoder_decoder", False):
            out = out[:, inputs["input_ids"].shape[1]:]
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]

    def limit(self, caption: str) -> tuple[str, bool]:
        """Cut to ``max_clip_tokens`` CLIP tokens at a sentence end; ``(caption, truncated)``."""
        if self.max_clip_tokens is None:
            return caption, False
        return truncate_to_clip_tokens(caption, self.max_clip_tokens)

    def caption(self, images) -> list[tuple[str, bool]]:
        """uint8 images (N, H, W, 3) -> ``[(caption, truncated), ...]``."""
        return [self.limit(c) for c in self.generate(self.prepare(images))]

    def record(self, nsd_id: int, caption: str, truncated: bool) -> dict:
        """The JSONL record of one caption (the interface the NSD builder reads)."""
        return {"nsd_id": int(nsd_id), "caption": caption, "model": self.model_id, "revision": self.revision,
                "settings_hash": self.settings_hash, "truncated": bool(truncated)}


@dataclass
class EnhanceSummary:
    """What one :func:`enhance_captions` run did."""

    cache_path: str
    settings_hash: str
    requested: int = 0
    skipped: int = 0  # already in the cache with these settings
    done: int = 0  # captioned and written by this run
    truncated: int = 0  # of ``done``, cut to the CLIP token limit
    empty: int = 0  # of ``done``, the model returned no text
    failed: dict[int, str] = field(default_factory=dict)  # nsd_id -> why (image unreadable, ...)
    dropped_lines: int = 0  # torn or corrupt lines found in the cache and removed
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        lines = [f"fine captions -> {self.cache_path} (settings {self.settings_hash})",
                 f"  requested {self.requested}: done {self.done}, skipped {self.skipped} (already cached), "
                 f"failed {len(self.failed)}",
                 f"  truncated to the CLIP limit: {self.truncated} of {self.done}"
                 + (f"; empty captions: {self.empty}" if self.empty else ""),
                 f"  {self.seconds:.1f} s, {self.images_per_second:.2f} images/s"]
        if self.dropped_lines:
            lines.append(f"  dropped {self.dropped_lines} torn/corrupt cache line(s); their images were captioned again")
        for nsd_id, why in list(self.failed.items())[:10]:
            lines.append(f"  failed nsd_id {nsd_id}: {why}")
        if len(self.failed) > 10:
            lines.append(f"  ... and {len(self.failed) - 10} more failures")
        return "\n".join(lines)


def check_ids_in_stimuli(nsd_ids: Sequence[int], stimuli) -> np.ndarray:
    """Unique sorted int ids, or a ValueError naming the ids that ``stimuli`` (imgBrick) does not hold."""
    ids = np.asarray(list(nsd_ids), dtype=np.int64).reshape(-1)
    n = len(stimuli)
    bad = ids[(ids < 0) | (ids >= n)]
    if bad.size:
        where = getattr(stimuli, "path", type(stimuli).__name__)
        raise ValueError(f"{where}: nsd_id {sorted(set(bad.tolist()))[:10]} not in imgBrick ({len(set(bad.tolist()))} "
                         f"id(s)); it holds {n} images, ids 0..{n - 1}")
    return np.unique(ids)


def _read_batch(stimuli, ids: list[int]) -> tuple[list[int], list[np.ndarray], dict[int, str]]:
    """Read a batch; on failure, read image by image so one unreadable image fails alone."""
    try:
        images = np.asarray(stimuli.get(ids))
        return list(ids), [_check_image(images[i], nsd_id) for i, nsd_id in enumerate(ids)], {}
    except Exception:  # noqa: BLE001 - h5py raises OSError/KeyError/...; isolate the culprit below
        pass
    ok, images, failed = [], [], {}
    for nsd_id in ids:
        try:
            images.append(_check_image(np.asarray(stimuli.get([nsd_id]))[0], nsd_id))
            ok.append(nsd_id)
        except Exception as e:  # noqa: BLE001
            failed[nsd_id] = f"unreadable image ({type(e).__name__}: {e})"
    return ok, images, failed


def _check_image(image: np.ndarray, nsd_id: int) -> np.ndarray:
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image {nsd_id} has shape {image.shape} and dtype {image.dtype}; expected uint8 (H, W, 3)")
    return image


def enhance_captions(captioner: ImageCaptioner, stimuli, nsd_ids: Sequence[int], cache_path: str,
                     batch_size: int = 16, allow_mixed_settings: bool = False, progress: bool = True,
                     prefetch: bool = True) -> EnhanceSummary:
    """Caption the stimuli ``nsd_ids`` into ``cache_path``, skipping ids already captioned with these settings.

    Args:
        captioner: the model, prompt and settings.
        stimuli: the images by id: ``len(stimuli)`` and ``stimuli.get(ids) -> uint8 (N, H, W, 3)``
            (``fgb2i_hf.data.NSDStimuli``, or anything with that interface).
        nsd_ids: 0-based 73k ids to caption (repeats are captioned once); all must be in ``stimuli``.
        cache_path: the fine-captions JSONL; created if missing, appended to otherwise.
        batch_size: images per ``generate`` call; a kill loses at most this many captions.
        allow_mixed_settings: add to a cache that holds captions of other settings instead of refusing.
        progress: show a progress bar with the ETA.
        prefetch: read and preprocess the next batch in a background thread while the model generates.
    Returns:
        an :class:`EnhanceSummary` (done, skipped, failed, truncated, ...). Unreadable images are reported in
        ``failed`` and left out of the cache, so a rerun tries them again.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = check_ids_in_stimuli(nsd_ids, stimuli)
    start = time.perf_counter()
    summary = EnhanceSummary(cache_path=str(cache_path), settings_hash=captioner.settings_hash, requested=len(ids))
    with CaptionCache.open(cache_path, captioner.settings_hash, allow_mixed_settings) as cache:
        summary.dropped_lines = len(cache.scan.bad_lines)
        todo = [int(i) for i in ids if int(i) not in cache.done]
        summary.skipped = len(ids) - len(todo)
        batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]

        def load(batch):
            ok, images, failed = _read_batch(stimuli, batch)
            return ok, (captioner.prepare(images) if ok else None), failed

        bar = tqdm(total=len(todo), unit="img", desc="captioning", disable=not progress, dynamic_ncols=True)
        pool = ThreadPoolExecutor(max_workers=1) if prefetch else None
        try:
            pending = pool.submit(load, batches[0]) if (pool and batches) else None
            for b, batch in enumerate(batches):
                ok, inputs, failed = pending.result() if pool else load(batch)
                if pool and b + 1 < len(batches):
                    pending = pool.submit(load, batches[b + 1])
                summary.failed.update(failed)
                if ok:
                    results = [captioner.limit(c) for c in captioner.generate(inputs)]
                    cache.append([captioner.record(i, c, t) for i, (c, t) in zip(ok, results)])
                    summary.done += len(ok)
                    summary.truncated += sum(t for _, t in results)
                    summary.empty += sum(not c for c, _ in results)
                bar.update(len(batch))
                bar.set_postfix(truncated=summary.truncated, failed=len(summary.failed), refresh=False)
        finally:
            bar.close()
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)
    summary.seconds = time.perf_counter() - start
    if summary.failed:
        logger.warning("%d image(s) could not be captioned (first: %s)", len(summary.failed),
                       next(iter(summary.failed.items())))
    return summary
