"""`make demo`: the whole FgB2I pipeline on SimNSD, step by step.

Steps so far: simulate SimNSD in NSD's raw layout -> build the NSD datasets -> summarise them -> train the
brain-to-text model with cross-entropy (stage 1, recipes/configs/sim_tiny.yaml) and compare its decoded test
captions with the truth and with the shuffled-brain control.
Later stages (reinforcement, reconstruction, evaluation) add their own step functions below.

    python examples/demo.py --output-dir demo_output
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap
import time

import numpy as np
from PIL import Image

from fgb2i_hf.data import NSDStimuli, load_nsd, load_simnsd_config, simulate_nsd, voxel_stats

SUBJECTS = ["subj01", "subj02", "subj05", "subj07"]
HERE = os.path.dirname(os.path.abspath(__file__))
SIM_TINY = os.path.join(HERE, os.pardir, "recipes", "configs", "sim_tiny.yaml")


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


def step_train_ce(root: str, output_dir: str, epochs: float | None = None, fresh: bool = False) -> str:
    """Stage 1 with recipes/configs/sim_tiny.yaml (reused if <output_dir>/ce/final exists); returns the run's folder."""
    from transformers import TrainingArguments
    from trl import TrlParser

    from fgb2i_hf.training import CEScriptArguments, run_ce

    out = os.path.join(output_dir, "ce")
    if not fresh and os.path.isfile(os.path.join(out, "result.json")) and os.path.isdir(os.path.join(out, "final")):
        print(f"\n[train CE] reusing {out} (--fresh to retrain)")
        return out
    argv = ["--config", SIM_TINY, "--nsd_root", root, "--cache_dir", os.path.join(output_dir, "hf_datasets"),
            "--output_dir", out, "--disable_tqdm", "true", "--logging_strategy", "epoch"]
    if epochs is not None:
        argv += ["--num_train_epochs", str(epochs)]
    script_args, training_args = TrlParser((CEScriptArguments, TrainingArguments)).parse_args_and_config(args=argv)
    print(f"\n[train CE] {len(script_args.subjects)} subjects, GPT-2 {script_args.gpt2_config} from scratch, "
          f"{training_args.num_train_epochs:g} epochs (recipes/configs/sim_tiny.yaml)")
    t = time.time()
    result = run_ce(script_args, training_args)
    print(f"[train CE] {result['global_step']} steps in {time.time() - t:.1f} s "
          f"(training {result['seconds']['train']:.1f} s); model + tokenizer in {result['final_model']}")
    return out


def print_ce_report(run_dir: str, examples: int = 8) -> None:
    """Decoded test captions next to the truth and the control's, then the metric table."""
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "eval_test_predictions.jsonl"), encoding="utf-8")]
    per = max(examples // len(SUBJECTS), 1)  # the subjects share their test images: show each other images
    picked = [r for j, s in enumerate(SUBJECTS) for r in [x for x in rows if x["subject"] == s][j * per:(j + 1) * per]]
    print("\nDecoded test captions (greedy), next to the truth and the shuffled-brain control:")
    wrap = dict(width=110, initial_indent="    ", subsequent_indent="      ")
    for r in picked:
        print(f"  {r['subject']} nsd_id {r['nsd_id']}  objects={r['objects']}")
        print(textwrap.fill(f"truth:   {r['references'][0]}", **wrap))
        print(textwrap.fill(f"brain:   {r['prediction']}", **wrap))
        print(textwrap.fill(f"control: {r['control']}", **wrap))
    print("\nTest split, brain vs shuffled-brain control (same model, another brain of the same subject):\n")
    print(open(os.path.join(run_dir, "eval_test.md"), encoding="utf-8").read())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="demo_output", help="where SimNSD, the datasets and the report go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="re-simulate SimNSD and retrain even if they exist")
    parser.add_argument("--ce-epochs", type=float, default=None, help="stage-1 epochs (default: sim_tiny.yaml's)")
    args = parser.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    root = step_simulate(args.output_dir, args.seed, args.fresh)
    dd = step_build(root, args.output_dir)
    print_data_summary(root, dd, args.output_dir)
    t = time.time()
    run_dir = step_train_ce(root, args.output_dir, args.ce_epochs, args.fresh)
    print_ce_report(run_dir)
    print(f"[train CE] step time {time.time() - t:.1f} s")


if __name__ == "__main__":
    main()
