"""RidgeDecoder (himalaya CV + float64 refit) against scikit-learn's RidgeCV at NSD scale.

    python benchmarks/bench_ridge.py            # NSD scale: 8,859 x 15,724 betas -> 59,136 targets (77 x 768)
    python benchmarks/bench_ridge.py --quick    # 2,000 x 4,000 -> 8,192, a minute or two

Synthetic betas and targets share a 64-dimensional latent code (X = Z A + noise, Y = Z B + noise with a
different noise level per column), float32, the same alpha grid for everyone (Takagi's two grids). Each fit runs
in its own process so that its peak memory (ru_maxrss) is its own; the printed "fit overhead" subtracts the
process's memory after the data were generated. Runs, one process each:

* ``ours``: ``RidgeDecoder`` on all target columns, 5-fold CV, one alpha per column;
* on a column subset (scikit-learn's RidgeCV upcasts to float64 and keeps several N x T arrays; at 59,136
  columns that does not fit in 24 GB, so the comparison uses ``--subset`` columns):
  - ``ours_subset`` vs ``sklearn_loo``: per-column alphas. scikit-learn supports per-target alphas only with its
    efficient leave-one-out CV (``cv=None``), so the CV schemes differ (5-fold vs LOO);
  - ``ours_shared`` vs ``sklearn_kfold``: one shared alpha, the same 5 unshuffled folds and the same loss
    (mean squared error over all columns): the same CV scheme;
* ``--himalaya``: also himalaya's own ``RidgeCV`` (Takagi's call: primal SVD solver) on the subset.

Agreement: the correlation between two methods' held-out predictions per column (mean and min), the largest
absolute difference relative to the predictions' standard deviation, the share of identical alphas; accuracy:
each method's mean held-out correlation with the true targets.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

TAKAGI_ALPHAS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e4, 2e4, 4e4]
SIZES = {"full": dict(n=8859, voxels=15724, targets=59136, n_test=982, subset=2048),
         "quick": dict(n=2000, voxels=4000, targets=8192, n_test=500, subset=1024)}


def make_data(n, n_test, voxels, targets, seed=0, latent=64):
    """Train and held-out betas and targets with a shared latent code; float32."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n + n_test, latent), dtype=np.float32)
    x = z @ rng.standard_normal((latent, voxels), dtype=np.float32)
    y = z @ (rng.standard_normal((latent, targets), dtype=np.float32) / np.sqrt(latent))
    noise_level = rng.uniform(0.3, 3.0, targets).astype(np.float32)
    for start in range(0, n + n_test, 512):  # noise in row blocks: no full-size temporaries
        rows = slice(start, start + 512)
        x[rows] += 4.0 * rng.standard_normal(x[rows].shape, dtype=np.float32)
        y[rows] += noise_level * rng.standard_normal(y[rows].shape, dtype=np.float32)
    return x[:n], y[:n], x[n:], y[n:]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def current_rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def worker(args):
    """One fit in this process; writes held-out predictions (subset columns) and a JSON record."""
    import torch

    torch.set_num_threads(args.threads)
    size = SIZES["quick" if args.quick else "full"] | {k: v for k, v in vars(args).items()
                                                      if k in ("n", "voxels", "targets") and v is not None}
    x, y, x_test, y_test = make_data(size["n"], size["n_test"], size["voxels"], size["targets"])
    subset = np.linspace(0, size["targets"] - 1, size["subset"]).astype(int)
    if args.worker != "ours":
        y = np.ascontiguousarray(y[:, subset])
    rss_data = current_rss_gb()
    alphas = np.asarray(args.alphas)
    start = time.perf_counter()
    if args.worker in ("ours", "ours_subset", "ours_shared"):
        from fgb2i_hf.decoders import RidgeDecoder

        decoder = RidgeDecoder(num_voxels=x.shape[1], target_shape=(y.shape[1],), alphas=alphas, cv=args.cv,
                               alpha_per_target=args.worker != "ours_shared")
        decoder.fit(x, y, device="cpu", progress=False)
        seconds = time.perf_counter() - start
        pred = decoder.predict(x_test).numpy()
        chosen = decoder.alpha.numpy().astype(np.float64)
    else:
        from sklearn.model_selection import KFold
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(x)
        xs = scaler.transform(x)
        if args.worker == "himalaya_ridgecv":
            from himalaya.backend import set_backend
            from himalaya.ridge import RidgeCV as HimalayaRidgeCV

            set_backend("torch")
            mean = y.mean(0)
            model = HimalayaRidgeCV(alphas=alphas.astype(np.float32), cv=args.cv,
                                    solver_params=dict(local_alpha=True, warn=False))
            model.fit(torch.from_numpy(xs), torch.from_numpy(y - mean))
            seconds = time.perf_counter() - start
            pred = model.predict(torch.from_numpy(scaler.transform(x_test))).numpy() + mean
            chosen = model.best_alphas_.numpy().astype(np.float64)
        else:
            from sklearn.linear_model import RidgeCV

            if args.worker == "sklearn_loo":
                model = RidgeCV(alphas=alphas, alpha_per_target=True)  # efficient LOO (GCV), fit_intercept=True
            else:
                model = RidgeCV(alphas=alphas, cv=KFold(args.cv), scoring="neg_mean_squared_error")
            model.fit(xs, y)
            seconds = time.perf_counter() - start
            pred = model.predict(scaler.transform(x_test))
            chosen = np.broadcast_to(np.asarray(model.alpha_, np.float64), (y.shape[1],))
    if args.worker == "ours":
        pred, chosen = pred[:, subset], chosen[subset]
    np.save(os.path.join(args.out, f"{args.worker}_pred.npy"), pred.astype(np.float32))
    np.save(os.path.join(args.out, f"{args.worker}_alpha.npy"), chosen)
    record = {"seconds": seconds, "peak_rss_gb": peak_rss_gb(), "rss_after_data_gb": rss_data,
              "test_r": float(np.mean(column_corr(pred, y_test[:, subset]))), "shape": [*x.shape, y.shape[1]]}
    with open(os.path.join(args.out, f"{args.worker}.json"), "w") as f:
        json.dump(record, f)


def column_corr(a, b):
    a = a - a.mean(0)
    b = b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def run(name, args, out):
    command = [sys.executable, __file__, "--worker", name, "--out", out, "--threads", str(args.threads),
               "--cv", str(args.cv), "--alphas", *map(str, args.alphas)]
    command += ["--quick"] if args.quick else []
    for key in ("n", "voxels", "targets"):
        if getattr(args, key) is not None:
            command += [f"--{key}", str(getattr(args, key))]
    env = os.environ | {k: str(args.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    print(f"  running {name} ...", flush=True)
    subprocess.run(command, check=True, env=env)
    with open(os.path.join(out, f"{name}.json")) as f:
        return json.load(f)


def agreement(out, a, b):
    pa, pb = (np.load(os.path.join(out, f"{m}_pred.npy")).astype(np.float64) for m in (a, b))
    r = column_corr(pa, pb)
    alphas_a, alphas_b = (np.load(os.path.join(out, f"{m}_alpha.npy")) for m in (a, b))
    same_alpha = np.isclose(alphas_a, alphas_b, rtol=1e-4)
    return {"r_mean": float(r.mean()), "r_min": float(r.min()),
            "max_abs_diff_over_std": float(np.abs(pa - pb).max() / pb.std()), "same_alpha": float(same_alpha.mean())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller problem (2,000 x 4,000 -> 8,192)")
    parser.add_argument("--n", type=int, help="override the number of training rows")
    parser.add_argument("--voxels", type=int, help="override the number of voxels")
    parser.add_argument("--targets", type=int, help="override the number of target columns")
    parser.add_argument("--alphas", type=float, nargs="+", default=TAKAGI_ALPHAS)
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--himalaya", action="store_true", help="also time himalaya's RidgeCV (Takagi's call)")
    parser.add_argument("--skip-full", action="store_true", help="skip the all-columns fit")
    parser.add_argument("--skip-kfold", action="store_true",
                        help="skip scikit-learn's 5-fold RidgeCV (hours at NSD scale on 2 cores)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    size = SIZES["quick" if args.quick else "full"] | {k: v for k, v in vars(args).items()
                                                      if k in ("n", "voxels", "targets") and v is not None}
    print(f"RidgeDecoder vs scikit-learn RidgeCV: {size['n']} x {size['voxels']} betas -> {size['targets']} targets "
          f"(scikit-learn on {size['subset']} of them), float32, {len(args.alphas)} alphas, {args.cv}-fold, "
          f"{args.threads} threads, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as out:
        runs = {}
        names = (["ours"] if not args.skip_full else []) + ["ours_subset", "sklearn_loo"]
        names += [] if args.skip_kfold else ["ours_shared", "sklearn_kfold"]
        names += ["himalaya_ridgecv"] if args.himalaya else []
        for name in names:
            runs[name] = run(name, args, out)
        print(f"\n{'run':18} {'targets':>8} {'fit s':>9} {'peak GB':>8} {'fit overhead GB':>16} {'held-out r':>11}")
        for name, rec in runs.items():
            print(f"{name:18} {rec['shape'][2]:8d} {rec['seconds']:9.1f} {rec['peak_rss_gb']:8.2f} "
                  f"{rec['peak_rss_gb'] - rec['rss_after_data_gb']:16.2f} {rec['test_r']:11.4f}")
        print("\nsame columns, scikit-learn time / ours:")
        pairs = [("ours_subset", "sklearn_loo", "per-column alphas (ours 5-fold, sklearn LOO)")]
        pairs += [] if args.skip_kfold else [("ours_shared", "sklearn_kfold", "shared alpha, same 5 folds")]
        pairs += [("ours_subset", "himalaya_ridgecv", "per-column alphas, himalaya RidgeCV")] if args.himalaya else []
        if "ours" in runs:
            pairs.append(("ours", "ours_subset", "all columns vs subset fit, subset predictions"))
        for a, b, what in pairs:
            agree = agreement(out, a, b)
            print(f"  {what}: {b} {runs[b]['seconds']:.1f} s / {a} {runs[a]['seconds']:.1f} s = "
                  f"{runs[b]['seconds'] / runs[a]['seconds']:.2f}x; predictions r mean {agree['r_mean']:.6f} "
                  f"(min {agree['r_min']:.6f}), max |diff| / std {agree['max_abs_diff_over_std']:.2e}, "
                  f"same alpha {100 * agree['same_alpha']:.1f}%")


if __name__ == "__main__":
    main()
