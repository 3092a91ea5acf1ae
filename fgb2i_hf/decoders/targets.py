"""The feature targets the base methods' ridge decoders regress onto, extracted with the real models.

LDM base (Takagi & Nishimoto, yu-takagi/StableDiffusionReconstruction:codes/utils/img2feat_sd.py):

* ``z`` — the SD VAE latent of the stimulus: the image resized to ``image_size`` (320 px, Lanczos, as
  Takagi's code; not 512) in [-1, 1], ``vae.encode(x).latent_dist`` *sampled* (LDM's
  ``get_first_stage_encoding``) and multiplied by ``vae.config.scaling_factor`` (0.18215): 4 × 40 × 40.
  ``latent_sampling="mean"`` takes the posterior mean instead. The sample's noise is seeded per image
  (``seed``, nsd_id), so a target does not depend on batching or order.
* ``c`` — SD's CLIP text conditioning (the text encoder's last hidden state, 77 × 768, prompts padded to 77
  tokens) of each COCO caption of the image, averaged over the captions.

Brain-Diffuser base (ozcelikfu/brain-diffuser:scripts/cliptext_extract_features.py,
clipvision_extract_features.py; Versatile Diffusion's normalised embeddings as in diffusers'
``VersatileDiffusionDualGuidedPipeline._encode_text_prompt`` / ``_encode_image_prompt``):

* ``clip_text`` — per token ``text_projection(last_hidden_state) / ‖text_embeds‖``, 77 × 768, averaged over
  the image's captions;
* ``clip_vision`` — per token ``visual_projection(post_layernorm(last_hidden_state)) / ‖token 0‖`` of the
  image (resized to 512 px bilinear as Brain-Diffuser does, then VD's CLIP image processor), 257 × 768.

Images come as a uint8 array (N, H, W, 3) (anything sliceable by rows, e.g. an h5py dataset) or, with
``ids``, any object with ``get(list_of_ids) -> uint8 (n, H, W, 3)`` such as ``fgb2i_hf.data.NSDStimuli``.
``extract_targets`` writes a target array to a ``.npy`` file batch by batch and resumes after a kill.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import numpy as np
import torch
from numpy.lib.format import open_memmap
from PIL import Image
from tqdm.auto import tqdm
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from ..core import atomic_write_json, resolve_pretrained, save_npy_atomic

LDM_MODEL = "CompVis/stable-diffusion-v1-4"
VERSATILE_DIFFUSION_MODEL = "shi-labs/versatile-diffusion"
EXTRACTOR_CONFIG = "target_extractor.json"


def _image_batches(images, ids, batch_size):
    """Yield ``(uint8 (b, H, W, 3) array, keys)`` batches; keys are nsd_ids, or row numbers without ids."""
    n = len(ids) if ids is not None else len(images)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if ids is not None:
            batch_ids = [int(i) for i in ids[start:stop]]
            batch = images.get(batch_ids) if hasattr(images, "get") else np.stack([images[i] for i in batch_ids])
            keys = batch_ids
        else:
            batch, keys = images[start:stop], list(range(start, stop))
        batch = np.asarray(batch)
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {batch.dtype} {batch.shape}")
        yield batch, keys


def _resize(images: np.ndarray, size: int, resample) -> list[Image.Image]:
    return [Image.fromarray(im).convert("RGB").resize((size, size), resample=resample) for im in images]


def _mean_over_captions(encode, captions: Sequence[Sequence[str]], keys) -> torch.Tensor:
    """Encode every caption of every image in one batch and average per image."""
    flat, owner = [], []
    for row, (caps, key) in enumerate(zip(captions, keys)):
        caps = [c for c in caps if isinstance(c, str) and c.strip()]
        if not caps:
            raise ValueError(f"image {key} has no captions to encode")
        flat.extend(caps)
        owner.extend([row] * len(caps))
    embeddings = encode(flat).float()
    owner = torch.tensor(owner, device=embeddings.device)
    sums = torch.zeros((len(captions), *embeddings.shape[1:]), device=embeddings.device)
    sums.index_add_(0, owner, embeddings)
    counts = torch.bincount(owner, minlength=len(captions)).to(sums.dtype)
    return sums / counts.view(-1, *[1] * (sums.ndim - 1))


class TargetExtractor:
    """Common driver: ``target_names``, ``iter_batches``/``extract(name, ...)``, ``save_pretrained``.

    Subclasses say which targets come from images and which from captions, and how to encode a batch.
    """

    base: str = ""
    image_targets: tuple[str, ...] = ()
    text_targets: tuple[str, ...] = ()
    components: tuple[str, ...] = ()

    def __init__(self, device=None, dtype: torch.dtype = torch.float32, name_or_path: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype
        self.name_or_path = name_or_path
        for component in self.components:
            module = getattr(self, component)
            if isinstance(module, torch.nn.Module):
                module.to(self.device).eval().requires_grad_(False)
                if next(module.parameters()).dtype != dtype:
                    module.to(dtype)

    @property
    def target_names(self) -> tuple[str, ...]:
        return self.image_targets + self.text_targets

    def settings(self) -> dict:
        """Everything that changes the extracted values (written beside cached targets)."""
        return {"base": self.base, "model": self.name_or_path, "dtype": str(self.dtype).replace("torch.", "")}

    def _check_request(self, name, images=None, captions=None):
        if name not in self.target_names:
            raise ValueError(f"{type(self).__name__} extracts {list(self.target_names)}, not {name!r}")
        if name in self.image_targets and images is None:
            raise ValueError(f"target {name!r} is computed from images: pass images= (and ids= for NSDStimuli)")
        if name in self.text_targets and captions is None:
            raise ValueError(f"target {name!r} is computed from captions: pass captions= (a list per image)")

    @torch.no_grad()
    def iter_batches(self, name: str, *, images=None, ids=None, captions=None, batch_size: int = 16):
        """Yield ``(start, float32 array (b, *target_shape))`` batch by batch, in input order."""
        self._check_request(name, images, captions)
        if name in self.image_targets:
            start = 0
            for batch, keys in _image_batches(images, ids, batch_size):
                yield start, self.encode_images(name, batch, keys).float().cpu().numpy()
                start += len(batch)
        else:
            keys = list(ids) if ids is not None else list(range(len(captions)))
            for start in range(0, len(captions), batch_size):
                stop = min(start + batch_size, len(captions))
                values = self.encode_captions(name, captions[start:stop], keys[start:stop])
                yield start, values.float().cpu().numpy()

    def extract(self, name: str, *, images=None, ids=None, captions=None, batch_size: int = 16,
                progress: bool = True) -> np.ndarray:
        """All targets ``name`` in memory: ``(N, *target_shape)`` float32."""
        self._check_request(name, images, captions)
        n = len(ids) if ids is not None else len(images if name in self.image_targets else captions)
        out = None
        with tqdm(total=n, desc=f"{self.base} {name}", disable=not progress) as bar:
            for start, values in self.iter_batches(name, images=images, ids=ids, captions=captions,
                                                   batch_size=batch_size):
                if out is None:
                    out = np.empty((n, *values.shape[1:]), np.float32)
                out[start : start + len(values)] = values
                bar.update(len(values))
        return out

    def extraction_kwargs(self) -> dict:
        """The keyword arguments besides the components (image size, sampling, ...), saved beside them."""
        return {}

    def save_pretrained(self, save_directory: str):
        """Save the components in the diffusers layout (one subfolder each) and the extraction settings
        (``target_extractor.json``); ``from_pretrained(save_directory)`` restores both."""
        for component in self.components:
            getattr(self, component).save_pretrained(os.path.join(save_directory, component))
        atomic_write_json(os.path.join(save_directory, EXTRACTOR_CONFIG),
                          {"base": self.base, **self.extraction_kwargs()}, indent=1)

    @staticmethod
    def _saved_kwargs(path: str, kwargs: dict) -> dict:
        """Settings saved by ``save_pretrained`` (if any), overridden by the caller's keyword arguments."""
        saved = _read_json(os.path.join(path, EXTRACTOR_CONFIG)) if os.path.isdir(path) else None
        saved = {k: v for k, v in (saved or {}).items() if k != "base"}
        return {**saved, **kwargs}

    # subclasses implement these
    def encode_images(self, name: str, images: np.ndarray, keys: Sequence[int]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no image targets")

    def encode_captions(self, name: str, captions: Sequence[Sequence[str]], keys=None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no caption targets")


class LDMTargetExtractor(TargetExtractor):
    """Takagi & Nishimoto's ``z`` (SD VAE latent) and ``c`` (SD CLIP text conditioning, mean over captions)."""

    base = "ldm"
    image_targets = ("z",)
    text_targets = ("c",)
    components = ("vae", "tokenizer", "text_encoder")

    def __init__(self, vae, tokenizer, text_encoder, *, image_size: int = 320, latent_sampling: str = "sample",
                 seed: int = 42, device=None, dtype: torch.dtype = torch.float32, name_or_path: str | None = None):
        if latent_sampling not in ("sample", "mean"):
            raise ValueError(f"latent_sampling must be 'sample' (Takagi) or 'mean', got {latent_sampling!r}")
        self.vae, self.tokenizer, self.text_encoder = vae, tokenizer, text_encoder
        self.image_size, self.latent_sampling, self.seed = int(image_size), latent_sampling, int(seed)
        super().__init__(device, dtype, name_or_path)

    @classmethod
    def from_pretrained(cls, name_or_path: str = LDM_MODEL, *, revision: str | None = None, **kwargs):
        # imported here: diffusers is a heavy import, needed only on this path
        from diffusers import AutoencoderKL

        path = resolve_pretrained(name_or_path)
        return cls(AutoencoderKL.from_pretrained(path, subfolder="vae", revision=revision),
                   CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", revision=revision),
                   CLIPTextModel.from_pretrained(path, subfolder="text_encoder", revision=revision),
                   name_or_path=name_or_path, **cls._saved_kwargs(path, kwargs))

    def extraction_kwargs(self) -> dict:
        return {"image_size": self.image_size, "latent_sampling": self.latent_sampling, "seed": self.seed}

    def settings(self) -> dict:
        return {**super().settings(), **self.extraction_kwargs()}

    def encode_images(self, name, images, keys):
        pil = _resize(images, self.image_size, Image.LANCZOS)
        x = torch.from_numpy(np.stack([np.asarray(im) for im in pil])).permute(0, 3, 1, 2)
        x = (x.to(self.device, self.dtype) / 255.0) * 2.0 - 1.0
        posterior = self.vae.encode(x).latent_dist
        latents = posterior.mean
        if self.latent_sampling == "sample":
            noise = torch.stack([torch.randn(latents.shape[1:], generator=self._generator(k)) for k in keys])
            latents = latents + posterior.std * noise.to(latents.device, latents.dtype)
        return latents * self.vae.config.scaling_factor

    def _generator(self, key: int) -> torch.Generator:
        seed = int(np.random.SeedSequence([self.seed, int(key)]).generate_state(1, np.uint64)[0])
        return torch.Generator().manual_seed(seed)

    def encode_captions(self, name, captions, keys=None):
        def encode(texts):
            tokens = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt")
            return self.text_encoder(tokens.input_ids.to(self.device)).last_hidden_state

        return _mean_over_captions(encode, captions, keys if keys is not None else range(len(captions)))


class BrainDiffuserTargetExtractor(TargetExtractor):
    """Brain-Diffuser's ``clip_text`` and ``clip_vision``: Versatile Diffusion's normalised CLIP embeddings."""

    base = "brain_diffuser"
    image_targets = ("clip_vision",)
    text_targets = ("clip_text",)
    components = ("tokenizer", "text_encoder", "image_feature_extractor", "image_encoder")

    def __init__(self, tokenizer, text_encoder, image_feature_extractor, image_encoder, *, image_size: int = 512,
                 device=None, dtype: torch.dtype = torch.float32, name_or_path: str | None = None):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.image_feature_extractor, self.image_encoder = image_feature_extractor, image_encoder
        self.image_size = int(image_size)
        super().__init__(device, dtype, name_or_path)

    @classmethod
    def from_pretrained(cls, name_or_path: str = VERSATILE_DIFFUSION_MODEL, *, revision: str | None = None,
                        **kwargs):
        path = resolve_pretrained(name_or_path)
        return cls(CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", revision=revision),
                   CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder", revision=revision),
                   CLIPImageProcessor.from_pretrained(path, subfolder="image_feature_extractor", revision=revision),
                   CLIPVisionModelWithProjection.from_pretrained(path, subfolder="image_encoder", revision=revision),
                   name_or_path=name_or_path, **cls._saved_kwargs(path, kwargs))

    def extraction_kwargs(self) -> dict:
        return {"image_size": self.image_size}

    def settings(self) -> dict:
        return {**super().settings(), **self.extraction_kwargs()}

    def encode_images(self, name, images, keys):
        pil = _resize(images, self.image_size, Image.BILINEAR)
        pixels = self.image_feature_extractor(images=pil, return_tensors="pt").pixel_values
        out = self.image_encoder(pixels.to(self.device, self.dtype))
        embeds = self.image_encoder.visual_projection(self.image_encoder.vision_model.post_layernorm(
            out.last_hidden_state))
        return embeds / embeds[:, :1].norm(dim=-1, keepdim=True)

    def encode_captions(self, name, captions, keys=None):
        def encode(texts):
            tokens = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt")
            out = self.text_encoder(tokens.input_ids.to(self.device))
            embeds = self.text_encoder.text_projection(out.last_hidden_state)
            return embeds / out.text_embeds.unsqueeze(1).norm(dim=-1, keepdim=True)

        return _mean_over_captions(encode, captions, keys if keys is not None else range(len(captions)))


def extract_targets(extractor: TargetExtractor, name: str, path: str, *, ids: Sequence[int], images=None,
                    captions=None, batch_size: int = 16, progress: bool = True) -> np.ndarray:
    """Targets ``name`` for ``ids`` as a read-only memmap of the ``.npy`` file ``path``, computed if needed.

    Resumable: values go to ``<path>.partial.npy`` batch by batch, with a per-batch done mask; a restarted run
    with the same ids and extractor settings skips finished batches, and the file is renamed to ``path`` only
    when complete. ``<path>.json`` records the settings and the ids; a mismatch starts over.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) == 0:
        raise ValueError(f"ids must be a non-empty 1-D list of image ids, got shape {ids.shape}")
    if captions is not None and len(captions) != len(ids):
        raise ValueError(f"{len(captions)} caption lists for {len(ids)} ids: give one list per id, in order")
    meta = {"target": name, "settings": extractor.settings(), "batch_size": int(batch_size), "n": int(len(ids)),
            "ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest()}
    meta_path, partial, done_path = f"{path}.json", f"{path}.partial.npy", f"{path}.done.npy"
    if os.path.exists(path) and _read_json(meta_path) == meta:
        return np.load(path, mmap_mode="r")
    if _read_json(meta_path) != meta:  # other ids or settings: start over
        for stale in (path, partial, done_path):
            if os.path.exists(stale):
                os.remove(stale)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write_json(meta_path, meta, indent=1)
    batches = [slice(start, min(start + batch_size, len(ids))) for start in range(0, len(ids), batch_size)]
    done = np.load(done_path) if os.path.exists(done_path) else np.zeros(len(batches), bool)
    out = open_memmap(partial, mode="r+") if os.path.exists(partial) else None
    already = sum(rows.stop - rows.start for rows, finished in zip(batches, done) if finished)
    with tqdm(total=len(ids), initial=already, desc=f"{extractor.base} {name}", disable=not progress) as bar:
        for b, rows in enumerate(batches):
            if done[b]:
                continue
            values = np.concatenate([v for _, v in extractor.iter_batches(
                name, images=images, ids=ids[rows], captions=None if captions is None else captions[rows],
                batch_size=batch_size)])
            if out is None:
                out = open_memmap(partial, mode="w+", dtype=np.float32, shape=(len(ids), *values.shape[1:]))
            out[rows] = values
            out.flush()
            done[b] = True
            save_npy_atomic(done_path, done)
            bar.update(len(values))
    del out
    # Not a core writer: the partial file is filled batch by batch across restarts (resumable), then renamed.
    os.replace(partial, path)
    os.remove(done_path)
    return np.load(path, mmap_mode="r")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None

