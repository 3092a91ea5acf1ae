"""Measure a SimNSD world as shipped (float16 weights loaded by name) on a SimNSD's test images, and draw it.

``evaluate_world(nsd_root)`` returns the figures ``docs/world.md`` reports: CLIP image -> caption retrieval
(top-1 / top-5 against chance), GPT-2 held-out perplexity, the diffusion model's background accuracy and CLIP
two-way identification, and the LDM base's ridge correlations. ``retrieval_figure`` draws test images with the
captions the CLIP ranks first. ``recipes/evaluate_world.py`` runs both.
"""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import AutoTokenizer, GPT2LMHeadModel

from ...clip import CLIPScorer
from ...core import resolve_pretrained, save_png_atomic
from .clip import retrieval
from .data import load_world_data
from .diffusion import evaluate_diffusion
from .gpt2 import perplexity


def evaluate_world(nsd_root: str, cache_dir: str | None = None, prefix: str = "simnsd/",
                   diffusion_images: int = 100, seed: int = 0, num_inference_steps: int = 25) -> dict:
    """Figures of the world components ``<prefix>clip``, ``gpt2``, ``diffusion``, ``ldm_base`` on the test split.

    ``prefix``: ``"simnsd/"`` (the shipped world) or a folder holding the component folders.
    """
    # imported here: diffusers is a heavy import, needed only on this path
    from diffusers import DiffusionPipeline

    def path(component):
        return resolve_pretrained(prefix + component) if prefix == "simnsd/" else os.path.join(prefix, component)

    test = load_world_data(nsd_root, cache_dir=cache_dir).test
    scorer = CLIPScorer.from_pretrained(path("clip"))
    out = {"clip": {"coco_captions": retrieval(scorer, test.images, test.captions),
                    "fine_captions": retrieval(scorer, test.images, test.fine_captions)}}
    model = GPT2LMHeadModel.from_pretrained(path("gpt2")).eval()
    tokenizer = AutoTokenizer.from_pretrained(path("gpt2"))
    fine = [c for caps in test.fine_captions for c in caps]
    out["gpt2"] = {"test_perplexity": perplexity(model, tokenizer, test.all_captions(fine=True)),
                   "test_perplexity_coco_captions": perplexity(model, tokenizer, test.all_captions(fine=False)),
                   "test_perplexity_fine_captions": perplexity(model, tokenizer, fine),
                   "vocab_size": len(tokenizer)}
    pipe = DiffusionPipeline.from_pretrained(path("diffusion"))
    out["diffusion"] = evaluate_diffusion(pipe, test, clip_scorer=scorer, n=diffusion_images, seed=seed,
                                          num_inference_steps=num_inference_steps)
    with open(os.path.join(path("ldm_base"), "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    # fit_decoders scores its decoders on the validation split (the test split is read by final evaluation only)
    out["ldm_base"] = {subject: {target: {"validation_column_r": round(m["validation"]["column_r"], 4),
                                          "validation_image_r": round(m["validation"]["image_r"], 4)}
                                 for target, m in by_target.items()} for subject, by_target in metrics.items()}
    return out


@torch.no_grad()
def retrieval_figure(scorer, split, path: str, n: int = 6, k: int = 3, fine: bool = True) -> str:
    """A PNG: ``n`` test images, each with the ``k`` captions (of all the split's captions) the CLIP ranks
    highest; the image's own captions are marked ``*``. Returns ``path``."""
    captions = split.fine_captions if fine else split.captions
    owner = np.array([i for i, caps in enumerate(captions) for _ in caps])
    texts = [c for caps in captions for c in caps]
    sims = (scorer.encode_images(split.images[:n]) @ scorer.encode_text(texts).T).cpu().numpy()
    size, width, line_h = 96, 640, 12
    rows_h = size + 8
    canvas = Image.new("RGB", (width, n * rows_h + 18), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), f"simnsd/clip: top-{k} of {len(texts)} test captions (* = the image's own)", fill=(0, 0, 0))
    for r in range(n):
        y = 18 + r * rows_h
        canvas.paste(Image.fromarray(split.images[r]).resize((size, size), Image.NEAREST), (4, y))
        lines = []
        for rank, j in enumerate(np.argsort(-sims[r])[:k]):
            mark = "*" if owner[j] == r else " "
            wrapped = textwrap.wrap(f"{rank + 1}{mark} {sims[r, j]:.2f}  {texts[j]}", 88)
            lines += wrapped[:2]
        draw.multiline_text((size + 12, y + 2), "\n".join(lines[:7]), fill=(0, 0, 0), spacing=2)
    save_png_atomic(canvas, path)
    return path
