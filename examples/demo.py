"""`make demo`: the whole FgB2I pipeline on SimNSD, step by step.

Steps: simulate SimNSD in NSD's raw layout -> build the NSD datasets -> summarise them -> train the
brain-to-text model with cross-entropy (stage 1, recipes/configs/sim_tiny.yaml) and compare its decoded test
captions with the truth and with the shuffled-brain control -> stage 2: REINFORCE co-training from the stage-1
model (recipes/train_rl.py with recipes/configs/sim_tiny_rl.yaml, a short run) and the CE vs CE+RL table ->
decode and score the test captions of both stages beside the control and the noise-free ceiling -> fit
Brain-Diffuser's ridge decoders in the world's spaces -> reconstruct test images with the LDM, Brain-Diffuser and
MindEye bases, each without and with FgB2I, on the shipped SimNSD world -> the eight image metrics ->
<output_dir>/report.md and grid.png (GT | LDM | LDM + FgB2I; the other bases' grids under compare/).

    python examples/demo.py --output-dir demo_output
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import textwrap
import time

import numpy as np
from PIL import Image

from fgb2i_hf.core import atomic_write_text, save_png_atomic
from fgb2i_hf.data import NSDStimuli, load_nsd, voxel_stats
from fgb2i_hf.simnsd import load_simnsd_config, simulate_nsd
from fgb2i_hf.metrics import format_table

SUBJECTS = ["subj01", "subj02", "subj05", "subj07"]
HERE = os.path.dirname(os.path.abspath(__file__))
SIM_TINY = os.path.join(HERE, os.pardir, "recipes", "configs", "sim_tiny.yaml")
SIM_TINY_RL = os.path.join(HERE, os.pardir, "recipes", "configs", "sim_tiny_rl.yaml")
DECODERS_BD_WORLD = os.path.join(HERE, os.pardir, "recipes", "configs", "decoders_brain_diffuser_sim_world.yaml")


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
    save_png_atomic(Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.Resampling.NEAREST),
                    os.path.join(output_dir, "stimuli.png"))
    atomic_write_text(os.path.join(output_dir, "data_summary.md"), "\n".join(lines) + "\n")
    print(f"\n[summary] {os.path.join(output_dir, 'stimuli.png')} and data_summary.md written")


def step_train_ce(root: str, output_dir: str, epochs: float | None = None, fresh: bool = False) -> str:
    """Stage 1 with recipes/configs/sim_tiny.yaml (reused if <output_dir>/ce/final exists); returns the run's folder."""
    from transformers import TrainingArguments
    from trl import TrlParser

    from fgb2i_hf.drivers.ce import CEScriptArguments, run_ce

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


def step_train_rl(root: str, output_dir: str, ce_run_dir: str, steps: int = 100, object_weight: float = 0.1,
                  clip_weight: float = 1.0, fresh: bool = False) -> str:
    """Stage 2 with recipes/train_rl.py and sim_tiny_rl.yaml from the stage-1 model in ``ce_run_dir``: CE + the
    object reward + the CLIP text-image reward (simnsd/clip; REINFORCE, K samples per brain), ``steps`` optimiser
    steps (the yaml's one epoch is ~240 steps), then greedy test captions scored; reused if <output_dir>/rl/final
    exists. Returns the run's folder.

    Weights: the paper's are 0.01; on SimNSD tiny they hardly move the model in 100 steps, while object 0.1 raises
    object F1 at no cost in CE loss and CLIP 1.0 raises the CLIP reward (benchmarks/bench_rl_ablation.py,
    docs/rl.md), so the demo uses those."""
    from trl import TrlParser

    from fgb2i_hf.rl import ReinforceConfig

    out = os.path.join(output_dir, "rl")
    if not fresh and os.path.isfile(os.path.join(out, "result.json")) and os.path.isdir(os.path.join(out, "final")):
        print(f"\n[train RL] reusing {out} (--fresh to retrain)")
        return out
    if os.path.isdir(out):  # --fresh, or a run that never finished: the trainer refuses a folder holding a run
        import shutil

        shutil.rmtree(out)  # the trainer refuses a folder that holds a run
    from fgb2i_hf.drivers import rl as train_rl
    argv = ["--config", SIM_TINY_RL, "--model_name_or_path", os.path.join(ce_run_dir, "final"), "--nsd_root", root,
            "--cache_dir", os.path.join(output_dir, "hf_datasets"), "--output_dir", out, "--max_steps", str(steps),
            "--reward_weights", str(object_weight), str(clip_weight), "--logging_steps", str(max(steps // 4, 1))]
    script_args, config = TrlParser((train_rl.RLScriptArguments, ReinforceConfig)).parse_args_and_config(args=argv)
    print(f"\n[train RL] {config.num_samples} samples per brain, rewards {config.rewards} x {config.reward_weights}, "
          f"baseline {config.baseline}, {steps} steps of {config.per_device_train_batch_size} brains "
          f"(recipes/configs/sim_tiny_rl.yaml)")
    t = time.time()
    with contextlib.redirect_stdout(io.StringIO()):  # the recipe prints its result.json; the table follows below
        result = train_rl.run_rl(script_args, config)
    print(f"[train RL] {result['steps']} steps in {time.time() - t:.1f} s; model in {result['final_model']}")
    return out


def step_train_ce_only(root: str, dd, output_dir: str, ce_run_dir: str, steps: int = 100, fresh: bool = False) -> str:
    """The control for stage 2: the stage-1 model trained on with the CE loss alone, for the same steps, batch and
    learning rate as the RL step (sim_tiny_rl.yaml with no reward). More training changes the captions by itself;
    this row tells that apart from what the rewards do. Returns the run's folder (``final`` inside)."""
    import shutil

    from transformers import AutoTokenizer
    from trl import TrlParser

    from fgb2i_hf import BrainPrefixGPT2
    from fgb2i_hf.rl import ReinforceConfig, ReinforceTrainer

    out = os.path.join(output_dir, "rl_ce_only")
    if not fresh and os.path.isdir(os.path.join(out, "final")):
        print(f"[train CE only] reusing {out}")
        return out
    if os.path.isdir(out):
        shutil.rmtree(out)
    from fgb2i_hf.drivers import rl as train_rl
    argv = ["--config", SIM_TINY_RL, "--model_name_or_path", os.path.join(ce_run_dir, "final"), "--nsd_root", root,
            "--output_dir", out, "--max_steps", str(steps), "--logging_steps", str(max(steps // 4, 1))]
    _, config = TrlParser((train_rl.RLScriptArguments, ReinforceConfig)).parse_args_and_config(args=argv)
    config.rewards, config.reward_weights = [], []
    model = BrainPrefixGPT2.from_pretrained(os.path.join(ce_run_dir, "final"))
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(ce_run_dir, "final"))
    t = time.time()
    trainer = ReinforceTrainer(model, tokenizer, config, dd["train"], rewards=[])
    trainer.train()
    trainer.save_model()
    print(f"[train CE only] {steps} steps of the CE loss alone in {time.time() - t:.1f} s (the control for stage 2)")
    return out


def print_rl_report(ce_run_dir: str, rl_run_dir: str) -> dict:
    """The stage-1 model's test scores next to the stage-2 model's (deltas against stage 1), on the columns both
    runs report, plus the object reward's test mean for both; writes <rl_run_dir>/ce_vs_rl.md."""
    from fgb2i_hf.rewards import object_accuracy

    ce = json.load(open(os.path.join(ce_run_dir, "eval_test.json"), encoding="utf-8"))["rows"]["brain"]
    rl = json.load(open(os.path.join(rl_run_dir, "result.json"), encoding="utf-8"))["eval"]
    rows = [json.loads(line) for line in open(os.path.join(ce_run_dir, "eval_test_predictions.jsonl"), encoding="utf-8")]
    ce = dict(ce, **{"reward object_accuracy": float(np.mean(object_accuracy([r["prediction"] for r in rows],
                                                                            objects=[r["objects"] for r in rows])))})
    columns = [c for c in ce if c in rl]
    table = format_table({"CE (stage 1)": ce, "CE + RL (stage 2)": rl}, baseline="CE (stage 1)", columns=columns)
    print("\nTest split, stage 1 vs stage 2 (greedy captions; deltas against stage 1):\n")
    print(table)
    atomic_write_text(os.path.join(rl_run_dir, "ce_vs_rl.md"), table + "\n")
    return {"CE (stage 1)": ce, "CE + RL (stage 2)": rl}



# -- stage 3 and the report: captions (CE vs CE + RL), reconstructions (base vs base + FgB2I), grid --------------------

REPORT_CAPTION_METRICS = ["BLEU-4", "METEOR", "CIDEr"]
CE_ONLY_ROW = "CE only, same steps as stage 2"
REPORT_CAPTION_COLUMNS = ["BLEU-4", "METEOR", "CIDEr", "CLIP-S", "object F1", "reward clip_text_image"]


def _load_brain_model(folder: str):
    from transformers import AutoTokenizer

    from fgb2i_hf import BrainPrefixGPT2

    return BrainPrefixGPT2.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def noiseless_rows(root: str, dd, split: str = "test"):
    """The split with each row's betas replaced by SimNSD's noise-free response to its image, normalised as the
    build normalised the real betas: the ceiling a perfect measurement would give."""
    from fgb2i_hf.data import voxel_stats
    from fgb2i_hf.simnsd import noiseless_response

    rows = dd[split]
    subjects, ids = list(rows["subject"]), list(rows["nsd_id"])
    betas = [None] * len(rows)
    for subject in dict.fromkeys(subjects):
        index = [i for i, s in enumerate(subjects) if s == subject]
        clean = voxel_stats(dd, subject).normalize(noiseless_response(root, subject, [ids[i] for i in index]))
        for i, b in zip(index, clean):
            betas[i] = b.astype(np.float16).tolist()
    return rows.remove_columns("betas").add_column("betas", betas, feature=rows.features["betas"])


def caption_table(root: str, dd, ce_dir: str, rl_dir: str, clip, ce_only_dir: str | None = None) -> tuple[dict, dict]:
    """Test-split caption scores of stage 1, of stage 1 trained on with CE alone for the stage-2 steps (the control
    for "more training"), of stage 2 (greedy), the shuffled-brain control (stage 2's model, brains permuted within
    each subject) and the ceiling (stage 2's model on the noise-free responses). Returns the table's rows and the
    captions of every row."""
    from fgb2i_hf.data import NSDStimuli
    from fgb2i_hf.evaluation import caption_report, decode_dataset
    from fgb2i_hf.metrics import MeteorScorer, clip_score
    from fgb2i_hf.rewards import CLIPTextImageReward

    test = dd["test"]
    stimuli = NSDStimuli(root)
    images = stimuli.get(list(test["nsd_id"]))
    reward = CLIPTextImageReward(clip, stimuli=stimuli)
    ce_model, ce_tok = _load_brain_model(os.path.join(ce_dir, "final"))
    rl_model, rl_tok = _load_brain_model(os.path.join(rl_dir, "final"))
    captions = {"CE (stage 1)": decode_dataset(ce_model, ce_tok, test, progress=False)}
    if ce_only_dir is not None:
        model, tok = _load_brain_model(os.path.join(ce_only_dir, "final"))
        captions[CE_ONLY_ROW] = decode_dataset(model, tok, test, progress=False)
    captions |= {
        "CE + RL (stage 2)": decode_dataset(rl_model, rl_tok, test, progress=False),
        "shuffled-brain control": decode_dataset(rl_model, rl_tok, test, shuffle_betas=True, progress=False),
        "ceiling: noise-free brains": decode_dataset(rl_model, rl_tok, noiseless_rows(root, dd), progress=False),
    }
    meteor = MeteorScorer()
    rows = {}
    try:
        for name, predictions in captions.items():
            row = caption_report(predictions, test, metrics=REPORT_CAPTION_METRICS, meteor=meteor,
                                 rewards={"clip_text_image": reward})
            row["CLIP-S"] = clip_score(predictions, images, scorer=clip)["CLIP-S"]
            rows[name] = row
    finally:
        meteor.close()
    return rows, captions


def step_fit_brain_diffuser(root: str, output_dir: str, fresh: bool = False) -> str:
    """Brain-Diffuser's ridge decoders of subj01 in the world's spaces (recipes/configs/
    decoders_brain_diffuser_sim_world.yaml: simnsd/versatile's CLIP text and vision embeddings, simnsd/vdvae's
    latents); reused when a finished fit (its data contract) is there."""
    import yaml

    from fgb2i_hf.drivers.fit import FitDecodersConfig, fit_decoders

    out = os.path.join(output_dir, "decoders_brain_diffuser")
    if fresh and os.path.isdir(out):
        shutil.rmtree(out)
    if os.path.isfile(os.path.join(out, "data_contract.json")):
        print(f"[fit Brain-Diffuser decoders] reusing {out}")
        return out
    with open(DECODERS_BD_WORLD, encoding="utf-8") as f:
        options = yaml.safe_load(f)
    config = FitDecodersConfig(**{**options, "nsd_root": root, "output_dir": out,
                                  "cache_dir": os.path.join(output_dir, "hf_datasets")})
    t = time.time()
    metrics = fit_decoders(config, progress=False)
    scores = ", ".join(f"{target} r {m['validation']['column_r']:.2f}" for target, m in metrics["subj01"].items())
    print(f"[fit Brain-Diffuser decoders] subj01 ({scores}, validation) in {time.time() - t:.1f} s")
    return out


def step_compare(root: str, dd, output_dir: str, rl_dir: str, bd_decoders: str, clip, subject: str = "subj01",
                 n_images: int = 16, w: float = 0.5, fresh: bool = False) -> dict:
    """The three bases on ``n_images`` test images of ``subject`` with the shipped SimNSD world, each without (w = 0)
    and with FgB2I (the stage-2 model's caption fused at weight ``w``): LDM (simnsd/diffusion + simnsd/ldm_base),
    Brain-Diffuser (simnsd/versatile + simnsd/vdvae + the ridge decoders fitted above), MindEye (simnsd/versatile +
    simnsd/mindeye). CLIP is the shipped SimNSD CLIP; AlexNet, Inception, EfficientNet and SwAV have random weights
    here (no downloads): their columns are mechanics."""
    import torch

    from fgb2i_hf.drivers.compare import CompareBasesConfig, compare_bases
    from fgb2i_hf.metrics import load_feature_models

    out = os.path.join(output_dir, "compare")
    if fresh and os.path.isdir(out):
        shutil.rmtree(out)
    config = CompareBasesConfig(
        nsd_root=root, output_dir=out, subject=subject, split="test", max_samples=n_images, batch_size=8,
        brain_model=os.path.join(rl_dir, "final"), sd_model="simnsd/diffusion", vd_model="simnsd/versatile",
        ldm_decoders_dir="simnsd/ldm_base", brain_diffuser_decoders_dir=bd_decoders, mindeye_model="simnsd/mindeye",
        base_options={base: {"cache_dir": os.path.join(output_dir, "hf_datasets")}
                      for base in ("ldm", "brain_diffuser", "mindeye")},
        w=w, device="cpu", feature_models="random", seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        models = load_feature_models(pretrained=False, clip=clip, device="cpu")
    print(f"\n[reconstruct] {subject}, {n_images} test images: LDM, Brain-Diffuser and MindEye, each base vs base + "
          f"FgB2I (w = {w:g}), on the SimNSD world")
    t = time.time()
    result = compare_bases(config, dataset=dd["test"], stimuli=NSDStimuli(root), feature_models=models,
                           progress=False)
    print(f"[reconstruct] three bases in {time.time() - t:.1f} s; grids in {out}/<base>/grid.png")
    return {**result, "output_dir": out, "images": n_images}


def write_report(output_dir: str, caption_rows: dict, recon: dict, seconds: dict, rl_settings: str) -> str:
    """demo_output/report.md: the paper's two tables on SimNSD, the grid, and what each number is."""
    lines = [
        "# FgB2I on SimNSD (`make demo`)", "",
        "Simulated NSD (tiny, seed 0): subjects 1, 2, 5, 7; 100 shared test images. Every model is the SimNSD "
        "world's (`simnsd/clip`, `simnsd/diffusion`, `simnsd/ldm_base`, `simnsd/versatile`, `simnsd/vdvae`, "
        "`simnsd/mindeye`) or trained in this run (the brain-to-text model, Brain-Diffuser's ridge decoders). "
        "Numbers are as measured by this run.", "",
        "## Captions (test split, 4 subjects x 100 images, greedy; deltas against CE only)", "",
        format_table(caption_rows, baseline=CE_ONLY_ROW, columns=REPORT_CAPTION_COLUMNS), "",
        f"Stage 2 = stage 1 + {rl_settings}. *{CE_ONLY_ROW}*: stage 1 trained on with the CE loss alone for the same "
        "steps, batch and learning rate: the fair control for stage 2, since more training alone changes the "
        "captions.", "",
        "References: the fine captions. CLIP-S (w = 2.5) and the `clip_text_image` reward use the SimNSD CLIP. "
        "Shuffled-brain control: the stage-2 model given another row's betas of the same subject (the floor). "
        "Ceiling: the stage-2 model given SimNSD's noise-free response to each image, normalised like the real "
        "betas (what a noiseless measurement would allow this model).", "",
        f"## Images ({recon['images']} test images of subj01; each FgB2I row's deltas against its base)", "",
        recon["table"], "",
        "LDM: Takagi & Nishimoto's method on the SimNSD world (ridge z -> VAE latent, img2img at strength 0.8 "
        "conditioned on ridge c, DDIM 50 steps, guidance 5). Brain-Diffuser: ridge VDVAE latents -> simnsd/vdvae "
        "decode -> img2img on simnsd/versatile (strength 0.75, text weight 0.4, 50 steps, guidance 7.5) conditioned "
        "on ridge CLIP-text and CLIP-vision embeddings. MindEye: simnsd/mindeye's prior -> CLIP-image tokens and "
        "low-level head -> blurry image, img2img on simnsd/versatile (image stream only: strength 0.85, 20 UniPC "
        "steps, guidance 3.5). LDM and Brain-Diffuser + FgB2I: the same, with the text context 0.5 x "
        "CLIP-text(decoded caption) + 0.5 x the base's; MindEye + FgB2I: the dual attention's text stream reads "
        "CLIP-text(decoded caption) at text weight 0.5. Base and FgB2I share their noise. "
        "Grids of each base: `compare/<base>/grid.png`. CLIP two-way uses the SimNSD CLIP; "
        "PixCorr and SSIM need no network; AlexNet, InceptionV3, EffNet-B and SwAV have random weights here (no "
        "downloads): those columns show the mechanics, not perceptual similarity.", "",
        "## Grid", "", "![GT | LDM | LDM + FgB2I](grid.png)", "",
        "Columns: ground truth (its fine caption below), the base, base + FgB2I (the decoded caption below).", "",
        "## Time (seconds)", "",
        "| step | s |", "|---|---|", *[f"| {k} | {v:.1f} |" for k, v in seconds.items()], "",
    ]
    path = os.path.join(output_dir, "report.md")
    atomic_write_text(path, "\n".join(lines))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="demo_output", help="where SimNSD, the datasets and the report go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="re-simulate SimNSD and retrain even if they exist")
    parser.add_argument("--ce-epochs", type=float, default=None, help="stage-1 epochs (default: sim_tiny.yaml's)")
    parser.add_argument("--rl-steps", type=int, default=100, help="stage-2 optimiser steps (batch 32)")
    parser.add_argument("--rl-object-weight", type=float, default=0.1,
                        help="weight of the object reward (the paper's 0.01 barely moves a short SimNSD run)")
    parser.add_argument("--rl-clip-weight", type=float, default=1.0,
                        help="weight of the CLIP text-image reward (simnsd/clip; the paper's 0.01 barely moves it)")
    parser.add_argument("--images", type=int, default=16, help="test images of subj01 to reconstruct")
    args = parser.parse_args(argv)
    start, seconds = time.time(), {}
    os.makedirs(args.output_dir, exist_ok=True)
    root = step_simulate(args.output_dir, args.seed, args.fresh)
    dd = step_build(root, args.output_dir)
    print_data_summary(root, dd, args.output_dir)
    t = time.time()
    run_dir = step_train_ce(root, args.output_dir, args.ce_epochs, args.fresh)
    print_ce_report(run_dir)
    seconds["stage 1 (CE)"] = time.time() - t
    print(f"[train CE] step time {seconds['stage 1 (CE)']:.1f} s")
    t = time.time()
    rl_dir = step_train_rl(root, args.output_dir, run_dir, args.rl_steps, args.rl_object_weight, args.rl_clip_weight,
                           args.fresh)
    print_rl_report(run_dir, rl_dir)
    ce_only_dir = step_train_ce_only(root, dd, args.output_dir, run_dir, args.rl_steps, args.fresh)
    seconds["stage 2 (RL) and its CE-only control"] = time.time() - t
    print(f"[train RL] step time {seconds['stage 2 (RL) and its CE-only control']:.1f} s")

    from fgb2i_hf.clip import CLIPScorer

    if args.seed != 0:
        print("[reconstruct] note: the shipped simnsd/ldm_base decoders were fitted on SimNSD seed 0; with "
              f"--seed {args.seed} the subjects' voxels respond differently and the base method sees noise")
    clip = CLIPScorer.from_pretrained("simnsd/clip")
    t = time.time()
    caption_rows, _ = caption_table(root, dd, run_dir, rl_dir, clip, ce_only_dir)
    seconds["caption evaluation"] = time.time() - t
    print("\nCaptions, test split (CLIP-S and the CLIP reward with simnsd/clip; deltas against CE only):\n")
    print(format_table(caption_rows, baseline=CE_ONLY_ROW, columns=REPORT_CAPTION_COLUMNS))
    t = time.time()
    bd_decoders = step_fit_brain_diffuser(root, args.output_dir, args.fresh)
    seconds["Brain-Diffuser decoders"] = time.time() - t
    t = time.time()
    recon = step_compare(root, dd, args.output_dir, rl_dir, bd_decoders, clip, n_images=args.images,
                         fresh=args.fresh)
    seconds["reconstruction and image evaluation (three bases)"] = time.time() - t
    print("\nImages (each base vs base + FgB2I):\n")
    print(recon["table"])
    shutil.copyfile(recon["summaries"]["ldm"]["grid"], os.path.join(args.output_dir, "grid.png"))
    seconds["total"] = time.time() - start
    rl_settings = (f"{args.rl_steps} REINFORCE steps with object accuracy (w = {args.rl_object_weight:g}) and CLIP "
                   f"text-image (w = {args.rl_clip_weight:g}) rewards")
    report = write_report(args.output_dir, caption_rows, recon, seconds, rl_settings)
    print(f"\n[report] {report} and {os.path.join(args.output_dir, 'grid.png')} written; "
          f"demo time {seconds['total']:.1f} s")


if __name__ == "__main__":
    main()
