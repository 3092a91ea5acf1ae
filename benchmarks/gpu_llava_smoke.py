"""Smoke check and throughput of the captioner's half-precision GPU path, on a tiny random LLaVA.

Builds the tiny random LLaVA of ``fgb2i_hf.testing`` (CLIP vision tower + Llama, a word-level tokenizer), saves
it, loads it back through ``ImageCaptioner.from_pretrained`` (float16 on CUDA, float32 on CPU) and captions
random 425 x 425 images (NSD's stimulus size) with ``enhance_captions`` into a temporary JSONL cache:

* batched (``--batch-size``) against one image at a time (the baseline, same run), with the ratio;
* with and without the background prefetch of the next batch;
* on CUDA, the same batch in float32, and the fraction of captions that float16 reproduces exactly.

It checks what must hold on any device (one complete record per image, captions within 77 CLIP tokens, batched
captions equal to one-at-a-time captions) and exits non-zero otherwise.

    python benchmarks/gpu_llava_smoke.py [--images 64] [--batch-size 16] [--device auto] [--hidden 256]

Random weights: the captions are word salad, but shapes, dtypes, padding, decoding and the cache are the
real path; throughput reflects a model of this size, not LLaVA-1.5-7B.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402


class Images:
    """Images by id from an in-memory uint8 array (the interface of fgb2i_hf.data.NSDStimuli)."""

    def __init__(self, images):
        self.images, self.path = images, "<random images>"

    def __len__(self):
        return len(self.images)

    def get(self, ids):
        return self.images[list(ids)]


def run(captioner, stimuli, n, batch_size, prefetch, folder, name):
    from fgb2i_hf.captions.enhance import enhance_captions

    path = os.path.join(folder, name + ".jsonl")
    if captioner.device.type == "cuda":
        torch.cuda.synchronize()
    summary = enhance_captions(captioner, stimuli, range(n), path, batch_size=batch_size, progress=False,
                               prefetch=prefetch)
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return summary, {r["nsd_id"]: r for r in records}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the tiny model (both towers)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=336, help="vision input (LLaVA-1.5: 336 -> 576 tokens)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    from fgb2i_hf.captions.enhance import ImageCaptioner
    from fgb2i_hf.captions.length import clip_token_count
    from fgb2i_hf.testing import save_tiny_llava

    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if args.device == "auto" else args.device))
    stimuli = Images(np.random.default_rng(0).integers(0, 256, (args.images, 425, 425, 3), dtype=np.uint8))
    gen = {"max_new_tokens": args.max_new_tokens, "min_new_tokens": args.max_new_tokens}  # fixed work per image
    failures = []
    with tempfile.TemporaryDirectory() as folder:
        model_dir = save_tiny_llava(os.path.join(folder, "tiny_llava"), hidden_size=args.hidden, layers=args.layers,
                                    image_size=args.image_size)
        captioner = ImageCaptioner.from_pretrained(model_dir, device=device, generation_kwargs=gen)
        print(f"device {captioner.device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
              f"dtype {captioner.dtype}, torch {torch.__version__}, images {args.images} x 425x425, "
              f"{args.max_new_tokens} new tokens each, model {sum(p.numel() for p in captioner.model.parameters()) / 1e6:.1f}M "
              f"parameters, {(args.image_size // 14) ** 2} image tokens")
        run(captioner, stimuli, min(args.batch_size, args.images), args.batch_size, True, folder, "warmup")

        rows = []
        batched, recs = run(captioner, stimuli, args.images, args.batch_size, True, folder, "batched")
        rows.append((f"batch {args.batch_size}, prefetch", batched))
        no_prefetch, _ = run(captioner, stimuli, args.images, args.batch_size, False, folder, "no_prefetch")
        rows.append((f"batch {args.batch_size}, no prefetch", no_prefetch))
        single, single_recs = run(captioner, stimuli, args.images, 1, False, folder, "single")
        rows.append(("batch 1 (baseline)", single))
        for label, s in rows:
            print(f"  {label:28s} {s.images_per_second:8.2f} images/s  ({s.seconds:.2f} s, {s.done} captions)")
        print(f"  batched / one-at-a-time: {batched.images_per_second / single.images_per_second:.2f}x; "
              f"prefetch / no prefetch: {batched.images_per_second / no_prefetch.images_per_second:.2f}x")

        if sorted(recs) != list(range(args.images)):
            failures.append(f"expected one record per image, got ids {sorted(recs)[:10]}...")
        too_long = [i for i, r in recs.items() if clip_token_count(r["caption"]) > 77]
        if too_long:
            failures.append(f"captions over 77 CLIP tokens: {too_long[:10]}")
        same = np.mean([recs[i]["caption"] == single_recs[i]["caption"] for i in recs])
        print(f"  batched captions equal to one-at-a-time captions: {same:.3f}")
        if device.type == "cpu" and same < 1.0:
            failures.append(f"batched and single-image captions differ in float32 ({same:.3f} equal)")
        if device.type == "cuda":
            fp32 = ImageCaptioner.from_pretrained(model_dir, device=device, dtype="float32", generation_kwargs=gen)
            s32, recs32 = run(fp32, stimuli, args.images, args.batch_size, True, folder, "fp32")
            agree = np.mean([recs[i]["caption"] == recs32[i]["caption"] for i in recs])
            print(f"  float32 batch {args.batch_size}: {s32.images_per_second:.2f} images/s; float16 / float32 "
                  f"{batched.images_per_second / s32.images_per_second:.2f}x; captions equal to float32: {agree:.3f}")
            print(f"  peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
        truncated = sum(r["truncated"] for r in recs.values())
        print(f"  truncated to 77 CLIP tokens: {truncated} of {len(recs)}")
    for f in failures:
        print("FAIL:", f)
    print("OK" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
