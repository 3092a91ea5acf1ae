"""One MindEye training step on this machine at reduced width, and the paper-size model's FLOPs and training time.

Measured here (CPU, float32, batch 8, NSD subject 1's 15,724 voxels, real 257 x 768 CLIP tokens and 4 x 64 x 64
latents, but hidden width 256, projector 256, prior depth 1, a 256-wide low-level MLP and a [16, 32, 64]-channel
upsampler instead of [64, 128, 256]): seconds per step
(forward + backward + AdamW) and the peak resident memory, for the full loss (contrastive + prior + low-level) and,
as the baseline measured in the same run, the contrastive-only step (backbone + projector).

Counted (``torch.utils.flop_counter.FlopCounterMode`` on the meta device, so nothing is allocated): the FLOPs of one
forward + backward of the paper-size model (MindEyeConfig defaults = MindEye1: hidden 4096, 4 blocks, projector
2048, prior 6 layers x 12 heads x 64 on 515 tokens, low-level 4096-wide MLP and 4x upsampler) at batch 32.

Estimated (not measured: no GPU here): hours for MindEye1's schedule, 240 epochs x floor(8,859 / 32) = 276 steps,
per subject, at an assumed sustained rate (default 100 TFLOP/s: about a third of an A100's 312 TFLOP/s fp16 dense
peak; pass --assumed-tflops).

    python benchmarks/bench_mindeye_step.py [--steps 3] [--assumed-tflops 100]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fgb2i_hf import MindEyeConfig, MindEyeModel
from fgb2i_hf.core import atomic_write_json
from fgb2i_hf.models.mindeye.losses import low_level_loss, soft_clip_loss

VOXELS = 15724  # NSD subj01 nsdgeneral (MindEye1 Train_MindEye.py)
EPOCHS, TRAIN_IMAGES, BATCH = 240, 8859, 32  # MindEye1: 240 epochs, 8,559 + 300 images, batch 32
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mindeye_step.json")
REDUCED = dict(hidden_size=256, projector_hidden_size=256, prior_depth=1, low_level_hidden_size=256,
               low_level_channels=16, low_level_block_out_channels=[16, 32, 64], low_level_norm_num_groups=16)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def step_loss(model, betas, clip, latents, full: bool):
    if full:
        out = model(betas, "subj01", clip_image_embeds=clip)
    else:
        backbone = model.backbone(betas, "subj01")
        out = type("Out", (), {"retrieval_embeds": model.projector(backbone), "prior_loss": None,
                               "blurry_latents": None})
    brain = F.normalize(out.retrieval_embeds.flatten(1), dim=-1)
    loss = soft_clip_loss(brain, F.normalize(clip.flatten(1), dim=-1), 0.004)
    if out.prior_loss is not None:
        loss = loss + 30 * out.prior_loss
    if out.blurry_latents is not None:
        loss = loss + low_level_loss(out.blurry_latents, latents)
    return loss


def time_steps(full: bool, steps: int, batch: int) -> dict:
    torch.manual_seed(0)
    model = MindEyeModel(MindEyeConfig(voxel_counts={"subj01": VOXELS}, **REDUCED)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-2)
    betas, clip = torch.randn(batch, VOXELS), torch.randn(batch, 257, 768)
    latents = torch.randn(batch, 4, 64, 64)
    times = []
    for i in range(steps + 1):  # the first step warms up (allocations, kernels) and is not timed
        start = time.perf_counter()
        loss = step_loss(model, betas, clip, latents, full)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - start)
    return {"seconds_per_step": min(times), "parameters": sum(p.numel() for p in model.parameters()),
            "peak_rss_mb_after": peak_rss_mb()}


def _count(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn().sum().backward()
    return int(counter.get_total_flops())


def paper_flops(batch: int) -> dict:
    """Forward + backward FLOPs of the paper-size model, counted on the meta device: the whole step, and each part
    alone on a leaf input (FlopCounterMode's per-module split is unreliable across backward passes)."""
    with torch.device("meta"):
        model = MindEyeModel(MindEyeConfig(voxel_counts={"subj01": VOXELS})).train()
        betas, clip = torch.randn(batch, VOXELS), torch.randn(batch, 257, 768)
        latents = torch.randn(batch, 4, 64, 64)
        tokens = torch.randn(batch, 257, 768, requires_grad=True)
    total = _count(lambda: step_loss(model, betas, clip, latents, full=True))
    parts = {"backbone": _count(lambda: model.backbone(betas, "subj01")),
             "projector": _count(lambda: model.projector(tokens)),
             "prior": _count(lambda: model.prior.loss(tokens, clip)[0]),
             "low_level": _count(lambda: model.low_level(betas, "subj01"))}
    params = sum(p.numel() for p in model.parameters())
    return {"flops_per_step": total, "by_part": parts, "parameters": int(params)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="Timed steps (the best is reported).")
    parser.add_argument("--batch", type=int, default=8, help="Batch of the CPU timing.")
    parser.add_argument("--assumed-tflops", type=float, default=100.0,
                        help="Sustained training rate assumed for the time estimate (TFLOP/s).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rss_start = peak_rss_mb()
    baseline = time_steps(full=False, steps=args.steps, batch=args.batch)
    full = time_steps(full=True, steps=args.steps, batch=args.batch)
    flops = paper_flops(BATCH)
    steps_per_epoch = TRAIN_IMAGES // BATCH
    total_steps = EPOCHS * steps_per_epoch
    hours = flops["flops_per_step"] * total_steps / (args.assumed_tflops * 1e12) / 3600
    result = {
        "cpu_reduced_width": {
            "config": {**REDUCED, "voxels": VOXELS, "clip_tokens": 257, "clip_dim": 768, "batch": args.batch,
                       "threads": torch.get_num_threads()},
            "contrastive_only_step_s": baseline["seconds_per_step"],
            "full_step_s": full["seconds_per_step"],
            "full_vs_contrastive_only": full["seconds_per_step"] / baseline["seconds_per_step"],
            "parameters": full["parameters"],
            "peak_rss_mb": full["peak_rss_mb_after"], "peak_rss_mb_at_start": rss_start},
        "paper_size": {"batch": BATCH, **flops,
                       "steps": {"epochs": EPOCHS, "steps_per_epoch": steps_per_epoch, "total": total_steps},
                       "assumed_tflops": args.assumed_tflops,
                       "estimated_hours_per_subject": hours,
                       "note": "estimate: FLOPs counted, throughput assumed (no GPU measured)"},
    }
    cpu = result["cpu_reduced_width"]
    print(f"CPU, reduced width ({cpu['parameters'] / 1e6:.1f} M parameters, batch {args.batch}, "
          f"{cpu['config']['threads']} threads):")
    print(f"  contrastive-only step {cpu['contrastive_only_step_s']:.2f} s (baseline), full step "
          f"{cpu['full_step_s']:.2f} s = {cpu['full_vs_contrastive_only']:.2f}x; peak RSS {cpu['peak_rss_mb']:.0f} MB")
    paper = result["paper_size"]
    print(f"Paper size ({paper['parameters'] / 1e6:.0f} M parameters), batch {BATCH}: "
          f"{paper['flops_per_step'] / 1e12:.2f} TFLOP per step (forward + backward)")
    for part, value in paper["by_part"].items():
        print(f"  {part:10} {value / 1e12:7.3f} TFLOP ({value / paper['flops_per_step']:.0%})")
    print(f"MindEye1 schedule: {EPOCHS} epochs x {steps_per_epoch} steps = {total_steps} steps -> "
          f"~{hours:.1f} h per subject at an assumed {args.assumed_tflops:.0f} TFLOP/s (estimate)")
    atomic_write_json(RESULTS, result)
    return result


if __name__ == "__main__":
    main()
