"""Where an RL step's time goes: sampling (generate), each reward, and the forward/backward/optimiser update.

One :class:`fgb2i_hf.rl.ReinforceTrainer` run on SimNSD tiny with all three rewards (object accuracy, CLIP
text-image, CLIP image-image), the trainer's own timers (``trainer.timings``) read per step after ``--warmup``
steps. The baseline measured in the same run, on the same batches: a plain cross-entropy step of the same model
(forward + backward + AdamW), i.e. what stage 1 pays per step.

The model is the SimNSD-tiny stage-1 architecture (recipes/configs/sim_tiny.yaml): a trained checkpoint with
``--checkpoint`` (realistic caption lengths), else random weights (samples run to the length cap: the worst case).
CLIP and the renderer are random tiny models by default (``random-tiny``: a 32 px Stable Diffusion, the cost of
the mechanics, not of SD v1.4); ``--clip-model``/``--renderer`` take real names on a real machine.

    python benchmarks/bench_rl_step.py --checkpoint outputs/ce_sim_tiny/final --nsd-root simnsd
    python benchmarks/bench_rl_step.py --no-render-cache      # render every sample (no caption cache)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_rl_ablation import RANDOM_TINY, REWARDS, SIM_TINY, SUBJECTS, build_rewards  # noqa: E402


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


def ce_step_ms(model, batches, lr: float) -> float:
    """Mean ms of a plain cross-entropy step (forward, backward, AdamW) over ``batches``, after one warm-up."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    times = []
    for batch in batches:
        start = time.perf_counter()
        loss = model(betas=batch["betas"], subject=batch["subject"], input_ids=batch["input_ids"],
                     attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.mean(times[1:] if len(times) > 1 else times))


def split_table(ms: dict[str, float], total: float) -> list[tuple[str, float, float]]:
    """(part, ms per step, % of the step) rows; ``other`` is the step's remainder (collation, decoding, logs)."""
    rows = [(k, v, 100 * v / total) for k, v in ms.items()]
    other = total - sum(ms.values())
    rows.append(("other (collate, decode, advantages)", other, 100 * other / total))
    return rows


def main(argv=None) -> dict:
    from transformers import AutoTokenizer

    from fgb2i_hf import BrainPrefixGPT2
    from fgb2i_hf.core import atomic_write_json
    from fgb2i_hf.data import NSDStimuli, load_nsd
    from fgb2i_hf.simnsd import simulate_nsd
    from fgb2i_hf.rl import ReinforceConfig, ReinforceTrainer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="stage-1 model folder; default: random weights of sim_tiny.yaml's model")
    p.add_argument("--nsd-root", help="SimNSD root (default: <output-dir>/simnsd, simulated tiny if absent)")
    p.add_argument("--cache-dir", help="datasets cache (default: <output-dir>/hf_datasets)")
    p.add_argument("--output-dir", default="outputs/bench_rl_step")
    p.add_argument("--steps", type=int, default=8, help="steps measured (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--clip-model", default=RANDOM_TINY)
    p.add_argument("--renderer", default=RANDOM_TINY)
    p.add_argument("--render-steps", type=int, default=2, help="renderer denoising steps")
    p.add_argument("--render-guidance", type=float, default=7.5, help="renderer guidance (1: no classifier-free pass)")
    p.add_argument("--render-size", type=int, default=0, help="rendered image size (0: the pipeline's own, 32 px)")
    p.add_argument("--no-render-cache", action="store_true", help="render every sampled caption (cache_size=0)")
    p.add_argument("--subjects", default=",".join(SUBJECTS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

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
    names = list(REWARDS.values())
    rewards = build_rewards(names, args.clip_model, args.renderer, NSDStimuli(nsd_root), args.seed,
                            steps=args.render_steps, guidance=args.render_guidance, size=args.render_size or None)
    if args.no_render_cache:
        rewards["clip_image_image"].cache_size = 0
    start_state = {k: v.clone() for k, v in model.state_dict().items()}

    total_steps = args.warmup + args.steps
    # a fresh run: the trainer refuses a folder that holds one
    shutil.rmtree(os.path.join(args.output_dir, "run"), ignore_errors=True)
    config = ReinforceConfig(output_dir=os.path.join(args.output_dir, "run"), rewards=names,
                             reward_weights=[0.01] * len(names), num_samples=args.num_samples,
                             baseline="leave_one_out", learning_rate=3e-4, max_steps=total_steps,
                             per_device_train_batch_size=args.batch_size, logging_steps=total_steps, seed=args.seed)
    trainer = ReinforceTrainer(model, tokenizer, config, train, rewards=[rewards[n] for n in names])
    step_times, batches = [], []
    original_step = trainer.training_step

    def timed_step(batch):
        batches.append(batch)
        start = time.perf_counter()
        logs = original_step(batch)
        step_times.append(time.perf_counter() - start)
        return logs

    trainer.training_step = timed_step
    trainer.train()

    keep = slice(args.warmup, None)
    total = 1000 * float(np.mean(step_times[keep]))
    parts = {"sampling (generate)": trainer.timings["sampling"]}
    parts.update({f"reward {n}": trainer.timings[f"reward/{n}"] for n in names})
    parts["forward + backward + optimiser"] = trainer.timings["backward"]
    ms = {k: 1000 * float(np.mean(v[keep])) for k, v in parts.items()}
    reward_ms = sum(v for k, v in ms.items() if k.startswith("reward"))

    # the baseline: plain CE steps of the same (starting) model on the same batches
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.load_state_dict(start_state)
    ce_ms = ce_step_ms(model, batches[: max(args.steps, 2)], 3e-4)

    log = trainer.history[-1]
    cache = rewards["clip_image_image"]
    result = {"settings": {**vars(args), "model": args.checkpoint or "random sim_tiny.yaml model",
                           "threads": torch.get_num_threads(),
                           "mean_sample_tokens_last_step": log.get("sample_length")},
              "ms_per_step": {**ms, "total": total}, "percent": {k: 100 * v / total for k, v in ms.items()},
              "reward_fraction": reward_ms / total, "ce_step_ms": ce_ms, "rl_over_ce": total / ce_ms,
              "render_cache_entries": len(cache.rendered) if cache.cache_size else 0}
    print(f"\nRL step cost split — SimNSD-tiny model ({result['settings']['model']}), batch {args.batch_size} brains "
          f"x K={args.num_samples} samples, rewards {names}, CLIP '{args.clip_model}', renderer '{args.renderer}' "
          f"({args.render_steps} steps, guidance {args.render_guidance:g}, size {args.render_size or 32}, caption cache {'off' if args.no_render_cache else 'on'}), "
          f"{args.steps} steps after {args.warmup} warm-up, {torch.get_num_threads()} threads\n")
    print("| part | ms / step | % of step |\n|---|---|---|")
    for name, value, pct in split_table(ms, total):
        print(f"| {name} | {value:.1f} | {pct:.1f}% |")
    print(f"| **RL step (total)** | **{total:.1f}** | 100% |")
    print(f"\nFraction of the step in rewards: {100 * result['reward_fraction']:.1f}% ({reward_ms:.1f} ms)")
    print(f"Baseline, same run and batches: a CE-only step {ce_ms:.1f} ms -> an RL step costs {total / ce_ms:.1f}x")
    print(f"Mean sampled caption length (last step): {log.get('sample_length', float('nan')):.1f} tokens")
    atomic_write_json(os.path.join(args.output_dir, "bench_rl_step.json"), result, default=str)
    return result


if __name__ == "__main__":
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
