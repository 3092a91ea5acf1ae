"""Fit the image-image reward's render surrogate once: what ``recipes/fit_reward_surrogate.py`` does.

Renders the training captions (each training image's COCO-like and fine captions, shuffled with the fit's seed,
the first ``max_captions``) with the chosen renderer, embeds renderings and captions with the reward's CLIP model,
fits :class:`~fgb2i_hf.models.RenderSurrogate` (``fgb2i_hf.rewards.fit_render_surrogate``; a tenth of the images
held out) and saves it to ``output_dir`` (safetensors + ``config.json`` recording the renderer's identity, the CLIP
model's, the fit's report and the library versions). The RL run loads it with ``image_reward: surrogate`` and
``surrogate_path: <output_dir>``, and refuses it for another renderer or CLIP. The folder
also holds the ``data_contract.json`` of the rows whose captions were rendered (training images only).

Rendering is the cost (one render per caption, once); it is kept in ``<output_dir>.renders.safetensors`` every
``save_every`` captions, so a killed fit resumes where it stopped (the file records renderer, CLIP and the captions
it holds, and is used only when all three match).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from ..core import (
    atomic_write_json,
    loading_config_field,
    publish_folder,
    save_safetensors_atomic,
    scratch_folder,
    versions,
)
from ..data import NSDStimuli, load_nsd
from ..data.layout import subject_list
from ..rewards import clip_identity, fit_render_surrogate
from .render_args import RENDERER_KINDS, RenderArguments, build_renderer, load_clip


@dataclass
class SurrogateScriptArguments(RenderArguments):
    nsd_root: str = field(default=None, metadata={"help": "NSD (or SimNSD) root in the raw layout."})
    subjects: list[str] = field(default_factory=lambda: ["subj01", "subj02", "subj05", "subj07"],
                                metadata={"help": "Subjects whose training images' captions are rendered."})
    sessions: int | None = field(default=None, metadata={"help": "Use the first N sessions."})
    fine_captions: str | None = field(default=None, metadata={"help": "Fine-captions JSONL (default: the builder's)."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder."})
    renderer_kind: str = field(default="renderer", metadata={
        "help": f"The renderer the surrogate stands in for: one of {RENDERER_KINDS} (with the render_* overrides)."})
    caption_columns: list[str] = field(default_factory=lambda: ["fine_captions", "captions"],
                                       metadata={"help": "Caption columns of the training rows that are rendered."})
    max_captions: int | None = field(default=None, metadata={"help": "Render and fit on at most N captions."})
    output_dir: str = field(default="outputs/render_surrogate", metadata={"help": "The surrogate's folder."})
    device: str | None = field(default=None, metadata={"help": "Where to render and embed (default: cuda if any)."})
    save_every: int = field(default=1024, metadata={"help": "Keep the renderings every N captions (resume)."})

    def __post_init__(self):
        self.subjects = subject_list(self.subjects)
        self.check_render_arguments()
        if self.renderer_kind not in RENDERER_KINDS:
            raise ValueError(f"renderer_kind must be one of {RENDERER_KINDS}, got {self.renderer_kind!r}")
        if isinstance(self.caption_columns, str):
            self.caption_columns = [self.caption_columns]
        bad = [c for c in self.caption_columns if c not in ("captions", "fine_captions")]
        if bad or not self.caption_columns:
            raise ValueError(f"caption_columns must name 'captions' and/or 'fine_captions', got {self.caption_columns!r}")
        for name in ("sessions", "max_captions", "save_every"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be >= 1, got {value!r}")


def training_captions(train, columns: list[str], seed: int, limit: int | None = None) -> tuple[list[str], list[int]]:
    """Distinct (caption, nsd_id) pairs of the training images (each image once, whatever the subjects and trials),
    shuffled with ``seed``; the first ``limit``."""
    pairs: dict[str, int] = {}
    seen: set[int] = set()
    ids = train["nsd_id"]
    by_column = {c: train[c] for c in columns}
    for row, nsd_id in enumerate(ids):
        if int(nsd_id) in seen:
            continue
        seen.add(int(nsd_id))
        for column in columns:
            for caption in by_column[column][row]:
                caption = caption.strip()
                if caption:
                    pairs.setdefault(caption, int(nsd_id))
    order = np.random.default_rng(seed).permutation(len(pairs))[:limit]
    items = list(pairs.items())
    return [items[i][0] for i in order], [items[i][1] for i in order]


def _renders_file(output_dir: str) -> str:
    return os.path.abspath(output_dir).rstrip(os.sep) + ".renders.safetensors"


def _captions_sha(captions: list[str]) -> str:
    return hashlib.sha256(json.dumps(captions).encode()).hexdigest()


def render_embeddings(captions: list[str], renderer, scorer, path: str | None = None, save_every: int = 1024,
                      progress: bool = True):
    """CLIP image embeddings of the renderings of ``captions`` (N, D), kept in ``path`` every ``save_every``
    captions and resumed from it when it holds a prefix of these captions by this renderer and CLIP."""
    identity = {"renderer_key": renderer.key, "clip_sha256": clip_identity(scorer)["weights_sha256"]}
    done = []
    if path and os.path.exists(path):
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            n = int(meta.get("n", 0))
            if all(meta.get(k) == v for k, v in identity.items()) and meta.get("captions_sha256") == _captions_sha(captions[:n]):
                done = list(f.get_tensor("embeddings"))
    bar = tqdm(total=len(captions), initial=len(done), desc="render", disable=not progress)
    batch = max(renderer.settings.batch_size, 1) if hasattr(renderer, "settings") else 64
    since_save = 0
    while len(done) < len(captions):
        chunk = captions[len(done) : len(done) + batch]
        images = renderer.render(chunk) if hasattr(renderer, "render") else renderer(chunk)
        done.extend(scorer.encode_images(images).cpu())
        bar.update(len(chunk))
        since_save += len(chunk)
        if path and (since_save >= save_every or len(done) == len(captions)):
            since_save = 0
            save_safetensors_atomic({"embeddings": torch.stack(done)}, path,
                                    metadata={**identity, "n": str(len(done)),
                                              "captions_sha256": _captions_sha(captions[: len(done)])})
    bar.close()
    return torch.stack(done)


def run_fit_reward_surrogate(script_args: SurrogateScriptArguments, fit_config) -> dict:
    """Render the training captions, fit the surrogate, save it to ``output_dir``; returns the fit's report."""
    if not script_args.nsd_root:
        raise ValueError("nsd_root is required: the NSD (or SimNSD) root in NSD's raw layout")
    device = torch.device(script_args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    options = {k: v for k, v in dict(sessions=script_args.sessions, fine_captions=script_args.fine_captions).items()
               if v is not None}
    data = load_nsd(script_args.nsd_root, subjects=script_args.subjects, cache_dir=script_args.cache_dir, **options)
    train = data["train"]  # training images only: never a validation or test image (data_contract.json says which)
    captions, nsd_ids = training_captions(train, script_args.caption_columns, fit_config.seed, script_args.max_captions)
    scorer = load_clip(script_args, device)
    renderer = build_renderer(script_args, script_args.renderer_kind, device)

    start = time.perf_counter()
    image = render_embeddings(captions, renderer, scorer, _renders_file(script_args.output_dir), script_args.save_every)
    render_seconds = time.perf_counter() - start
    text = scorer.encode_text(captions)
    unique_ids = sorted(set(nsd_ids))
    stimuli = NSDStimuli(script_args.nsd_root)
    with loading_config_field("nsd_root", script_args.nsd_root):
        stim = scorer.encode_images(np.stack([stimuli[i] for i in unique_ids]))
    row_of = {n: i for i, n in enumerate(unique_ids)}
    stimulus_embeds = stim[[row_of[n] for n in nsd_ids]]

    model, report = fit_render_surrogate(text.cpu(), image.cpu(), fit_config, renderer.identity(),
                                         clip_identity(scorer), stimulus_embeds.cpu(), groups=np.asarray(nsd_ids))
    report.update({"images": len(unique_ids), "caption_columns": script_args.caption_columns,
                   "render_seconds": render_seconds, "device": str(device), "renderer_dtype": str(renderer.dtype),
                   "versions": versions()})
    model.config.fit = report
    scratch = scratch_folder(script_args.output_dir)
    model.save_pretrained(scratch)
    atomic_write_json(os.path.join(scratch, "fit_report.json"), report)
    data.data_contract.save(scratch)
    publish_folder(scratch, script_args.output_dir)
    return report
