"""Timing of the metrics, each against a baseline measured in the same run.

* caption_metrics on N captions x 5 references, with and without METEOR, against pycocoevalcap's own
  pipeline (PTBTokenizer + Bleu/Meteor/Rouge/Cider) on the same captions; prints the largest difference.
* reconstruction_metrics on M image pairs with random-weight networks, against a direct transcription of
  MindEye's evaluation code (whole-set resizes, per-image preprocess stacking, one forward per metric).

    python benchmarks/bench_metrics.py [--captions 100] [--images 32] [--device cpu] [--clip-size tiny]

Random weights give the same cost as real ones (same architectures) but meaningless values; CLIP is a
ViT-L/14-shaped open_clip model with random weights (OpenAI's weights are not downloaded).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

OBJECTS = ["dog", "cat", "man", "woman", "bus", "train", "pizza", "elephant", "giraffe", "surfboard", "kite", "bench"]
COLOURS = ["red", "white", "black", "small", "large", "brown", "yellow"]
ACTIONS = ["standing next to", "sitting on", "walking past", "near", "on top of", "in front of", "behind"]
PLACES = ["a field", "the street", "a kitchen", "the beach", "a park", "a table", "the snow"]


def synthetic_captions(n: int, refs: int = 5, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    rng = np.random.default_rng(seed)

    def caption(obj):
        other = rng.choice(OBJECTS)
        return f"A {rng.choice(COLOURS)} {obj} {rng.choice(ACTIONS)} a {other} in {rng.choice(PLACES)}."

    subjects = rng.choice(OBJECTS, size=n)
    references = [[caption(s) for _ in range(refs)] for s in subjects]
    predictions = [caption(s if rng.random() < 0.7 else rng.choice(OBJECTS)) for s in subjects]
    return predictions, references


def pycocoevalcap_scores(predictions, references, with_meteor: bool) -> dict[str, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = {i: [{"caption": r} for r in refs] for i, refs in enumerate(references)}
    res = {i: [{"caption": p}] for i, p in enumerate(predictions)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    out = {f"BLEU-{n}": s for n, s in enumerate(Bleu(4).compute_score(gts, res, verbose=0)[0], 1)}
    if with_meteor:
        meteor = Meteor()
        out["METEOR"] = meteor.compute_score(gts, res)[0]
        del meteor
    out["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = Cider().compute_score(gts, res)[0]
    return out


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def bench_captions(n: int) -> None:
    from fgb2i_hf.metrics import caption_metrics

    predictions, references = synthetic_captions(n)
    print(f"\n## caption_metrics, {n} captions x 5 references (Java PTB tokenizer)")
    rows = []
    for label, metrics in (("all 7 (with METEOR)", None), ("without METEOR", ["BLEU", "ROUGE-L", "CIDEr"])):
        ours, t_ours = timed(caption_metrics, predictions, references, metrics=metrics, tokenizer="java")
        coco, t_coco = timed(pycocoevalcap_scores, predictions, references, with_meteor=metrics is None)
        diff = max(abs(ours[k] - coco[k]) for k in ours)
        rows.append((label, t_ours, t_coco, diff))
    _, t_python = timed(caption_metrics, predictions, references, metrics=["BLEU", "ROUGE-L", "CIDEr"],
                        tokenizer="python")
    print("| metrics | ours (s) | pycocoevalcap (s) | ratio | max abs difference |")
    print("|---|---|---|---|---|")
    for label, t_ours, t_coco, diff in rows:
        print(f"| {label} | {t_ours:.2f} | {t_coco:.2f} | {t_ours / t_coco:.2f} | {diff:.1e} |")
    print(f"| without METEOR, pure-Python tokenizer | {t_python:.2f} | – | {t_python / rows[1][2]:.2f} | – |")


def mindeye_transcription(gt, pred, models) -> dict[str, float]:
    """MindEye's evaluation steps as its notebook runs them (torchvision transforms on whole sets)."""
    from scipy.spatial.distance import correlation
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity
    from torchvision import transforms

    from fgb2i_hf.metrics import two_way_identification

    bilinear = transforms.InterpolationMode.BILINEAR
    gt = transforms.Resize((256, 256), antialias=False)(gt).float()
    pred = transforms.Resize((256, 256), antialias=False)(pred).float()
    out = {}
    pre = transforms.Resize(425, interpolation=bilinear, antialias=False)
    g, p = pre(gt).reshape(len(gt), -1), pre(pred).reshape(len(pred), -1)
    out["PixCorr"] = float(np.mean([np.corrcoef(g[i], p[i])[0][1] for i in range(len(gt))]))
    g, p = rgb2gray(pre(gt).permute(0, 2, 3, 1).numpy()), rgb2gray(pre(pred).permute(0, 2, 3, 1).numpy())
    out["SSIM"] = float(np.mean([structural_similarity(r, i, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                                       data_range=1.0, channel_axis=None) for i, r in zip(g, p)]))

    def features(model, images):
        pre = transforms.Compose([transforms.Resize(model.resize, interpolation=bilinear, antialias=False),
                                  transforms.Normalize(mean=model.mean, std=model.std)])
        with torch.no_grad():
            return model.network(torch.stack([pre(im) for im in images]))

    alex_g, alex_p = features(models["alexnet"], gt), features(models["alexnet"], pred)
    out["AlexNet(2)"] = two_way_identification(alex_g["features.4"].flatten(1), alex_p["features.4"].flatten(1))
    out["AlexNet(5)"] = two_way_identification(alex_g["features.11"].flatten(1), alex_p["features.11"].flatten(1))
    out["InceptionV3"] = two_way_identification(features(models["inception"], gt)["avgpool"].flatten(1),
                                                features(models["inception"], pred)["avgpool"].flatten(1))
    out["CLIP"] = two_way_identification(features(models["clip"], gt), features(models["clip"], pred))
    for column, key in (("EffNet-B", "effnet"), ("SwAV", "swav")):
        fg = features(models[key], gt)["avgpool"].flatten(1).double().numpy()
        fp = features(models[key], pred)["avgpool"].flatten(1).double().numpy()
        out[column] = float(np.mean([correlation(a, b) for a, b in zip(fg, fp)]))
    return out


CLIP_CONFIGS = {
    "vit-l": dict(embed_dim=768, vision_cfg=dict(image_size=224, layers=24, width=1024, patch_size=14),
                  text_cfg=dict(context_length=77, vocab_size=49408, width=768, heads=12, layers=1)),
    "tiny": dict(embed_dim=16, vision_cfg=dict(image_size=224, layers=1, width=32, patch_size=32, head_width=16),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)),
}


def bench_reconstruction(m: int, device: str, clip_size: str) -> None:
    from fgb2i_hf.clip import CLIPScorer
    from fgb2i_hf.metrics import load_feature_models, reconstruction_metrics

    torch.manual_seed(0)
    clip = CLIPScorer.from_config(CLIP_CONFIGS[clip_size])
    models, t_build = timed(load_feature_models, pretrained=False, clip=clip, device=device)
    rng = np.random.default_rng(0)
    # Smooth "images" (low-resolution noise upsampled), reconstructions = noisy versions.
    gt = torch.nn.functional.interpolate(torch.from_numpy(rng.random((m, 3, 16, 16), dtype=np.float32)), size=425,
                                         mode="bilinear", align_corners=False)
    pred = (gt + 0.15 * torch.randn(m, 3, 425, 425)).clamp(0, 1)
    print(f"\n## reconstruction_metrics, {m} image pairs at 425 px, random weights, CLIP {clip_size}, device {device}")
    print(f"(building the five networks: {t_build:.1f} s)")
    ours, t_ours = timed(reconstruction_metrics, gt, pred, models, device=device, progress=False)
    low, t_low = timed(reconstruction_metrics, gt, pred, models, metrics=["PixCorr", "SSIM"], device=device,
                       progress=False)
    on_cpu = {k: v.to("cpu") for k, v in models.items()}
    ref, t_ref = timed(mindeye_transcription, gt, pred, on_cpu) if device == "cpu" else (None, float("nan"))
    print("| run | seconds | per image pair (s) |")
    print("|---|---|---|")
    print(f"| reconstruction_metrics, all 8 columns | {t_ours:.1f} | {t_ours / m:.2f} |")
    print(f"| reconstruction_metrics, PixCorr + SSIM only | {t_low:.1f} | {t_low / m:.2f} |")
    if ref is not None:
        print(f"| MindEye notebook transcription (baseline) | {t_ref:.1f} | {t_ref / m:.2f} |")
        print(f"ratio ours / baseline: {t_ours / t_ref:.2f}; largest column difference: "
              f"{max(abs(ours[k] - ref[k]) for k in ours):.1e}")
    print("values (random weights, meaningless):", {k: round(v, 4) for k, v in ours.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=100)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clip-size", choices=sorted(CLIP_CONFIGS), default="vit-l",
                        help="vit-l: MindEye's CLIP shape (the real cost); tiny: a 1-layer ViT (CPU smoke runs)")
    parser.add_argument("--skip-captions", action="store_true")
    parser.add_argument("--skip-images", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(min(os.cpu_count() or 1, 16))
    print(f"torch threads: {torch.get_num_threads()}, cpu count: {os.cpu_count()}")
    if not args.skip_captions:
        bench_captions(args.captions)
    if not args.skip_images:
        bench_reconstruction(args.images, args.device, args.clip_size)


if __name__ == "__main__":
    main()
