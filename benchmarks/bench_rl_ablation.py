"""The paper's stage-2 ablation on SimNSD tiny: which REINFORCE rewards help, starting from one stage-1 model.

Every row starts from the same stage-1 (cross-entropy) checkpoint and trains for the same number of steps with the
same data order, seed, learning rate and batch (:class:`fgb2i_hf.rl.ReinforceTrainer`, K samples per brain):

* ``CE only``: the CE loss alone (no reward) — the fair control for "more training";
* ``+L_obj``, ``+L_ti``, ``+L_ii``: CE + one REINFORCE term (object accuracy, CLIP text-image, CLIP image-image);
* ``all three``: CE + all three terms (the paper's full loss);

then each is scored on the test split (greedy captions): the mean of every reward, BLEU-4, METEOR, CIDEr (and
BLEU-1, ROUGE-L), object P/R/F1 and the test CE loss (per token, on the fine captions). Two more rows: the
starting checkpoint (``stage 1``) and the ``shuffled-brain control`` (the CE-only model decoding other brains of
the same subject — what the language prior alone gives).

Weights: the paper's α = β = γ = 0.01 (``--paper-weight``). On SimNSD a weight of 0.01 barely moves a model in
a hundred steps, so the ``--scaled-rows`` (default: the object reward) are also run at each of
``--scaled-weights`` (default 0.1 and 1); every row is named by its weight.

CLIP rewards: ``--clip-model random-tiny`` (the default) is a random tiny open_clip model and ``--renderer
random-tiny`` a random tiny Stable Diffusion: their rewards are noise, so those rows show the mechanics and the
cost only. Pass ``--clip-model simnsd/clip`` (and the SimNSD renderer) once the SimNSD world ships them, or
real names on a real machine.

    python benchmarks/bench_rl_ablation.py --checkpoint outputs/ce_sim_tiny/final --nsd-root simnsd
    python benchmarks/bench_rl_ablation.py            # trains its own stage-1 model first (sim_tiny.yaml)

Prints a markdown table (deltas against ``CE only``) and writes ``<output-dir>/ablation.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import Any

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SIM_TINY = os.path.join(HERE, os.pardir, "recipes", "configs", "sim_tiny.yaml")
SUBJECTS = ["subj01", "subj02", "subj05", "subj07"]
REWARDS = {"obj": "object_accuracy", "ti": "clip_text_image", "ii": "clip_image_image"}
ROW_NAMES = {"ce": "CE only", "obj": "+L_obj", "ti": "+L_ti", "ii": "+L_ii", "all": "all three"}
BASELINE_ROW = "CE only"
START_ROW = "stage 1 (start)"
CONTROL_ROW = "shuffled-brain control"
RANDOM_TINY = "random-tiny"


# -- the rows --------------------------------------------------------------------------------------------------------
def row_specs(rows: list[str], paper_weight: float, scaled_weights=(), scaled_rows=()) -> dict[str, dict[str, float]]:
    """``{row name: {reward name: weight}}`` for the requested row keys (``ce``, ``obj``, ``ti``, ``ii``, ``all``).

    Each reward row appears at the paper's weight and, for the keys in ``scaled_rows``, also at each non-zero
    weight of ``scaled_weights`` that differs from it; the row name carries the weight (``+L_obj (w=0.01)``).
    ``CE only`` has no reward.
    """
    unknown = [r for r in [*rows, *scaled_rows] if r not in ROW_NAMES]
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}; choose from {list(ROW_NAMES)}")
    specs: dict[str, dict[str, float]] = {}
    for key in rows:
        if key == "ce":
            specs[BASELINE_ROW] = {}
            continue
        names = list(REWARDS.values()) if key == "all" else [REWARDS[key]]
        weights = [paper_weight]
        if key in scaled_rows:
            weights += [w for w in dict.fromkeys(scaled_weights) if w and w != paper_weight]
        for w in weights:
            specs[f"{ROW_NAMES[key]} (w={w:g})"] = {n: w for n in names}
    return specs


def assemble_table(evaluations: dict[str, dict[str, float]], columns: list[str] | None = None) -> dict[str, Any]:
    """The table's rows in a fixed order (stage 1, CE only, reward rows, control), the markdown with deltas against
    ``CE only`` (when present), and the deltas."""
    from fgb2i_hf.metrics import format_table
    from fgb2i_hf.metrics.table import table_deltas

    order = [START_ROW, BASELINE_ROW] + [n for n in evaluations if n not in (START_ROW, BASELINE_ROW, CONTROL_ROW)]
    order += [CONTROL_ROW]
    rows = {n: evaluations[n] for n in order if n in evaluations}
    baseline = BASELINE_ROW if BASELINE_ROW in rows else None
    return {"rows": rows, "baseline": baseline,
            "deltas": table_deltas(rows, baseline) if baseline else {},
            "markdown": format_table(rows, baseline=baseline, columns=columns, digits=4)}


def verdict(rows: dict[str, dict[str, float]], ce_tolerance: float = 0.10) -> list[str]:
    """One line per ``+L_obj`` row: does it raise test object F1 over ``CE only`` without the test CE loss rising by
    more than ``ce_tolerance`` (relative)?"""
    lines = []
    base = rows.get(BASELINE_ROW)
    if base is None:
        return lines
    for name, values in rows.items():
        if not name.startswith(ROW_NAMES["obj"]):
            continue
        f1, f1_base = values["object F1"], base["object F1"]
        ce, ce_base = values["test CE"], base["test CE"]
        raised, kept = f1 > f1_base, ce <= ce_base * (1 + ce_tolerance)
        lines.append(f"{name}: object F1 {f1:.4f} vs {f1_base:.4f} ({f1 - f1_base:+.4f}, "
                     f"{'raised' if raised else 'NOT raised'}); test CE {ce:.4f} vs {ce_base:.4f} "
                     f"({(ce / ce_base - 1) * 100:+.1f}%, {'no collapse' if kept else 'CE ROSE > ' f'{ce_tolerance:.0%}'})")
    return lines


# -- models, rewards, evaluation -------------------------------------------------------------------------------------
def build_clip(name: str, seed: int):
    from fgb2i_hf.clip import CLIPScorer
    from fgb2i_hf.testing import TINY_CLIP_CONFIG

    if name == RANDOM_TINY:
        torch.manual_seed(seed)
        return CLIPScorer.from_config(TINY_CLIP_CONFIG, name=RANDOM_TINY)
    pretrained = "openai" if name.startswith("ViT-") else None
    return CLIPScorer.from_pretrained(name, pretrained=pretrained)


def build_renderer(name: str, seed: int, steps: int = 2, guidance: float = 7.5, size: int | None = None):
    """A :class:`TextToImageRenderer`: ``random-tiny`` (a random 32 px Stable Diffusion; ``size`` 16 renders 8x8
    latents, 4x cheaper) or a diffusers name/folder."""
    from fgb2i_hf.rewards import TextToImageRenderer

    kwargs = dict(num_inference_steps=steps, guidance_scale=guidance, height=size, width=size, seed=seed)
    if name == RANDOM_TINY:
        from diffusers import StableDiffusionPipeline

        from fgb2i_hf.testing import tiny_sd_components

        pipeline = StableDiffusionPipeline(**tiny_sd_components(seed), safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
        return TextToImageRenderer(pipeline, batch_size=128, **kwargs)
    return TextToImageRenderer(name, **kwargs)


def build_rewards(names, clip_model: str, renderer: str, stimuli, seed: int, **render_kwargs) -> dict[str, Any]:
    """The reward callables, built once and shared by every row (their stimulus-embedding and rendering caches
    too); ``render_kwargs`` go to :func:`build_renderer`."""
    from fgb2i_hf.rewards import get_reward

    out, clip = {}, None
    for name in names:
        if name in ("clip_text_image", "clip_image_image") and clip is None:
            clip = build_clip(clip_model, seed)
        if name == "clip_text_image":
            out[name] = get_reward(name, clip=clip, stimuli=stimuli)
        elif name == "clip_image_image":
            out[name] = get_reward(name, clip=clip, stimuli=stimuli,
                                   renderer=build_renderer(renderer, seed, **render_kwargs))
        else:
            out[name] = get_reward(name)
    return out


@torch.no_grad()
def test_ce_loss(model, tokenizer, dataset, references: str = "fine_captions", batch_size: int = 64,
                 shuffle_betas: bool = False, seed: int = 0) -> float:
    """Mean per-token cross-entropy of ``dataset``'s reference captions (the collator's epoch-0 choice, caption +
    eos) given each row's brain (or, with ``shuffle_betas``, another brain of the same subject)."""
    from fgb2i_hf.data.collate import BrainCaptionCollator
    from fgb2i_hf.evaluation import shuffled_row_order

    collator = BrainCaptionCollator(tokenizer, caption_column=references,
                                    max_length=getattr(model.config, "max_caption_tokens", 77), seed=seed)
    subjects = list(dataset["subject"])
    order = shuffled_row_order(subjects, seed) if shuffle_betas else np.arange(len(dataset))
    columns = dataset.with_format("numpy", columns=["betas"], output_all_columns=True)
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        for start in range(0, len(dataset), batch_size):
            idx = list(range(start, min(start + batch_size, len(dataset))))
            rows = [dict(columns[i]) for i in idx]
            for r, i in zip(rows, idx):
                r["betas"] = columns[int(order[i])]["betas"]
            batch = collator(rows)
            out = model(betas=batch["betas"], subject=batch["subject"], input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"], labels=batch["labels"])
            n = int((batch["labels"] != -100).sum())
            total += float(out.loss) * n
            tokens += n
    finally:
        model.train(was_training)
    return total / tokens


def evaluate(model, tokenizer, dataset, rewards: dict[str, Any], metrics, meteor=None, references="fine_captions",
             shuffle_betas: bool = False, seed: int = 0) -> tuple[dict[str, float], list[str]]:
    """Greedy test captions scored: caption metrics, object P/R/F1, each reward's mean, and the test CE."""
    from fgb2i_hf.evaluation import caption_report, decode_dataset

    predictions = decode_dataset(model, tokenizer, dataset, shuffle_betas=shuffle_betas, seed=seed, progress=False)
    report = caption_report(predictions, dataset, references, metrics=metrics, rewards=rewards, meteor=meteor)
    report["test CE"] = test_ce_loss(model, tokenizer, dataset, references, shuffle_betas=shuffle_betas, seed=seed)
    return report, predictions


def train_stage1(nsd_root: str, cache_dir: str, output_dir: str, epochs: float, max_train_rows: int | None) -> str:
    """A stage-1 model with recipes/configs/sim_tiny.yaml (reused if ``<output_dir>/final`` exists)."""
    from transformers import TrainingArguments
    from trl import TrlParser

    from fgb2i_hf.drivers.ce import CEScriptArguments, run_ce

    final = os.path.join(output_dir, "final")
    if os.path.isfile(os.path.join(final, "config.json")):
        print(f"[stage 1] reusing {final}", flush=True)
        return final
    argv = ["--config", SIM_TINY, "--nsd_root", nsd_root, "--cache_dir", cache_dir, "--output_dir", output_dir,
            "--num_train_epochs", str(epochs), "--disable_tqdm", "true", "--eval_strategy", "no",
            "--save_strategy", "no", "--eval_split", ""]
    if max_train_rows:
        argv += ["--max_train_rows", str(max_train_rows)]
    script_args, training_args = TrlParser((CEScriptArguments, TrainingArguments)).parse_args_and_config(args=argv)
    print(f"[stage 1] training {epochs:g} epochs of sim_tiny.yaml into {output_dir}", flush=True)
    run_ce(script_args, training_args)
    return final


# -- main ------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="stage-1 model folder (model + tokenizer); default: train one (sim_tiny.yaml)")
    p.add_argument("--nsd-root", help="SimNSD root (default: <output-dir>/simnsd, simulated tiny if absent)")
    p.add_argument("--cache-dir", help="datasets cache (default: <output-dir>/hf_datasets)")
    p.add_argument("--output-dir", default="outputs/bench_rl_ablation")
    p.add_argument("--rows", default="ce,obj,ti,ii,all", help=f"comma-separated, from {list(ROW_NAMES)}")
    p.add_argument("--paper-weight", type=float, default=0.01, help="α = β = γ of the paper")
    p.add_argument("--scaled-weights", default="0.1,1", help="more weights for the --scaled-rows (comma-separated; '' none)")
    p.add_argument("--scaled-rows", default="obj", help="rows also run at the --scaled-weights (comma-separated)")
    p.add_argument("--steps", type=int, default=100, help="optimiser steps per row")
    p.add_argument("--batch-size", type=int, default=32, help="brains per step")
    p.add_argument("--num-samples", type=int, default=4, help="K: captions sampled per brain")
    p.add_argument("--baseline", default="leave_one_out", choices=["none", "greedy", "leave_one_out"])
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--clip-model", default=RANDOM_TINY,
                   help=f"CLIP of the CLIP rewards: '{RANDOM_TINY}' (random weights: mechanics only), simnsd/clip, "
                        "a folder, or an open_clip name (ViT-* loads OpenAI weights)")
    p.add_argument("--renderer", default=RANDOM_TINY,
                   help=f"text-to-image pipeline of clip_image_image: '{RANDOM_TINY}' (random tiny SD) or a name/folder")
    p.add_argument("--render-steps", type=int, default=1, help="renderer denoising steps")
    p.add_argument("--render-guidance", type=float, default=1.0, help="renderer guidance (1: no classifier-free pass)")
    p.add_argument("--render-size", type=int, default=16, help="rendered image size (0: the pipeline's own)")
    p.add_argument("--eval-max-rows", type=int, default=None, help="test rows per subject (default: all)")
    p.add_argument("--metrics", default="BLEU-1,BLEU-4,METEOR,ROUGE-L,CIDEr", help="caption metrics (comma-separated)")
    p.add_argument("--ce-epochs", type=float, default=6, help="stage-1 epochs when no --checkpoint is given")
    p.add_argument("--ce-max-train-rows", type=int, default=None, help="stage-1 training rows per subject")
    p.add_argument("--subjects", default=",".join(SUBJECTS))
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from fgb2i_hf import BrainPrefixGPT2
    from fgb2i_hf.core import atomic_write_json, atomic_write_text
    from fgb2i_hf.data import NSDStimuli, load_nsd
    from fgb2i_hf.simnsd import simulate_nsd
    from fgb2i_hf.metrics import MeteorScorer
    from fgb2i_hf.rl import ReinforceConfig, ReinforceTrainer
    from fgb2i_hf.data.rows import first_rows_per_subject

    args = parse_args(argv)
    t_start = time.perf_counter()
    os.makedirs(args.output_dir, exist_ok=True)
    subjects = args.subjects.split(",")
    nsd_root = args.nsd_root or os.path.join(args.output_dir, "simnsd")
    cache_dir = args.cache_dir or os.path.join(args.output_dir, "hf_datasets")
    if not os.path.isdir(os.path.join(nsd_root, "nsddata")):
        if args.nsd_root:
            raise FileNotFoundError(f"--nsd-root {nsd_root} holds no NSD (no nsddata/ folder)")
        simulate_nsd(nsd_root, scale="tiny", seed=0)
    checkpoint = args.checkpoint or train_stage1(nsd_root, cache_dir, os.path.join(args.output_dir, "stage1"),
                                                 args.ce_epochs, args.ce_max_train_rows)
    if not os.path.isfile(os.path.join(checkpoint, "config.json")):
        raise FileNotFoundError(f"--checkpoint {checkpoint} holds no config.json (expected a stage-1 model folder)")
    data = load_nsd(nsd_root, subjects=subjects, cache_dir=cache_dir)
    train, test = data["train"], first_rows_per_subject(data["test"], args.eval_max_rows)
    stimuli = NSDStimuli(nsd_root)
    scaled_weights = [float(w) for w in args.scaled_weights.split(",") if w]
    specs = row_specs(args.rows.split(","), args.paper_weight, scaled_weights,
                      tuple(r for r in args.scaled_rows.split(",") if r))
    rewards = build_rewards(list(REWARDS.values()), args.clip_model, args.renderer, stimuli, args.seed,
                            steps=args.render_steps, guidance=args.render_guidance, size=args.render_size or None)
    metrics = [m for m in args.metrics.split(",") if m]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    settings = {k: v for k, v in vars(args).items()}
    settings.update(checkpoint=checkpoint, nsd_root=nsd_root, train_rows=len(train), test_rows=len(test),
                    clip_rewards_are_noise=args.clip_model == RANDOM_TINY)
    print(f"[ablation] {len(specs)} rows x {args.steps} steps (batch {args.batch_size}, K={args.num_samples}, "
          f"baseline {args.baseline}, lr {args.learning_rate:g}) from {checkpoint}; {len(test)} test rows; "
          f"CLIP {args.clip_model}, renderer {args.renderer} ({args.render_steps} steps, guidance "
          f"{args.render_guidance:g}, size {args.render_size or 'default'})", flush=True)

    evaluations: dict[str, dict[str, float]] = {}
    runs: dict[str, dict[str, Any]] = {}
    meteor = MeteorScorer() if "METEOR" in metrics else None
    try:
        t = time.perf_counter()
        model = BrainPrefixGPT2.from_pretrained(checkpoint)
        evaluations[START_ROW], _ = evaluate(model, tokenizer, test, rewards, metrics, meteor, seed=args.seed)
        runs[START_ROW] = {"eval_seconds": time.perf_counter() - t}
        for name, weights in specs.items():
            t = time.perf_counter()
            torch.manual_seed(args.seed)
            model = BrainPrefixGPT2.from_pretrained(checkpoint)
            run_dir = os.path.join(args.output_dir, "runs", name.replace(" ", "_").replace("+", ""))
            shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run (the trainer refuses a folder holding a run)
            config = ReinforceConfig(
                output_dir=run_dir,
                rewards=list(weights), reward_weights=list(weights.values()), num_samples=args.num_samples,
                baseline=args.baseline, learning_rate=args.learning_rate, lr_scheduler_type="constant",
                max_steps=args.steps, per_device_train_batch_size=args.batch_size, logging_steps=max(args.steps // 5, 1),
                seed=args.seed)
            trainer = ReinforceTrainer(model, tokenizer, config, train, rewards=[rewards[n] for n in weights])
            trainer.train()
            trained = time.perf_counter()
            model = trainer.accelerator.unwrap_model(trainer.model)
            evaluations[name], predictions = evaluate(model, tokenizer, test, rewards, metrics, meteor, seed=args.seed)
            runs[name] = {"weights": weights, "train_seconds": trained - t, "eval_seconds": time.perf_counter() - trained,
                          "last_log": trainer.history[-1] if trainer.history else {},
                          "ms_per_step": {k: 1000 * float(np.mean(v)) for k, v in trainer.timings.items()},
                          "examples": predictions[:: max(len(predictions) // 4, 1)][:4]}
            print(f"[ablation] {name}: trained {trained - t:.0f} s, evaluated {time.perf_counter() - trained:.0f} s; "
                  f"object F1 {evaluations[name]['object F1']:.4f}, test CE {evaluations[name]['test CE']:.4f}",
                  flush=True)
            if name == BASELINE_ROW:
                t = time.perf_counter()
                evaluations[CONTROL_ROW], _ = evaluate(model, tokenizer, test, rewards, metrics, meteor,
                                                       shuffle_betas=True, seed=args.seed)
                runs[CONTROL_ROW] = {"eval_seconds": time.perf_counter() - t}
    finally:
        if meteor is not None:
            meteor.close()

    columns = [f"reward {n}" for n in REWARDS.values()] + metrics + ["object P", "object R", "object F1", "test CE"]
    table = assemble_table(evaluations, columns)
    result = {"settings": settings, "runs": runs, **{k: v for k, v in table.items() if k != "markdown"},
              "verdict": verdict(table["rows"]), "seconds": time.perf_counter() - t_start}
    notes = [f"{len(specs)} rows x {args.steps} steps of batch {args.batch_size} x K={args.num_samples} "
             f"({args.steps * args.batch_size} training brains per row of {len(train)}), baseline {args.baseline}, "
             f"lr {args.learning_rate:g}, seed {args.seed}; test split {len(test)} rows, greedy decoding; "
             f"total {result['seconds'] / 60:.1f} min.",
             f"Weights: the paper's {args.paper_weight:g}" + (f", and {args.scaled_weights} for {args.scaled_rows}"
                                                              if scaled_weights else "") + " (named in each row).",
             f"Deltas in brackets are against '{BASELINE_ROW}' (the CE loss alone for the same steps)."]
    random_parts = [f"{what} '{name}'" for what, name in (("CLIP model", args.clip_model), ("renderer", args.renderer))
                    if name == RANDOM_TINY]
    if random_parts:
        affected = "CLIP rewards and all CLIP rows" if args.clip_model == RANDOM_TINY else "+L_ii and all-three rows"
        notes.append(f"{' and '.join(random_parts)}: random tiny weights, so the {affected} show mechanics and cost "
                     "only, not an effect.")
    markdown = "\n".join([table["markdown"], "", *[f"- {n}" for n in notes], *[f"- {v}" for v in result["verdict"]]])
    result["markdown"] = markdown
    atomic_write_text(os.path.join(args.output_dir, "ablation.md"), markdown + "\n")
    atomic_write_json(os.path.join(args.output_dir, "ablation.json"), result, default=str)
    print("\n" + markdown)
    print(f"\n[ablation] written {os.path.join(args.output_dir, 'ablation.md')} and ablation.json")
    return result


if __name__ == "__main__":
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
