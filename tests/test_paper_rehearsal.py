"""The paper rehearsed end to end (issue 15): ``recipes/run_paper.py`` with the shipped ``*_nsd*.yaml`` configs on a
SimNSD written in NSD's raw layout (subjects 1, 2, 5, 7), overriding only model ids (the SimNSD world's models or
tiny random ones), sizes (epochs, steps, widths, rows, images) and the hardware (CPU, float32). Everything else --
the chain of paths, the data settings the steps take from each other, the stages, the tables -- is the real run's.

A second test changes one data setting in one step's config and expects the contract error naming both artifacts.
"""

from __future__ import annotations

import json
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "recipes", "configs")
SUBJECTS = ["subj01", "subj02", "subj05", "subj07"]
SESSIONS = 1  # the SimNSD below has one session (the real configs: 37): a size, set alike in every step reading NSD
CPU = {"device": "cpu"}

# Every override: a model id (tiny-random / simnsd/<world model>), a size, or the hardware. Nothing else.
TINY_MINDEYE = {"hidden_size": 32, "num_blocks": 1, "projector_hidden_size": 32, "prior_depth": 1, "prior_heads": 2,
                "prior_dim_head": 8, "prior_timesteps": 10, "low_level_hidden_size": 32, "low_level_num_blocks": 1,
                "low_level_channels": 8, "low_level_side": 4, "low_level_block_out_channels": [8, 8, 8], "low_level_norm_num_groups": 4}
RECONSTRUCT = {"diffusion_model": "tiny-random", "num_inference_steps": 2, "max_samples": 2, "batch_size": 2,
               "num_beams": 2, "max_new_tokens": 6, "height": 32, "width": 32, "dtype": "float32", **CPU}
OVERRIDES = {
    "enhance": {"model_name_or_path": "tiny-random", "max_new_tokens": 6, "batch_size": 64, "dtype": "float32", **CPU},
    "audit": {"clip_model": "simnsd/clip", **CPU},
    "ce": {"language_model": "simnsd/gpt2", "sessions": SESSIONS, "prefix_length": 2, "mapper_layers": 1,
           "mapper_heads": 2, "max_caption_tokens": 12, "num_train_epochs": 1, "per_device_train_batch_size": 64,
           "per_device_eval_batch_size": 64, "warmup_steps": 0, "eval_steps": 2, "save_steps": 2, "logging_steps": 1,
           "eval_max_rows": 4, "dataloader_num_workers": 0, "report_to": "none", "max_train_rows": 64},
    "surrogate": {"clip_model": "simnsd/clip", "renderer": "simnsd/diffusion", "render_steps": 1, "sessions": SESSIONS,
                  "max_captions": 32, "hidden_size": 16, "epochs": 2, "batch_size": 16, **CPU},
    "rl": {"clip_model": "simnsd/clip", "max_steps": 1,
           "per_device_train_batch_size": 2, "num_samples": 2, "warmup_steps": 0, "logging_steps": 1, "save_steps": 0,
           "report_to": [], "max_train_rows": 16, "eval_max_rows": 4, "max_new_tokens": 6},
    "caption_eval": {"clip_model": "simnsd/clip", "num_beams": 2, "max_new_tokens": 6, "max_rows": 4, **CPU},
    "decoders_ldm": {"model_name_or_path": "tiny-random", "sessions": SESSIONS, "image_size": 32, "dtype": "float32",
                     "cv": 2, "max_train_rows": 200, **CPU},
    "decoders_brain_diffuser": {"model_name_or_path": "tiny-random", "target_models": {"vdvae": "tiny-random"},
                                "sessions": SESSIONS, "image_size": 32, "dtype": "float32", **CPU},
    "mindeye": {"target_model_name_or_path": "tiny-random", "sessions": SESSIONS, "clip_image_size": 64,
                "latent_image_size": 32, "target_dtype": "float32", "model_config": TINY_MINDEYE,
                "num_train_epochs": 4, "max_steps": 1, "per_device_train_batch_size": 16, "mixed_precision": "no",
                "logging_steps": 1, "save_steps": 0, "eval_prior_steps": 2, "eval_retrieval_batch": 8,
                "eval_retrieval_loops": 1, **CPU},
    "reconstruct_ldm": dict(RECONSTRUCT),
    "reconstruct_brain_diffuser": dict(RECONSTRUCT),
    "reconstruct_mindeye": {**RECONSTRUCT, "best_of_n": 2},
    "evaluate_reconstructions": {"feature_models": "tiny-random", "batch_size": 8, **CPU},
}
W_SWEEP = [0.0, 0.5, 1.0]  # a size: three points per base (the paper's default: five)


@pytest.fixture(scope="module")
def rehearsal_nsd(tmp_path_factory):
    """SimNSD in NSD's raw layout, four subjects, one session, 125 images per subject (20 shared)."""
    from fgb2i_hf.simnsd import simulate_nsd

    root = tmp_path_factory.mktemp("rehearsal") / "nsd"
    simulate_nsd(root, scale="tiny", seed=0, sessions=SESSIONS, repetitions=6, shared_images=20)
    return str(root)


def paper_args(nsd_root, output_dir, cache_dir, **extra) -> list[str]:
    args = ["--nsd_root", nsd_root, "--output_dir", output_dir, "--cache_dir", cache_dir,
            "--overrides", json.dumps(OVERRIDES), "--w_sweep", *map(str, W_SWEEP)]
    for key, value in extra.items():
        args += [f"--{key}", *(value if isinstance(value, list) else [str(value)])]
    return args


def run_paper_cli(args):
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_paper", os.path.join(REPO, "recipes", "run_paper.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(args)


def table_rows(path: str) -> list[str]:
    """The first cell of every body row of the markdown tables in ``path``."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("|") and not re.fullmatch(r"[-: ]+", cells[0]) and cells[0]:
                rows.append(cells[0])
    return rows


@pytest.fixture(scope="module")
def paper_run(rehearsal_nsd, tmp_path_factory):
    """The one command, run once for the module: (its result, the output folder, the datasets cache)."""
    out = tmp_path_factory.mktemp("paper") / "outputs"
    cache = str(tmp_path_factory.mktemp("paper_cache"))
    result = run_paper_cli(paper_args(rehearsal_nsd, str(out), cache))
    return result, str(out), cache


@pytest.mark.slow  # the whole chain, ~63 driver runs: minutes on 2 cores (still part of `make test`)
def test_the_paper_in_one_command(paper_run, rehearsal_nsd):
    from fgb2i_hf.drivers.paper.plan import ABLATION_LABELS
    from fgb2i_hf.metrics.reconstruction import RECONSTRUCTION_METRICS
    from fgb2i_hf.pipelines.bases import get_base

    result, out, cache = paper_run
    tables = os.path.join(out, "tables")
    assert result["tables"] == tables
    assert all(unit["status"] == "run" for unit in result["plan"])  # a fresh tree: every unit ran once
    for name in ("main", "captions", "ablation", "coco", "w_sweep", "paper"):
        assert os.path.getsize(os.path.join(tables, f"{name}.md")) > 0, name
    for name in ("training_curves", "main_bars", "w_sweep"):
        with open(os.path.join(tables, f"{name}.png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name

    def load(name):
        with open(os.path.join(tables, f"{name}.json"), encoding="utf-8") as f:
            return json.load(f)

    # 1. main: 3 bases x {base, + FgB2I} x 8 metrics, the mean and each subject
    labels = [get_base(b).label for b in ("ldm", "brain_diffuser", "mindeye")]
    rows = [row for label in labels for row in (label, f"{label} + FgB2I")]
    main = load("main")
    assert list(main["mean"]) == rows and sorted(main["subjects"]) == SUBJECTS
    for table in [main["mean"], *main["subjects"].values()]:
        assert all(sorted(table[r]) == sorted(RECONSTRUCTION_METRICS) for r in rows)
    assert table_rows(os.path.join(tables, "main.md")) == rows * (1 + len(SUBJECTS))
    # the mean row is the mean of the subjects' rows (same floats, numpy mean of four)
    for row in rows:
        for metric in RECONSTRUCTION_METRICS:
            values = [main["subjects"][s][row][metric] for s in SUBJECTS]
            assert main["mean"][row][metric] == pytest.approx(sum(values) / 4, rel=1e-6, abs=1e-9)
    # 2. captions: both stages beside the shuffled-brain control, all subjects and each
    captions = load("captions")
    caption_rows = ["CE (stage 1)", "CE + RL (stage 2)", "shuffled-brain control"]
    assert list(captions["rows"]) == caption_rows and sorted(captions["subjects"]) == SUBJECTS
    assert {"BLEU-4", "METEOR", "CIDEr"} <= set(captions["rows"]["CE (stage 1)"])
    # 3. the reward ablation on subject 1
    ablation = load("ablation")
    assert list(ablation["rows"]) == list(ABLATION_LABELS.values()) and ablation["subject"] == "subj01"
    assert table_rows(os.path.join(tables, "ablation.md")) == list(ABLATION_LABELS.values())
    assert all({"caption BLEU-4", "caption object F1"} <= set(row) for row in ablation["rows"].values())
    # 4. COCO vs fine captions as targets
    coco = load("coco")
    assert list(coco["rows"]) == [labels[0], f"{labels[0]} + FgB2I, COCO captions as targets",
                                  f"{labels[0]} + FgB2I, fine captions as targets"]
    # 5. the w sweep per base
    sweep = load("w_sweep")
    assert list(sweep["sweep"]) == labels
    assert all(list(points) == ["0", "0.5", "1"] for points in sweep["sweep"].values())
    # the tables carry the stage-2 model's data contract, the sessions the steps were given
    with open(os.path.join(tables, "data_contract.json"), encoding="utf-8") as f:
        contract = json.load(f)
    assert contract["subjects"] == SUBJECTS and contract["sessions"] == SESSIONS
    # the real configs' settings went through: stage 1 trained on the fine captions, monitored on validation
    with open(os.path.join(out, "ce", "paper_manifest.json"), encoding="utf-8") as f:
        ce = json.load(f)["settings"]
    assert (ce["caption_column"], ce["eval_split"], ce["fine_captions"]) == (
        "fine_captions", "validation", "$OUT/captions/fine_captions.jsonl")

    # The same command again: everything is done and nothing runs.
    again = run_paper_cli(paper_args(rehearsal_nsd, out, cache))
    assert {u["status"] for u in again["plan"]} == {"done"} and again["seconds"] == {}


def test_a_changed_data_setting_is_a_contract_error(rehearsal_nsd, tmp_path):
    """One step's YAML states other sessions than stage 1: the plan stops before any work, naming both."""
    from fgb2i_hf.data.contract import ContractError

    with open(os.path.join(CONFIGS, "decoders_ldm_nsd.yaml"), encoding="utf-8") as f:
        text = f.read()
    assert re.search(r"^sessions: 37 ", text, flags=re.M)
    changed = tmp_path / "decoders_ldm_nsd.yaml"
    changed.write_text(re.sub(r"^sessions: 37 ", f"sessions: {SESSIONS + 1} ", text, flags=re.M))
    overrides = {step: dict(values) for step, values in OVERRIDES.items()}
    del overrides["decoders_ldm"]["sessions"]
    args = paper_args(rehearsal_nsd, str(tmp_path / "outputs"), str(tmp_path / "cache"), dry_run="true",
                      config_files=json.dumps({"decoders_ldm": str(changed)}))
    args[args.index("--overrides") + 1] = json.dumps(overrides)
    with pytest.raises(ContractError) as error:
        run_paper_cli(args)
    message = str(error.value)
    assert f"sessions: {SESSIONS!r}" in message and f"vs {SESSIONS + 1!r}" in message
    assert "nsd_paper.yaml" in message and str(changed) in message
    assert not os.path.exists(tmp_path / "outputs" / "ce")  # nothing ran


def test_the_dry_run_prints_the_plan_and_stops_at_the_first_missing_input(rehearsal_nsd, tmp_path, capsys):
    out, cache = str(tmp_path / "outputs"), str(tmp_path / "cache")
    result = run_paper_cli(paper_args(rehearsal_nsd, out, cache, dry_run="true"))
    printed = capsys.readouterr().out
    assert not os.path.exists(out)  # nothing ran
    stages = [line.split()[1] for line in printed.splitlines() if line.startswith("stage ")]
    assert stages == ["captions", "audit", "ce", "rl", "caption_eval", "decoders", "mindeye", "reconstruct",
                      "metrics", "w_sweep", "ablation", "coco", "tables"]
    assert f"writes {os.path.join(out, 'reconstruct', 'mindeye', 'subj07', 'fgb2i')}" in printed
    assert f"input subj05 betas: {os.path.join(rehearsal_nsd, 'nsddata_betas', 'ppdata', 'subj05')}" in printed
    assert len(result["plan"]) == len([line for line in printed.splitlines() if line.startswith("  [run] ")])

    # What must be obtained by hand: Brain-Diffuser's converted VDVAE (the shipped config's path, not overridden here)
    from fgb2i_hf.drivers.paper import PlanError

    overrides = {step: dict(values) for step, values in OVERRIDES.items()}
    del overrides["decoders_brain_diffuser"]["target_models"]
    args = paper_args(rehearsal_nsd, out, cache, dry_run="true")
    args[args.index("--overrides") + 1] = json.dumps(overrides)
    with pytest.raises(PlanError, match=r"decoders/brain_diffuser .*target_models.vdvae = checkpoints/vdvae-imagenet64"):
        run_paper_cli(args)
    # A stage left out whose output is missing: named before any work
    with pytest.raises(PlanError, match=r"needs the output of captions .*not selected"):
        run_paper_cli(paper_args(rehearsal_nsd, out, cache, dry_run="true", stages=["ce", "rl"]))
