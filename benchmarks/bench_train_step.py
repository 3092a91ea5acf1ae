"""Training throughput of one cross-entropy step of BrainPrefixGPT2, and its model-FLOP utilisation (MFU).

A step is forward + backward + AdamW update at batch 32 (mixed subjects: NSD subjects 1, 2, 5 and 7 with their
nsdgeneral voxel counts, the paper's unified model), GPT-2-base-size language model (random weights, vocabulary
50257), prefix 10, mapper 8 x 8, GPT-2 frozen (prefix tuning, the paper's setting; ``--train-lm`` trains it too).

MFU = (FLOPs of one step / seconds per step) / peak, where the FLOPs are counted by ``torch.utils.flop_counter``
on one forward + backward (matrix products and attention; the optimizer's element-wise work is not counted), and
the peak is the best fp32 matrix-product rate measured in the same run on the same device (N x N @ N x N).
A frozen GPT-2 still needs its backward pass for the input gradients (the prefix learns through it), but no
weight gradients, so a step costs about 2x the forward FLOPs rather than 3x.

    python benchmarks/bench_train_step.py            # full size (a CPU needs minutes and ~10 GB; a GPU seconds)
    python benchmarks/bench_train_step.py --quick    # small model: a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from fgb2i_hf import BrainPrefixGPT2, BrainPrefixGPT2Config
from fgb2i_hf.core import atomic_write_json

NSD_VOXELS = {"subj01": 15724, "subj02": 14278, "subj05": 13039, "subj07": 12682}


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, n: int, repeats: int = 5) -> float:
    """Best fp32 N x N matrix-product rate in FLOP/s."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * n**3 / best


def build(args):
    counts = {s: (n if not args.quick else n // 64) for s, n in list(NSD_VOXELS.items())[: args.subjects]}
    gpt2 = dict(vocab_size=50257, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head)
    config = BrainPrefixGPT2Config(voxel_counts=counts, prefix_length=10, mapper_layers=8, mapper_heads=8,
                                   subject_hidden_size=args.subject_hidden_size, gpt2_config=gpt2,
                                   freeze_language_model=not args.train_lm)
    torch.manual_seed(args.seed)
    model = BrainPrefixGPT2(config).to(args.device).train()
    generator = torch.Generator().manual_seed(args.seed)
    subjects = [list(counts)[i % len(counts)] for i in range(args.batch)]
    betas = torch.zeros(args.batch, max(counts.values()))
    for i, s in enumerate(subjects):
        betas[i, : counts[s]] = torch.randn(counts[s], generator=generator)
    input_ids = torch.randint(0, 50256, (args.batch, args.caption_tokens), generator=generator)
    batch = {"betas": betas.to(args.device), "subject": subjects, "input_ids": input_ids.to(args.device),
             "attention_mask": torch.ones_like(input_ids).to(args.device), "labels": input_ids.to(args.device)}
    return model, batch, counts


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model (2 layers, width 128), batch 8")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--caption-tokens", type=int, default=64, help="caption length (all real tokens)")
    parser.add_argument("--subjects", type=int, default=4, help="how many of NSD subjects 1, 2, 5, 7 to mix")
    parser.add_argument("--subject-hidden-size", type=int, default=None)
    parser.add_argument("--train-lm", action="store_true", help="train GPT-2 too (default: frozen)")
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--n-head", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-size", type=int, default=None, help="matrix size for the peak (default 8192 GPU, 2048 CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); default: torch's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    if "--quick" in (sys.argv[1:] if argv is None else argv):  # smaller defaults; explicit flags still win
        parser.set_defaults(batch=8, caption_tokens=16, n_layer=2, n_embd=128, n_head=4, steps=2, warmup=1)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.device(args.device).type == "cuda"
    peak_size = args.peak_size or (8192 if cuda else (512 if args.quick else 2048))

    model, batch, counts = build(args)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step():
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    flops = counter.get_total_flops()
    optimizer.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as forward_counter, torch.no_grad():
        model(**batch)
    forward_flops = forward_counter.get_total_flops()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        synchronize(args.device)
        start = time.perf_counter()
        step()
        synchronize(args.device)
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]  # median
    peak = matmul_peak(args.device, peak_size)
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    achieved = flops / seconds
    results = {
        "device": device_name, "threads": torch.get_num_threads(), "batch": args.batch,
        "caption_tokens": args.caption_tokens, "subjects": counts, "n_layer": args.n_layer, "n_embd": args.n_embd,
        "frozen_lm": not args.train_lm, "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()), "step_seconds_median": seconds,
        "step_seconds": times, "samples_per_s": args.batch / seconds, "step_flops": flops,
        "forward_flops": forward_flops, "achieved_flops_per_s": achieved, "fp32_matmul_peak_flops_per_s": peak,
        "peak_matrix_size": peak_size, "mfu": achieved / peak,
    }
    if cuda:
        results["max_memory_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print(f"model: GPT-2 {args.n_layer} x {args.n_embd} (vocab 50257, {'frozen' if not args.train_lm else 'trained'}), "
          f"prefix 10, mapper 8x8, subjects {counts}, subject_hidden_size {args.subject_hidden_size}; "
          f"{results['trainable_params'] / 1e6:.1f}M of {results['total_params'] / 1e6:.1f}M parameters trained; "
          f"fp32 on {device_name} ({torch.get_num_threads()} CPU threads)")
    print(f"batch {args.batch} x {args.caption_tokens} caption tokens ({len(counts)} subject(s) mixed), AdamW: "
          f"{seconds * 1e3:.1f} ms/step (median of {args.steps}), {args.batch / seconds:.2f} samples/s")
    print(f"FLOPs per step {flops / 1e12:.3f} T (forward {forward_flops / 1e12:.3f} T, ratio {flops / forward_flops:.2f}); "
          f"achieved {achieved / 1e12:.3f} TFLOP/s; fp32 matmul peak ({peak_size}^3) {peak / 1e12:.3f} TFLOP/s; "
          f"MFU {100 * achieved / peak:.1f}%")
    if args.json:
        atomic_write_json(args.json, results, indent=1)
    return results


if __name__ == "__main__":
    main()
