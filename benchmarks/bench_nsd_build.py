"""Benchmark: build one full-scale SimNSD subject and iterate its train split as torch batches.

Goals (issue 2): build peak RSS <= 2 GB (betas are streamed session by session); iterating the train split in
batches of 64 as torch tensors >= 20,000 rows/s with peak anonymous RSS <= 1 GB (the Arrow data stays
memory-mapped). Each figure is printed with a baseline measured in the same run:
- build: reading the same 40 hdf5 sessions and masking them, nothing else (the I/O floor);
- iteration: slicing the same betas from a float16 .npy memory map into float32 torch tensors.
Iteration is measured three ways: the numpy formatter + ``fgb2i_hf.data.betas_tensor`` (the recommended path),
and datasets' torch formatter in float32 and float16 (its ``torch.tensor`` conversion is slower on CPU).

Every phase runs in its own process so that its peak memory is its own.

    python benchmarks/bench_nsd_build.py            # simulates bench_output/simnsd_full (~1.3 GB), deletes it after
    python benchmarks/bench_nsd_build.py --keep     # keep SimNSD and the built dataset for another run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

BATCH = 64


def _status(field: str) -> float:
    """A /proc/self/status field in MB (VmHWM = peak RSS, RssAnon = anonymous resident memory)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def phase_simulate(args) -> dict:
    from fgb2i_hf.simnsd import simulate_nsd

    t = time.time()
    simulate_nsd(args.root, scale="full", subjects=[args.subject], overwrite=True, progress=True)
    return {"seconds": time.time() - t, "peak_rss_mb": _status("VmHWM")}


def phase_read_only(args) -> dict:
    """Baseline: read and mask every session, as the build's first pass does, and write nothing."""
    from fgb2i_hf.data.betas import available_sessions, read_nsdgeneral, read_session, voxel_order
    from fgb2i_hf.data.layout import NSDPaths

    paths = NSDPaths(args.root)
    order = voxel_order(read_nsdgeneral(paths, args.subject))
    t = time.time()
    for path in available_sessions(paths, args.subject).values():
        read_session(path, order)
    return {"seconds": time.time() - t, "peak_rss_mb": _status("VmHWM")}


def phase_build(args) -> dict:
    import datasets

    from fgb2i_hf.data import load_nsd

    datasets.disable_progress_bars()
    t = time.time()
    dd = load_nsd(args.root, subjects=[args.subject], cache_dir=args.cache_dir, download_mode="force_redownload")
    return {"seconds": time.time() - t, "peak_rss_mb": _status("VmHWM"), "train_rows": len(dd["train"]),
            "test_rows": len(dd["test"]), "voxels": len(dd["test"][0]["betas"]),
            "arrow_mb": sum(os.path.getsize(f["filename"]) for f in dd["train"].cache_files) / 2**20}


def phase_iterate(args) -> dict:
    import datasets
    import numpy as np
    import torch

    from fgb2i_hf.data import load_nsd

    datasets.disable_progress_bars()
    train = load_nsd(args.root, subjects=[args.subject], cache_dir=args.cache_dir)["train"]
    from fgb2i_hf.data import betas_tensor

    out = {"rss_anon_start_mb": _status("RssAnon")}
    paths = {
        # recommended: numpy formatter + numpy's float16 -> float32 conversion
        "numpy+betas_tensor": (train.with_format("numpy", columns=["betas"]), lambda b: betas_tensor(b)),
        # datasets' torch formatter (converts with torch.tensor: slower on CPU)
        "torch format f32": (train.with_format("torch", columns=["betas"]), lambda b: b),
        "torch format f16": (train.with_format("torch", columns=["betas"], dtype=torch.float16), lambda b: b),
    }
    for name, (ds, to_tensor) in paths.items():
        peak, n, t = 0.0, 0, time.time()
        for start in range(0, len(ds), BATCH):
            batch = to_tensor(ds[start:start + BATCH]["betas"])
            n += batch.shape[0]
            peak = max(peak, _status("RssAnon"))
        assert isinstance(batch, torch.Tensor) and batch.ndim == 2
        out[name] = {"rows_per_s": n / (time.time() - t), "peak_rss_anon_mb": peak, "dtype": str(batch.dtype)}
    # baseline: the same betas as a float16 .npy memory map, sliced into tensors
    path = os.path.join(args.cache_dir, "baseline_betas.npy")
    n_vox = len(train[0]["betas"])
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(len(train), n_vox))
    for start in range(0, len(train), 1024):
        mm[start:start + 1024] = np.stack(train.with_format("numpy", columns=["betas"])[start:start + 1024]["betas"])
    mm.flush()
    del mm
    mm = np.lib.format.open_memmap(path, mode="r")
    t, n = time.time(), 0
    for start in range(0, len(mm), BATCH):
        batch = torch.from_numpy(np.asarray(mm[start:start + BATCH], dtype=np.float32))
        n += batch.shape[0]
    out["baseline_npy_rows_per_s"] = n / (time.time() - t)
    os.remove(path)
    return out


PHASES = {"simulate": phase_simulate, "read_only": phase_read_only, "build": phase_build, "iterate": phase_iterate}


def run_phase(name: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", name, "--root", args.root,
           "--cache-dir", args.cache_dir, "--subject", args.subject]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"phase {name} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="bench_output/simnsd_full")
    parser.add_argument("--cache-dir", default="bench_output/hf_datasets")
    parser.add_argument("--subject", default="subj01")
    parser.add_argument("--keep", action="store_true", help="keep SimNSD and the built dataset")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.root, args.cache_dir = os.path.abspath(args.root), os.path.abspath(args.cache_dir)
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return

    os.makedirs(args.cache_dir, exist_ok=True)
    if not os.path.isfile(os.path.join(args.root, "simnsd", "config.json")):
        sim = run_phase("simulate", args)
        print(f"simulate full-scale {args.subject}: {sim['seconds']:.0f} s, peak RSS {sim['peak_rss_mb']:.0f} MB")
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.root) for f in fs) / 2**30
    print(f"SimNSD full {args.subject}: {size:.2f} GB on disk ({args.root})")
    base = run_phase("read_only", args)
    build = run_phase("build", args)
    it = run_phase("iterate", args)
    print(f"\n{build['train_rows']} train trials + {build['test_rows']} test images x {build['voxels']} voxels "
          f"(train Arrow {build['arrow_mb']:.0f} MB)")
    print(f"build wall time   {build['seconds']:8.1f} s    baseline read+mask only {base['seconds']:.1f} s "
          f"(ratio {build['seconds'] / base['seconds']:.2f}x)")
    print(f"build peak RSS    {build['peak_rss_mb']:8.0f} MB   goal <= 2048 MB  "
          f"{'OK' if build['peak_rss_mb'] <= 2048 else 'MISSED'}   (baseline read-only {base['peak_rss_mb']:.0f} MB)")
    for name in ("numpy+betas_tensor", "torch format f32", "torch format f16"):
        r = it[name]
        print(f"iterate bs={BATCH} {name:<19} ({r['dtype'][6:]}) {r['rows_per_s']:7.0f} rows/s  goal >= 20000  "
              f"{'OK' if r['rows_per_s'] >= 20000 else 'MISSED'}   (baseline .npy memmap {it['baseline_npy_rows_per_s']:.0f} rows/s, "
              f"ratio {r['rows_per_s'] / it['baseline_npy_rows_per_s']:.2f})")
        print(f"  peak RssAnon    {r['peak_rss_anon_mb']:8.0f} MB   goal <= 1024 MB  "
              f"{'OK' if r['peak_rss_anon_mb'] <= 1024 else 'MISSED'}   (at start {it['rss_anon_start_mb']:.0f} MB)")
    if not args.keep:
        shutil.rmtree(args.root, ignore_errors=True)
        shutil.rmtree(args.cache_dir, ignore_errors=True)
        print("\n(removed SimNSD and the built dataset; pass --keep to keep them)")


if __name__ == "__main__":
    main()
