"""What an RL step costs with each option of the image-image reward, against a CE step measured in the same run.

One :class:`fgb2i_hf.rl.ReinforceTrainer` run per option, from the same stage-1 weights on the same batches, with
all three rewards (object accuracy, CLIP text-image, CLIP image-image), timed by the trainer's own timers
(``trainer.timings``) after ``--warmup`` steps. The image-image reward's options (``--options``):

* ``renderer``: every sampled caption not in the render cache is rendered (``--renderer``, ``--render-steps``,
  ``--render-guidance``) in one batch per step, each distinct caption once;
* ``distilled``: the same pipeline in one step without guidance, with diffusers' ``LCMScheduler`` (the mechanics and
  the per-image cost of a one-step distilled model; with random weights it is not one);
* ``surrogate``: a render surrogate (``--surrogate``, else fitted here on ``--surrogate-captions`` training captions
  rendered by the ``renderer`` option) scores every sample; ``--surrogate-render-fraction`` of the distinct
  captions is still rendered each step (the fidelity check);
* ``floor``: no reward at all — sampling and the update alone, what any reward is added to.

The baseline of each option, measured right after its run on the same batches: a plain cross-entropy step of the
same starting model (forward + backward + AdamW) — what stage 1 pays per step. On this shared CPU the load moves,
so each option's ratio is to the CE steps measured beside it, and medians are printed with the means.

CLIP and renderer are random tiny models by default (``random-tiny``: a 32 px Stable Diffusion; the cost of the
mechanics, not of SD v1.4); ``--clip-model simnsd/clip --renderer simnsd/diffusion`` is the SimNSD world.

    python benchmarks/bench_rl_step.py --checkpoint outputs/ce_sim_tiny/final --nsd-root simnsd
    python benchmarks/bench_rl_step.py ... --clip-model simnsd/clip --renderer simnsd/diffusion --render-steps 25 \\
        --render-guidance 4 --surrogate outputs/bench_reward_fidelity/surrogate --steps 4 --warmup 1
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_rl_ablation import RANDOM_TINY, SIM_TINY, SUBJECTS, build_clip, build_renderer  # noqa: E402

OPTIONS = ("floor", "renderer", "distilled", "surrogate")


def random_stage1_model(train):
    """A random model of sim_tiny.yaml's architecture, with a tokenizer trained on the training captions."""
    from transformers import TrainingArguments
    from trl import TrlParser

    from fgb2i_hf.drivers.ce import CEScriptArguments
    from fgb2i_hf.drivers.ce import build_model_and_tokenizer, voxel_counts_of

    script_args, _ = TrlParser((CEScriptArguments, TrainingArguments)).parse_args_and_config(
        args=["--config", SIM_TINY, "--nsd_root", "unused", "--output_dir", "unused"])
    captions = [c for cs in train[script_args.caption_column] for c in cs]
    return build_model_and_tokenizer(script_args, voxel_counts_of(train, script_args.subjects), captions)


def ce_step_ms(model, batches, lr: float) -> list[float]:
    """ms of plain cross-entropy steps (forward, backward, AdamW) over ``batches``, after one warm-up step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    times = []
    for batch in [batches[0], *batches]:
        start = time.perf_counter()
        loss = model(betas=batch["betas"], subject=batch["subject"], input_ids=batch["input_ids"],
                     attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        times.append(1000 * (time.perf_counter() - start))
    return times[1:]


def split_table(ms: dict[str, float], total: float) -> list[tuple[str, float, float]]:
    """(part, ms per step, % of the step) rows; ``other`` is the step's remainder (collation, decoding, logs)."""
    rows = [(k, v, 100 * v / total) for k, v in ms.items()]
    other = total - sum(ms.values())
    rows.append(("other (collate, decode, advantages)", other, 100 * other / total))
    return rows


def fit_bench_surrogate(renderer, scorer, train, captions: int, seed: int):
    """A surrogate fitted here on ``captions`` training captions rendered by ``renderer`` (one-off cost, timed)."""
    from fgb2i_hf.drivers.reward_surrogate import render_embeddings, training_captions
    from fgb2i_hf.rewards import SurrogateFitConfig, clip_identity, fit_render_surrogate

    texts, ids = training_captions(train, ["fine_captions", "captions"], seed, captions)
    start = time.perf_counter()
    image = render_embeddings(texts, renderer, scorer, progress=False)
    render_s = time.perf_counter() - start
    model, report = fit_render_surrogate(scorer.encode_text(texts), image, SurrogateFitConfig(
        hidden_size=64, epochs=50, batch_size=64, seed=seed), renderer.identity(), clip_identity(scorer),
        groups=np.asarray(ids))
    return model, {"captions": len(texts), "render_seconds": render_s, "fit_seconds": time.perf_counter() - start - render_s,
                   "val_cosine": report["val_cosine"]}


def main(argv=None) -> dict:
    from transformers import AutoTokenizer

    from fgb2i_hf import BrainPrefixGPT2
    from fgb2i_hf.core import atomic_write_json
    from fgb2i_hf.data import NSDStimuli, load_nsd
    from fgb2i_hf.rewards import CLIPImageImageReward, get_reward, load_render_surrogate
    from fgb2i_hf.rl import ReinforceConfig, ReinforceTrainer
    from fgb2i_hf.simnsd import simulate_nsd

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="stage-1 model folder; default: random weights of sim_tiny.yaml's model")
    p.add_argument("--nsd-root", help="SimNSD root (default: <output-dir>/simnsd, simulated tiny if absent)")
    p.add_argument("--cache-dir", help="datasets cache (default: <output-dir>/hf_datasets)")
    p.add_argument("--output-dir", default="outputs/bench_rl_step")
    p.add_argument("--options", default=",".join(OPTIONS), help=f"comma-separated, from {OPTIONS}")
    p.add_argument("--steps", type=int, default=16, help="steps measured per option (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--clip-model", default=RANDOM_TINY)
    p.add_argument("--renderer", default=RANDOM_TINY)
    p.add_argument("--render-steps", type=int, default=2, help="renderer denoising steps")
    p.add_argument("--render-guidance", type=float, default=7.5, help="renderer guidance (1: no classifier-free pass)")
    p.add_argument("--render-size", type=int, default=0, help="rendered image size (0: the pipeline's own, 32 px)")
    p.add_argument("--no-render-cache", action="store_true", help="no caption cache (each call's captions rendered)")
    p.add_argument("--surrogate", help="a fitted surrogate for --renderer/--clip-model; default: fit one here")
    p.add_argument("--surrogate-captions", type=int, default=256, help="training captions rendered to fit one here")
    p.add_argument("--surrogate-render-fraction", type=float, default=None,
                   help="fraction of distinct captions still rendered (default: the reward's)")
    p.add_argument("--surrogate-check-batch", type=int, default=None,
                   help="captions rendered together for the check (default: the reward's)")
    p.add_argument("--subjects", default=",".join(SUBJECTS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    options = [o for o in args.options.split(",") if o]
    if set(options) - set(OPTIONS):
        raise ValueError(f"unknown --options {sorted(set(options) - set(OPTIONS))}; choose from {OPTIONS}")

    os.makedirs(args.output_dir, exist_ok=True)
    nsd_root = args.nsd_root or os.path.join(args.output_dir, "simnsd")
    if not os.path.isdir(os.path.join(nsd_root, "nsddata")):
        simulate_nsd(nsd_root, scale="tiny", seed=0)
    data = load_nsd(nsd_root, subjects=args.subjects.split(","), cache_dir=args.cache_dir or os.path.join(args.output_dir, "hf_datasets"))
    train = data["train"]
    torch.manual_seed(args.seed)
    if args.checkpoint:
        model, tokenizer = BrainPrefixGPT2.from_pretrained(args.checkpoint), AutoTokenizer.from_pretrained(args.checkpoint)
    else:
        model, tokenizer = random_stage1_model(train)
    start_state = copy.deepcopy(model.state_dict())
    stimuli = NSDStimuli(nsd_root)
    render_kwargs = dict(steps=args.render_steps, guidance=args.render_guidance, size=args.render_size or None)
    renderer = build_renderer(args.renderer, args.seed, **render_kwargs)
    cache_size = 0 if args.no_render_cache else 16384
    surrogate_fit = None

    def image_reward(option, clip):
        nonlocal surrogate_fit
        if option == "renderer":
            return CLIPImageImageReward(renderer=renderer, clip=clip, stimuli=stimuli, cache_size=cache_size)
        if option == "distilled":
            one_step = build_renderer(args.renderer, args.seed, steps=1, guidance=1.0, size=args.render_size or None,
                                      scheduler="LCMScheduler")
            return CLIPImageImageReward(renderer=one_step, clip=clip, stimuli=stimuli, cache_size=cache_size)
        if args.surrogate:
            surrogate = load_render_surrogate(args.surrogate, renderer=renderer, scorer=clip)
        else:
            surrogate, surrogate_fit = fit_bench_surrogate(renderer, clip, train, args.surrogate_captions, args.seed)
        extra = {k: v for k, v in dict(surrogate_render_fraction=args.surrogate_render_fraction,
                                       surrogate_check_batch=args.surrogate_check_batch).items() if v is not None}
        return CLIPImageImageReward(renderer=renderer, clip=clip, stimuli=stimuli, cache_size=cache_size,
                                    render_surrogate=surrogate, seed=args.seed, **extra)

    total_steps = args.warmup + args.steps
    keep = slice(args.warmup, None)
    results = {}
    for option in options:
        # each option its own CLIP (same weights): the text-embedding cache starts empty, as in a run
        clip = build_clip(args.clip_model, args.seed)
        rewards = {} if option == "floor" else {
            "object_accuracy": get_reward("object_accuracy"),
            "clip_text_image": get_reward("clip_text_image", clip=clip, stimuli=stimuli),
            "clip_image_image": image_reward(option, clip)}
        names = list(rewards)
        model.load_state_dict(start_state)
        run_dir = os.path.join(args.output_dir, "run", option)
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run (the trainer refuses a folder holding one)
        config = ReinforceConfig(output_dir=run_dir, rewards=names, reward_weights=[0.01] * len(names),
                                 num_samples=args.num_samples, baseline="leave_one_out", learning_rate=3e-4,
                                 max_steps=total_steps, per_device_train_batch_size=args.batch_size,
                                 logging_steps=1, seed=args.seed)
        trainer = ReinforceTrainer(model, tokenizer, config, train, rewards=list(rewards.values()))
        step_times, batches = [], []
        original_step = trainer.training_step

        def timed_step(batch, original_step=original_step, step_times=step_times, batches=batches):
            batches.append(batch)
            start = time.perf_counter()
            logs = original_step(batch)
            step_times.append(1000 * (time.perf_counter() - start))
            return logs

        trainer.training_step = timed_step
        trainer.train()
        steps = step_times[keep]
        parts = {"sampling (generate)": trainer.timings["sampling"]}
        parts.update({f"reward {n}": trainer.timings[f"reward/{n}"] for n in names})
        parts["forward + backward + optimiser"] = trainer.timings["backward"]
        ms = {k: 1000 * float(np.mean(v[keep])) for k, v in parts.items()}
        # the baseline, right after: CE steps of the same starting model on the same batches
        trained = trainer.accelerator.unwrap_model(trainer.model)
        trained.load_state_dict(start_state)
        ce = ce_step_ms(trained, batches[args.warmup :], 3e-4)
        history = trainer.history[args.warmup :]
        rendered = [h.get("reward/clip_image_image/rendered") for h in history]
        results[option] = {
            "ms_per_step": {**ms, "total": float(np.mean(steps))}, "median_step_ms": float(np.median(steps)),
            "percent": {k: 100 * v / float(np.mean(steps)) for k, v in ms.items()},
            "reward_fraction": sum(v for k, v in ms.items() if k.startswith("reward")) / float(np.mean(steps)),
            "ce_step_ms": float(np.mean(ce)), "median_ce_step_ms": float(np.median(ce)),
            "rl_over_ce": float(np.mean(steps) / np.mean(ce)), "median_rl_over_ce": float(np.median(steps) / np.median(ce)),
            "rendered_per_step": float(np.mean([r for r in rendered if r is not None])) if any(r is not None for r in rendered) else 0.0,
            "sample_length": float(np.mean([h["sample_length"] for h in history])),
        }
        if option == "surrogate":
            last = trainer.history[-1]
            results[option]["surrogate_log"] = {k.rsplit("/", 1)[1]: v for k, v in last.items()
                                                if k.startswith("reward/clip_image_image/surrogate")}
        print(f"[{option}] RL step {np.mean(steps):.1f} ms (median {np.median(steps):.1f}), CE step "
              f"{np.mean(ce):.1f} ms (median {np.median(ce):.1f}) -> {np.mean(steps) / np.mean(ce):.1f}x", flush=True)

    result = {"settings": {**vars(args), "model": args.checkpoint or "random sim_tiny.yaml model",
                           "threads": torch.get_num_threads()},
              "options": results, "surrogate_fit_here": surrogate_fit}
    print(f"\nRL step per image-reward option — SimNSD-tiny model ({result['settings']['model']}), batch "
          f"{args.batch_size} brains x K={args.num_samples} samples, CLIP '{args.clip_model}', renderer "
          f"'{args.renderer}' ({args.render_steps} steps, guidance {args.render_guidance:g}, size "
          f"{args.render_size or 'default'}), {args.steps} steps after {args.warmup} warm-up per option, "
          f"{torch.get_num_threads()} threads\n")
    parts = list(next(iter(r["ms_per_step"] for o, r in results.items() if o != "floor"), {}))
    parts = [k for k in parts if k != "total"] or ["sampling (generate)", "forward + backward + optimiser"]
    print("| ms per step | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for part in parts:
        print(f"| {part} | " + " | ".join(f"{r['ms_per_step'].get(part, 0.0):.1f}" for r in results.values()) + " |")
    print("| **RL step (mean / median)** | " + " | ".join(
        f"**{r['ms_per_step']['total']:.1f}** / {r['median_step_ms']:.1f}" for r in results.values()) + " |")
    print("| captions rendered per step | " + " | ".join(f"{r['rendered_per_step']:.1f}" for r in results.values()) + " |")
    print("| CE step beside it (mean / median) | " + " | ".join(
        f"{r['ce_step_ms']:.1f} / {r['median_ce_step_ms']:.1f}" for r in results.values()) + " |")
    print("| **RL step / CE step (mean; median)** | " + " | ".join(
        f"**{r['rl_over_ce']:.1f}x**; {r['median_rl_over_ce']:.1f}x" for r in results.values()) + " |")
    if surrogate_fit:
        print(f"\nSurrogate fitted here (one-off): {surrogate_fit['captions']} captions rendered in "
              f"{surrogate_fit['render_seconds']:.1f} s, fitted in {surrogate_fit['fit_seconds']:.1f} s")
    atomic_write_json(os.path.join(args.output_dir, "bench_rl_step.json"), result, default=str)
    return result


if __name__ == "__main__":
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
