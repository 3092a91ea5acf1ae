"""recipes/train_rl.py end to end: one process, and two CPU processes under torchrun with synchronised gradients."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from fgb2i_hf.testing import tiny_brain_prefix_gpt2
from fgb2i_hf.tokenization import train_caption_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def stage1(simnsd_dataset, tmp_path_factory):
    """A tiny 'stage-1' model for subj01 and subj02 saved with its tokenizer, as train_ce.py leaves it."""
    train = simnsd_dataset["train"]
    counts = {}
    for s, b in zip(train["subject"], train["betas"]):
        counts.setdefault(s, len(b))
    tokenizer = train_caption_tokenizer([c for cs in train["fine_captions"][:3000] for c in cs], vocab_size=300)
    model, _ = tiny_brain_prefix_gpt2({s: counts[s] for s in ("subj01", "subj02")}, tokenizer=tokenizer,
                                      max_caption_tokens=12)
    path = tmp_path_factory.mktemp("stage1")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def write_config(path, stage1, simnsd_root, cache_dir, output_dir, **overrides):
    cfg = dict(model_name_or_path=stage1, nsd_root=simnsd_root, subjects=["subj01", "subj02"], cache_dir=cache_dir,
               max_train_rows=64, eval_max_rows=16, output_dir=str(output_dir), rewards=["object_accuracy"],
               reward_weights=[1.0], num_samples=2, baseline="leave_one_out", max_steps=4,
               per_device_train_batch_size=4, logging_steps=2, learning_rate=1e-3, seed=0)
    cfg.update(overrides)
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def run(args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_single_process_run_saves_the_model_and_scores_the_test_split(stage1, simnsd_root, nsd_cache_dir, tmp_path):
    cfg = write_config(tmp_path / "rl.yaml", stage1, simnsd_root, nsd_cache_dir, tmp_path / "out")
    run([sys.executable, "recipes/train_rl.py", "--config", cfg, "--max_steps", "2"])  # CLI overrides YAML
    result = json.load(open(tmp_path / "out" / "result.json"))
    assert result["steps"] == 2 and result["processes"] == 1
    assert {"BLEU-4", "CIDEr", "object F1", "reward object_accuracy"} <= set(result["eval"])
    assert os.path.exists(tmp_path / "out" / "final" / "model.safetensors")
    assert os.path.exists(tmp_path / "out" / "eval_test.md")


def test_unknown_config_key_is_refused(stage1, simnsd_root, nsd_cache_dir, tmp_path):
    cfg = write_config(tmp_path / "rl.yaml", stage1, simnsd_root, nsd_cache_dir, tmp_path / "out", not_a_key=3)
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "recipes/train_rl.py", "--config", cfg], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "not_a_key" in proc.stderr


def test_two_cpu_processes_keep_identical_parameters(stage1, simnsd_root, nsd_cache_dir, tmp_path):
    cfg = write_config(tmp_path / "rl.yaml", stage1, simnsd_root, nsd_cache_dir, tmp_path / "out", eval_split="")
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "recipes/train_rl.py", "--config", cfg], env_extra={"ACCELERATE_USE_CPU": "true"})
    result = json.load(open(tmp_path / "out" / "result.json"))
    assert result["processes"] == 2
    assert len(result["parameter_checksums"]) == 2
    assert result["parameters_identical_across_processes"], result["parameter_checksums"]
    # and training moved them: compare with the stage-1 checksum
    from fgb2i_hf import BrainPrefixGPT2

    start = BrainPrefixGPT2.from_pretrained(stage1)
    start_sum = float(sum(p.detach().double().sum() for p in start.parameters() if p.requires_grad))
    assert abs(result["parameter_checksums"][0] - start_sum) > 1e-6
