"""`make demo`: the whole FgB2I pipeline on SimNSD, step by step.

Steps so far: simulate SimNSD in NSD's raw layout -> build the NSD datasets -> summarise them.
Later stages (brain-to-text training, reconstruction, evaluation) add their own step functions below.

    python examples/demo.py --output-dir demo_output
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from PIL import Image

from fgb2i_hf.data import NSDStimuli, load_nsd, load_simnsd_config, simulate_nsd, voxel_stats

SUBJECTS = ["subj01", "subj02", "subj05", "subj07"]


def step_simulate(output_dir: str, seed: int = 0, fresh: bool = False) -> str:
    """Write a tiny SimNSD under <output_dir>/simnsd (reused if already there)."""
    root = os.path.join(output_dir, "simnsd")
    if fresh or not os.path.isfile(os.path.join(root, "simnsd", "config.json")):
        t = time.time()
        simulate_nsd(root, scale="tiny", seed=seed, overwrite=True, progress=True)
        print(f"[simulate] SimNSD written to {root} in {time.time() - t:.1f} s")
    else:
        print(f"[simulate] reusing SimNSD at {root}")
    return root


def step_build(root: str, output_dir: str):
    """Build (or reuse) the NSD datasets of all four subjects with the default conventions."""
    t = time.time()
    dd = load_nsd(root, subjects=SUBJECTS, cache_dir=os.path.join(output_dir, "hf_datasets"))
    print(f"[build] {len(dd['train'])} train / {len(dd['test'])} test rows in {time.time() - t:.1f} s")
    return dd


def print_data_summary(root: str, dd, output_dir: str) -> None:
    """Subjects, voxels, rows per split, caption examples; a grid of test stimuli with their captions."""
    cfg = load_simnsd_config(root)
    print(f"\nSimNSD (seed {cfg['seed']}, scale {cfg['scale']}): {cfg['n_stimuli']} stimuli "
          f"{cfg['image_size']}x{cfg['image_size']}, {cfg['sessions']} sessions x 750 trials, "
          f"{cfg['shared_images']} shared test images, single-trial SNR {cfg['snr']}")
    print(f"{'subject':<9}{'voxels':>8}{'train rows':>12}{'test rows':>11}")
    subjects_train = np.array(dd["train"]["subject"])
    subjects_test = np.array(dd["test"]["subject"])
    for s in SUBJECTS:
        n_vox = voxel_stats(dd, s).mean.shape[0]
        print(f"{s:<9}{n_vox:>8}{(subjects_train == s).sum():>12}{(subjects_test == s).sum():>11}")
    stim = NSDStimuli(root)
    rows = dd["test"].select(range(6))
    lines = ["# SimNSD test stimuli\n", "![grid](stimuli.png)\n", "| # | nsd_id | objects | COCO caption | fine caption |",
             "|---|---|---|---|---|"]
    print("\nExamples (test split):")
    for i, row in enumerate(rows):
        print(f"  nsd_id {row['nsd_id']:>5} objects={row['objects']}")
        print(f"    COCO: {row['captions'][0]}")
        print(f"    fine: {row['fine_captions'][0] if row['fine_captions'] else '-'}")
        lines.append(f"| {i} | {row['nsd_id']} | {', '.join(row['objects'])} | {row['captions'][0]} | "
                     f"{row['fine_captions'][0] if row['fine_captions'] else ''} |")
    images = stim.get(rows["nsd_id"])
    grid = np.concatenate(list(images), axis=1)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.Resampling.NEAREST).save(
        os.path.join(output_dir, "stimuli.png"))
    with open(os.path.join(output_dir, "data_summary.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"\n[summary] {os.path.join(output_dir, 'stimuli.png')} and data_summary.md written")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="demo_output", help="where SimNSD, the datasets and the report go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="re-simulate SimNSD even if it exists")
    args = parser.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    root = step_simulate(args.output_dir, args.seed, args.fresh)
    dd = step_build(root, args.output_dir)
    print_data_summary(root, dd, args.output_dir)


if __name__ == "__main__":
    main()
