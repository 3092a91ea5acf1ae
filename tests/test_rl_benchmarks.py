"""benchmarks/bench_rl_ablation.py and bench_rl_step.py: the rows they run, the table they assemble, the test CE
they report, and a very small end-to-end run of each (their figures are printed, never asserted)."""

import importlib.util
import json
import math
import pathlib
import sys

import numpy as np
import pytest
import torch

from fgb2i_hf.testing import tiny_brain_prefix_gpt2
from fgb2i_hf.tokenization import train_caption_tokenizer

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
SUBJECTS = ["subj01", "subj02"]


def _load(name):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.fixture(scope="module")
def ablation():
    return _load("bench_rl_ablation")


@pytest.fixture(scope="module")
def stage1(simnsd_dataset, tmp_path_factory):
    """A tiny stage-1 model of subj01 and subj02 saved with its tokenizer, as train_ce.py leaves it."""
    train = simnsd_dataset["train"]
    counts = {}
    for s, b in zip(train["subject"], train["betas"]):
        counts.setdefault(s, len(b))
    tokenizer = train_caption_tokenizer([c for cs in train["fine_captions"][:3000] for c in cs], vocab_size=300)
    model, _ = tiny_brain_prefix_gpt2({s: counts[s] for s in SUBJECTS}, tokenizer=tokenizer, max_caption_tokens=10)
    path = tmp_path_factory.mktemp("stage1")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_row_specs_pair_each_reward_row_with_its_weights(ablation):
    specs = ablation.row_specs(["ce", "obj", "ti", "all"], 0.01, [0.1, 1.0], scaled_rows=("obj",))
    assert specs == {
        "CE only": {},
        "+L_obj (w=0.01)": {"object_accuracy": 0.01},
        "+L_obj (w=0.1)": {"object_accuracy": 0.1},
        "+L_obj (w=1)": {"object_accuracy": 1.0},
        "+L_ti (w=0.01)": {"clip_text_image": 0.01},
        "all three (w=0.01)": {"object_accuracy": 0.01, "clip_text_image": 0.01, "clip_image_image": 0.01}}
    # a scaled weight equal to the paper's, or 0, adds no row
    assert list(ablation.row_specs(["obj"], 0.01, [0.01, 0.0], ("obj",))) == ["+L_obj (w=0.01)"]
    with pytest.raises(ValueError, match="unknown ablation rows"):
        ablation.row_specs(["ce", "clip"], 0.01)


def test_table_order_deltas_and_verdict(ablation):
    evaluations = {  # deliberately out of order
        "shuffled-brain control": {"object F1": 0.10, "test CE": 2.0},
        "+L_obj (w=1)": {"object F1": 0.45, "test CE": 1.05},
        "CE only": {"object F1": 0.40, "test CE": 1.00},
        "stage 1 (start)": {"object F1": 0.38, "test CE": 0.98},
        "+L_obj (w=0.01)": {"object F1": 0.40, "test CE": 1.20},
    }
    table = ablation.assemble_table(evaluations, columns=["object F1", "test CE"])
    assert list(table["rows"]) == ["stage 1 (start)", "CE only", "+L_obj (w=1)", "+L_obj (w=0.01)",
                                   "shuffled-brain control"]
    assert table["baseline"] == "CE only"
    assert table["deltas"]["+L_obj (w=1)"]["object F1"] == pytest.approx(0.05)
    assert "| +L_obj (w=1) | 0.4500 (+0.0500) | 1.0500 (+0.0500) |" in table["markdown"]
    lines = ablation.verdict(table["rows"])
    assert len(lines) == 2
    assert "+L_obj (w=1): object F1 0.4500 vs 0.4000 (+0.0500, raised)" in lines[0] and "no collapse" in lines[0]
    assert "NOT raised" in lines[1] and "CE ROSE" in lines[1]  # +20% test CE: beyond the 10% tolerance


def test_test_ce_loss_is_the_token_weighted_caption_loss(ablation, stage1, simnsd_dataset):
    from transformers import AutoTokenizer

    from fgb2i_hf import BrainPrefixGPT2
    from fgb2i_hf.data.collate import BrainCaptionCollator

    model, tokenizer = BrainPrefixGPT2.from_pretrained(stage1), AutoTokenizer.from_pretrained(stage1)
    test = simnsd_dataset["test"]
    rows = test.select([i for i, s in enumerate(test["subject"]) if s in SUBJECTS][:6])
    got = ablation.test_ce_loss(model, tokenizer, rows, batch_size=4)  # two batches of unequal token counts
    batch = BrainCaptionCollator(tokenizer, max_length=model.config.max_caption_tokens)([rows[i] for i in range(6)])
    with torch.no_grad():
        expected = float(model(**{k: batch[k] for k in ("betas", "subject", "input_ids", "attention_mask", "labels")}).loss)
    assert got == pytest.approx(expected, rel=1e-5)
    shuffled = ablation.test_ce_loss(model, tokenizer, rows, batch_size=4, shuffle_betas=True)
    assert math.isfinite(shuffled) and shuffled != pytest.approx(got, rel=1e-7)


def test_ablation_end_to_end_writes_the_table(ablation, stage1, simnsd_root, nsd_cache_dir, tmp_path):
    out = tmp_path / "ablation"
    result = ablation.main([
        "--checkpoint", stage1, "--nsd-root", simnsd_root, "--cache-dir", nsd_cache_dir, "--output-dir", str(out),
        "--subjects", ",".join(SUBJECTS), "--rows", "ce,obj", "--scaled-rows", "obj", "--scaled-weights", "1", "--steps", "2",
        "--batch-size", "4", "--num-samples", "2", "--eval-max-rows", "3", "--metrics", "BLEU-4,CIDEr"])
    names = ["stage 1 (start)", "CE only", "+L_obj (w=0.01)", "+L_obj (w=1)", "shuffled-brain control"]
    assert list(result["rows"]) == names
    columns = {"reward object_accuracy", "reward clip_text_image", "reward clip_image_image", "BLEU-4", "CIDEr",
               "object P", "object R", "object F1", "test CE"}
    for name in names:
        assert set(result["rows"][name]) == columns, name
        assert all(math.isfinite(v) for v in result["rows"][name].values()), name
    assert result["settings"]["test_rows"] == 6 and result["settings"]["clip_rewards_are_noise"]
    assert result["runs"]["+L_obj (w=1)"]["weights"] == {"object_accuracy": 1.0}
    assert {"sampling", "reward/object_accuracy", "backward"} <= set(result["runs"]["+L_obj (w=1)"]["ms_per_step"])
    assert len(result["verdict"]) == 2
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["rows"] == result["rows"]
    markdown = (out / "ablation.md").read_text()
    for name in names:
        assert f"| {name} |" in markdown
    assert "random tiny weights" in markdown


def test_step_benchmark_splits_the_step_of_each_option(stage1, simnsd_root, nsd_cache_dir, tmp_path):
    bench = _load("bench_rl_step")
    result = bench.main(["--checkpoint", stage1, "--nsd-root", simnsd_root, "--cache-dir", nsd_cache_dir,
                         "--output-dir", str(tmp_path), "--subjects", ",".join(SUBJECTS), "--steps", "2", "--warmup", "1",
                         "--batch-size", "4", "--num-samples", "2", "--render-steps", "1", "--render-size", "16",
                         "--surrogate-captions", "24", "--surrogate-render-fraction", "0.25",
                         "--surrogate-check-batch", "2"])
    assert list(result["options"]) == ["floor", "renderer", "distilled", "surrogate"]
    parts = ["sampling (generate)", "reward object_accuracy", "reward clip_text_image", "reward clip_image_image",
             "forward + backward + optimiser"]
    for option, r in result["options"].items():
        ms = r["ms_per_step"]
        own = parts if option != "floor" else [parts[0], parts[-1]]
        assert set(ms) == {*own, "total"} and all(ms[p] > 0 for p in own), option
        assert sum(ms[p] for p in own) <= ms["total"] * 1.0001, option  # the parts are inside the step
        rewards = sum(ms[p] for p in own if p.startswith("reward"))
        assert r["reward_fraction"] == pytest.approx(rewards / ms["total"])
        assert r["ce_step_ms"] > 0 and r["rl_over_ce"] == pytest.approx(ms["total"] / r["ce_step_ms"])
        assert np.isclose(sum(r["percent"].values()), 100 * sum(ms[p] for p in own) / ms["total"])
    assert result["options"]["renderer"]["rendered_per_step"] > 0 and result["options"]["floor"]["rendered_per_step"] == 0
    # the surrogate queues a quarter of each step's distinct captions (8 samples: at most 2) and renders the queue
    # when it holds 2 (--surrogate-check-batch): at most 1 left over + 2 new = 3 in a step; and logs how they agree
    assert result["options"]["surrogate"]["rendered_per_step"] <= 3
    assert result["options"]["surrogate"]["rendered_per_step"] < result["options"]["renderer"]["rendered_per_step"]
    assert result["surrogate_fit_here"]["captions"] == 24 and "surrogate_pairs" in result["options"]["surrogate"]["surrogate_log"]


def test_gpu_cost_estimate_adds_up_its_flop_counts(tmp_path):
    bench = _load("gpu_render_costs")
    assert bench.unet_evaluations(dict(num_inference_steps=4, guidance_scale=7.5)) == 8  # guided: two per step
    assert bench.unet_evaluations(dict(num_inference_steps=1, guidance_scale=0.0)) == 1
    out = tmp_path / "estimate.json"
    # 64 px keeps the meta-device count quick; nothing is computed, so the shapes alone set the figures
    r = bench.main(["--estimate", "--size", "64", "--samples", "1000", "--fit-captions", "100", "--check-fraction",
                    "0.1", "--calibration-seconds", "2.0", "--calibration-steps", "10", "--output", str(out)])
    g = r["gflops"]
    assert min(g.values()) == g["surrogate"] > 0  # the MLP is the cheapest part
    per_image = r["gflops_per_image"]
    assert per_image["renderer"] == pytest.approx(8 * g["unet sd1"] + g["vae decode"] + g["clip image"])
    assert per_image["sd-turbo"] == pytest.approx(g["unet sd2"] + g["vae decode"] + g["clip image"])
    throughput = (10 * 2 * g["unet sd1"] + g["vae decode"]) * 1e9 / 2.0
    assert r["calibration_tflops_per_s"] == pytest.approx(throughput / 1e12)
    ms = r["estimated_ms_per_image"]["renderer"]
    assert ms == pytest.approx(1000 * per_image["renderer"] * 1e9 / throughput)
    hours = r["estimated_stage2_image_reward_hours"]
    assert hours["renderer"] == pytest.approx(1000 * ms / 3.6e6)
    # the surrogate: 100 fitting renders + 10 % of 1000 samples checked, both at the renderer's cost, + its MLP
    assert hours["surrogate"] == pytest.approx((100 + 100) * ms / 3.6e6, rel=1e-3)
    assert json.loads(out.read_text())["estimated_stage2_image_reward_hours"] == pytest.approx(hours)
