"""How faithful each cheap option of the image-image reward is to the full renderer's reward, and what it costs.

The reward is cos(CLIP_image(render(caption)), CLIP_image(stimulus)). On held-out sampled captions — K captions
sampled (temperature 1, as stage 2 samples) from a stage-1 model for each of the first ``--num-brains`` brains of
the test split, images the surrogate never saw — the reference is the full renderer (``--renderer`` at
``--reference-steps``/``--reference-guidance``), and each option is scored against it:

* ``renderer, other seed``: the full renderer from another seed — the ceiling: no function of the caption alone can
  agree with the reference better than the reference agrees with itself under other noise;
* ``renderer, N steps``: the same pipeline in ``--few-steps`` steps (what ``render_steps`` saves);
* ``1 step, no guidance (not distilled)``: the same pipeline in one step — a stand-in for the ``distilled`` option's
  cost, NOT for its fidelity (a distilled model is trained to draw in one step; this one is not);
* ``distilled``: ``--distilled NAME`` (e.g. stabilityai/sd-turbo) where it can be loaded;
* ``surrogate``: a :class:`fgb2i_hf.models.RenderSurrogate` (``--surrogate PATH``, else fitted here with
  ``recipes/configs/reward_surrogate_sim_tiny.yaml``'s settings on ``--fit-captions`` training captions rendered by
  the reference renderer);
* ``clip_text_image``: the text-image reward (L_ti), the control: a surrogate must agree with the image-image reward
  better than the reward we already have does.

Per option: Spearman correlation with the reference reward over all captions (the goal's measure), the Spearman
correlation of the leave-one-out advantages (r minus the mean of the brain's other K-1 samples: what the REINFORCE
gradient sees; mean over brains), Pearson, mean |difference|, and the cost per caption (ms, this machine; rendering
+ CLIP for renderers, CLIP text + MLP for the surrogate).

    python benchmarks/bench_reward_fidelity.py --checkpoint outputs/ce_sim_tiny/final --nsd-root simnsd
    python benchmarks/bench_reward_fidelity.py      # trains a stage-1 model first (sim_tiny.yaml, --ce-epochs)

Writes ``<output-dir>/reward_fidelity.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
SURROGATE_CONFIG = os.path.join(HERE, os.pardir, "recipes", "configs", "reward_surrogate_sim_tiny.yaml")

from bench_rl_ablation import SUBJECTS, train_stage1  # noqa: E402


def fidelity(values: np.ndarray, reference: np.ndarray, num_samples: int) -> dict[str, float]:
    """Agreement of an option's rewards with the reference's, both (B*K,) with K consecutive samples per brain."""
    from fgb2i_hf.rewards import spearman

    def loo(r):
        r = r.reshape(-1, num_samples)
        return r - (r.sum(1, keepdims=True) - r) / (num_samples - 1)

    a, b = loo(values), loo(reference)
    per_brain = [spearman(x, y) for x, y in zip(a, b)]
    per_brain = [s for s in per_brain if np.isfinite(s)]
    return {"spearman": spearman(values, reference),
            "advantage_spearman": spearman(a.ravel(), b.ravel()),
            "within_brain_spearman_mean": float(np.mean(per_brain)) if per_brain else float("nan"),
            "pearson": float(np.corrcoef(values, reference)[0, 1]),
            "mean_abs_difference": float(np.abs(values - reference).mean())}


def sample_captions(model, tokenizer, rows, num_samples: int, seed: int, batch_size: int = 32) -> list[str]:
    """K sampled captions per row (temperature 1, the model's max_caption_tokens), K consecutive per row."""
    from fgb2i_hf.data.collate import BrainCaptionCollator
    from fgb2i_hf.models.brain_prefix_gpt2 import decode_captions

    collator = BrainCaptionCollator(tokenizer, max_length=model.config.max_caption_tokens)
    torch.manual_seed(seed)
    out = []
    eos = tokenizer.eos_token_id
    for start in range(0, len(rows), batch_size):
        batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        tokens = model.generate(betas=batch["betas"], subject=batch["subject"], do_sample=True,
                                num_return_sequences=num_samples, eos_token_id=eos, pad_token_id=eos)
        out.extend(decode_captions(tokens, tokenizer, eos))
    return out


def rendered_rewards(renderer, scorer, captions: list[str], stimulus: torch.Tensor, batch_size: int):
    """Rewards of ``captions`` rendered by ``renderer`` and the cost (ms per caption: render + CLIP image)."""
    start = time.perf_counter()
    embeds = []
    for i in range(0, len(captions), batch_size):
        embeds.append(scorer.encode_images(renderer.render(captions[i : i + batch_size])))
    ms = 1000 * (time.perf_counter() - start) / len(captions)
    return (torch.cat(embeds) * stimulus).sum(-1).numpy(), ms


def fit_or_load_surrogate(args, nsd_root: str, cache_dir: str):
    """The surrogate at ``--surrogate``, else fitted here (the sim_tiny recipe's settings, the reference renderer,
    ``--fit-captions`` training captions; renderings kept for a rerun)."""
    from trl import TrlParser

    from fgb2i_hf.drivers.reward_surrogate import SurrogateScriptArguments, run_fit_reward_surrogate
    from fgb2i_hf.rewards import SurrogateFitConfig

    if args.surrogate:
        return args.surrogate, None
    path = os.path.join(args.output_dir, "surrogate")
    argv = ["--config", SURROGATE_CONFIG, "--nsd_root", nsd_root, "--cache_dir", cache_dir, "--output_dir", path,
            "--clip_model", args.clip_model, "--renderer", args.renderer,
            "--render_steps", str(args.reference_steps), "--render_guidance", str(args.reference_guidance),
            "--max_captions", str(args.fit_captions), "--render_batch_size", str(args.batch_size), "--device", "cpu",
            "--subjects", *args.subjects.split(",")]
    script_args, fit_config = TrlParser((SurrogateScriptArguments, SurrogateFitConfig)).parse_args_and_config(args=argv)
    fitted = os.path.join(path, "config.json")
    if os.path.exists(fitted):
        print(f"[surrogate] reusing {path}", flush=True)
        with open(os.path.join(path, "fit_report.json")) as f:
            return path, json.load(f)
    print(f"[surrogate] rendering {args.fit_captions} training captions and fitting into {path}", flush=True)
    return path, run_fit_reward_surrogate(script_args, fit_config)


def main(argv=None) -> dict:
    from transformers import AutoTokenizer

    from fgb2i_hf import BrainPrefixGPT2
    from fgb2i_hf.clip import CLIPScorer
    from fgb2i_hf.core import atomic_write_json
    from fgb2i_hf.data import NSDStimuli, load_nsd
    from fgb2i_hf.rewards import TextToImageRenderer, load_render_surrogate, text_embeddings
    from fgb2i_hf.simnsd import simulate_nsd

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="stage-1 model folder; default: train one (sim_tiny.yaml, --ce-epochs)")
    p.add_argument("--ce-epochs", type=float, default=2)
    p.add_argument("--nsd-root", help="SimNSD root (default: <output-dir>/simnsd, simulated tiny if absent)")
    p.add_argument("--cache-dir", help="datasets cache (default: <output-dir>/hf_datasets)")
    p.add_argument("--output-dir", default="outputs/bench_reward_fidelity")
    p.add_argument("--clip-model", default="simnsd/clip")
    p.add_argument("--renderer", default="simnsd/diffusion")
    p.add_argument("--reference-steps", type=int, default=25, help="the full renderer's steps (the world's own: 25)")
    p.add_argument("--reference-guidance", type=float, default=4.0, help="the full renderer's guidance (world: 4)")
    p.add_argument("--few-steps", type=int, default=4, help="steps of the 'renderer, N steps' option")
    p.add_argument("--distilled", help="a distilled pipeline to score too (e.g. stabilityai/sd-turbo)")
    p.add_argument("--distilled-steps", type=int, default=1)
    p.add_argument("--distilled-guidance", type=float, default=0.0)
    p.add_argument("--distilled-scheduler", help="e.g. LCMScheduler (with --distilled-lora for LCM-LoRA)")
    p.add_argument("--distilled-lora")
    p.add_argument("--surrogate", help="a fitted surrogate folder; default: fit one here")
    p.add_argument("--fit-captions", type=int, default=2000, help="training captions rendered to fit the surrogate")
    p.add_argument("--num-brains", type=int, default=128, help="held-out brains (test split rows)")
    p.add_argument("--num-samples", type=int, default=4, help="K: captions sampled per brain")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per renderer call")
    p.add_argument("--subjects", default=",".join(SUBJECTS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    os.makedirs(args.output_dir, exist_ok=True)
    nsd_root = args.nsd_root or os.path.join(args.output_dir, "simnsd")
    cache_dir = args.cache_dir or os.path.join(args.output_dir, "hf_datasets")
    if not os.path.isdir(os.path.join(nsd_root, "nsddata")):
        simulate_nsd(nsd_root, scale="tiny", seed=0)
    data = load_nsd(nsd_root, subjects=args.subjects.split(","), cache_dir=cache_dir)
    checkpoint = args.checkpoint or train_stage1(nsd_root, cache_dir, os.path.join(args.output_dir, "ce"),
                                                 args.ce_epochs, None)
    surrogate_path, fit_report = fit_or_load_surrogate(args, nsd_root, cache_dir)
    torch.set_grad_enabled(False)

    model = BrainPrefixGPT2.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    test = data["test"]
    rows = test.select(range(min(args.num_brains, len(test))))
    captions = sample_captions(model, tokenizer, rows, args.num_samples, args.seed)
    scorer = CLIPScorer.from_pretrained(args.clip_model)
    stimuli = NSDStimuli(nsd_root)
    ids = [int(n) for n in rows["nsd_id"] for _ in range(args.num_samples)]
    unique = sorted(set(ids))
    stim = scorer.encode_images(np.stack([stimuli[i] for i in unique]))
    stimulus = stim[[unique.index(i) for i in ids]]

    def renderer(steps, guidance, seed=0, **extra):
        return TextToImageRenderer(extra.pop("pretrained", args.renderer), num_inference_steps=steps,
                                   guidance_scale=guidance, seed=seed, batch_size=args.batch_size, **extra)

    print(f"[fidelity] {len(captions)} held-out sampled captions ({len(unique)} images); reference: "
          f"{args.renderer}, {args.reference_steps} steps, guidance {args.reference_guidance:g}", flush=True)
    reference_renderer = renderer(args.reference_steps, args.reference_guidance)
    reference, reference_ms = rendered_rewards(reference_renderer, scorer, captions, stimulus, args.batch_size)
    options: dict[str, dict] = {}

    def add(name, values, ms, note=""):
        options[name] = {**fidelity(np.asarray(values, np.float64), reference, args.num_samples),
                         "ms_per_caption": ms, "note": note}
        row = options[name]
        print(f"  {name}: Spearman {row['spearman']:.3f}, advantages {row['advantage_spearman']:.3f}, "
              f"{ms:.2f} ms/caption", flush=True)

    add(f"renderer, {args.reference_steps} steps (reference)", reference, reference_ms, "the full renderer")
    values, ms = rendered_rewards(renderer(args.reference_steps, args.reference_guidance, seed=args.seed + 1), scorer,
                                  captions, stimulus, args.batch_size)
    add("renderer, other seed", values, ms, "ceiling: the reference under other noise")
    values, ms = rendered_rewards(renderer(args.few_steps, args.reference_guidance), scorer, captions, stimulus,
                                  args.batch_size)
    add(f"renderer, {args.few_steps} steps", values, ms)
    values, ms = rendered_rewards(renderer(1, 1.0), scorer, captions, stimulus, args.batch_size)
    add("1 step, no guidance (not distilled)", values, ms, "the cost of a one-step model, not a distilled model's fidelity")
    if args.distilled:
        extra = {k: v for k, v in dict(scheduler=args.distilled_scheduler, lora=args.distilled_lora).items() if v}
        values, ms = rendered_rewards(renderer(args.distilled_steps, args.distilled_guidance,
                                               pretrained=args.distilled, **extra),
                                      scorer, captions, stimulus, args.batch_size)
        add(f"distilled {args.distilled}", values, ms)

    surrogate = load_render_surrogate(surrogate_path, renderer=reference_renderer, scorer=scorer)
    start = time.perf_counter()
    values = (surrogate(scorer.encode_text(captions)) * stimulus).sum(-1).numpy()
    add("surrogate", values, 1000 * (time.perf_counter() - start) / len(captions),
        f"fitted on {surrogate.config.fit['captions']} training captions")
    start = time.perf_counter()
    values = (text_embeddings(scorer, captions) * stimulus).sum(-1).numpy()
    add("clip_text_image (control)", values, 1000 * (time.perf_counter() - start) / len(captions),
        "the text-image reward, L_ti")

    fit = surrogate.config.fit
    result = {"settings": {**vars(args), "checkpoint": checkpoint, "captions": len(captions), "images": len(unique),
                           "distinct_captions": len(set(captions)), "threads": torch.get_num_threads()},
              "reference_mean_reward": float(reference.mean()), "reference_reward_std": float(reference.std()),
              "options": options,
              "surrogate_fit": {k: fit.get(k) for k in ("captions", "images", "best_epoch", "val_cosine",
                                                         "val_reward_spearman", "linear_baseline_val_cosine",
                                                         "render_seconds")},
              "surrogate_fit_renders_ms_per_caption": (1000 * fit["render_seconds"] / fit["captions"]
                                                       if fit.get("render_seconds") else None)}
    print(f"\nImage-image reward fidelity — {len(captions)} held-out sampled captions ({args.num_samples} per brain, "
          f"{len(unique)} test images), reference {args.renderer} {args.reference_steps} steps guidance "
          f"{args.reference_guidance:g}, CLIP {args.clip_model}, {torch.get_num_threads()} threads\n")
    print("| option | Spearman vs reference | Spearman of LOO advantages | Pearson | mean abs diff | ms / caption | note |")
    print("|---|---|---|---|---|---|---|")
    for name, r in options.items():
        print(f"| {name} | {r['spearman']:.3f} | {r['advantage_spearman']:.3f} | {r['pearson']:.3f} | "
              f"{r['mean_abs_difference']:.4f} | {r['ms_per_caption']:.2f} | {r['note']} |")
    print(f"\nReference reward: mean {reference.mean():.4f}, std {reference.std():.4f}. Surrogate fit: "
          f"{fit.get('captions')} captions, held-out cosine {fit.get('val_cosine', float('nan')):.3f}, held-out reward "
          f"Spearman {fit.get('val_reward_spearman', float('nan')):.3f}")
    atomic_write_json(os.path.join(args.output_dir, "reward_fidelity.json"), result, default=str)
    return result


if __name__ == "__main__":
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
