"""Stage 1 (cross-entropy) training: learning beats the shuffled-brain control, exact resume, configs, bad input,
the recipes end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from datasets import DatasetDict, concatenate_datasets
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments
from trl import TrlParser

from fgb2i_hf.evaluation import CONTROL_ROW, MODEL_ROW
from greedy_helpers import decisive_rows
from fgb2i_hf.training import CaptionEpochCallback
from fgb2i_hf.drivers.ce import CEScriptArguments, run_ce

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "recipes", "configs")

# a tiny scratch model: GPT-2 2 x 64 and a 2 x 4 mapper, prefix 4
TINY_MODEL = dict(language_model="scratch", tokenizer_vocab_size=384, gpt2_config={"n_embd": 64, "n_layer": 2, "n_head": 4},
                  freeze_language_model=False, prefix_length=4, mapper_layers=2, mapper_heads=4)


@pytest.fixture
def one_thread():
    """Small matrices: one thread is as fast, and far faster than two when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def arguments(output_dir, subjects=("subj01", "subj02"), training=None, **script):
    script_args = CEScriptArguments(**{**TINY_MODEL, "subjects": list(subjects), **script})
    training_args = TrainingArguments(**{
        "output_dir": str(output_dir), "per_device_train_batch_size": 32, "learning_rate": 3e-3,
        "lr_scheduler_type": "cosine", "warmup_steps": 0.05, "weight_decay": 0.01, "eval_strategy": "no",
        "save_strategy": "no", "report_to": "none", "use_cpu": True, "seed": 0, "disable_tqdm": True,
        "logging_steps": 1000, **(training or {})})
    return script_args, training_args


def subset(dd, per_subject_train, per_subject_test, subjects=("subj01", "subj02")):
    """The first rows of each subject, both splits."""
    out = {}
    for split, n in (("train", per_subject_train), ("test", per_subject_test)):
        column = np.asarray(dd[split]["subject"])
        out[split] = concatenate_datasets([dd[split].select(np.flatnonzero(column == s)[:n]) for s in subjects])
    return DatasetDict(out)


# -- learning -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(simnsd_dataset, tmp_path_factory):
    """Subjects 1 and 2 of SimNSD tiny (3,900 single-trial rows), 4 epochs of batch 32 (488 steps)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ce_small")
    script_args, training_args = arguments(out, max_caption_tokens=32, final_eval_metrics=["BLEU-4"],
                                           training={"num_train_epochs": 4})
    data = DatasetDict(train=simnsd_dataset["train"], test=simnsd_dataset["test"])
    keep = {"train": [i for i, s in enumerate(data["train"]["subject"]) if s in ("subj01", "subj02")],
            "test": [i for i, s in enumerate(data["test"]["subject"]) if s in ("subj01", "subj02")]}
    data = DatasetDict({k: v.select(keep[k]) for k, v in data.items()})
    result = run_ce(script_args, training_args, data=data)
    torch.set_num_threads(before)
    return out, result, data


def test_decoded_test_captions_beat_the_shuffled_brain_control(trained):
    out, result, data = trained
    rows = result["eval"]["rows"]
    brain, control = rows[MODEL_ROW], rows[CONTROL_ROW]
    print(f"\nobject F1 {brain['object F1']:.3f} vs control {control['object F1']:.3f}; "
          f"BLEU-4 {brain['BLEU-4']:.3f} vs control {control['BLEU-4']:.3f}")
    assert brain["object F1"] > control["object F1"] + 0.10
    assert brain["BLEU-4"] > control["BLEU-4"] + 0.02
    for subject in ("subj01", "subj02"):  # both subjects of the one model decode
        pair = result["eval"]["subjects"][subject]
        assert pair[MODEL_ROW]["object F1"] > pair[CONTROL_ROW]["object F1"] + 0.05
    # what the run leaves behind
    final = out / "final"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "train_ce_config.json", "README.md"):
        assert (final / name).exists(), name
    config = json.load(open(final / "train_ce_config.json"))
    assert config["script_arguments"]["subjects"] == ["subj01", "subj02"]
    assert config["training_arguments"]["num_train_epochs"] == 4 and "transformers" in config["versions"]
    assert json.load(open(out / "result.json"))["global_step"] == result["global_step"] == 4 * -(-len(data["train"]) // 32)
    assert (out / "eval_test.md").exists() and (out / "eval_test_predictions_subj02.json").exists()


def test_the_final_folder_loads_as_a_stage1_checkpoint(trained):
    from transformers import AutoTokenizer

    from fgb2i_hf import BrainPrefixGPT2
    from fgb2i_hf.evaluation import decode_dataset

    out, _, data = trained
    model = BrainPrefixGPT2.from_pretrained(str(out / "final"))
    tokenizer = AutoTokenizer.from_pretrained(str(out / "final"))
    assert sorted(model.config.voxel_counts) == ["subj01", "subj02"] and not model.config.freeze_language_model
    saved = json.load(open(out / "eval_test_predictions_subj01.json"))
    first = decode_dataset(model, tokenizer, data["test"], rows=[0, 1, 2], progress=False)
    # reloaded weights and another batch than the run's evaluation: the same captions because no greedy step of
    # these rows is a near-tie (greedy_helpers)
    assert all(decisive_rows(model, data["test"], [0, 1, 2], tokenizer.eos_token_id))
    assert first == [saved["0"], saved["1"], saved["2"]]


def test_evaluate_captions_outputs(trained, tmp_path, simnsd_root):
    from fgb2i_hf.drivers.caption_eval import EvaluateCaptionsArguments, evaluate_captions
    from fgb2i_hf.clip import CLIPScorer

    out, result, data = trained
    clip = CLIPScorer.from_config(dict(  # a tiny random CLIP: the columns and their plumbing, not their values
        embed_dim=16, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)))
    args = EvaluateCaptionsArguments(model_name_or_path=str(out / "final"), nsd_root=simnsd_root, subjects=["subj02"],
                                     max_rows=40, metrics=["BLEU-4", "CIDEr"], output_dir=str(tmp_path / "eval"))
    evaluation = evaluate_captions(args, data=data, clip_scorer=clip)
    files = sorted(os.listdir(tmp_path / "eval"))
    assert files == ["control_subj02.json", "evaluate_captions_config.json", "metrics.json", "metrics.md",
                     "predictions.jsonl", "predictions_subj02.json"]
    predictions = json.load(open(tmp_path / "eval" / "predictions_subj02.json"))
    assert list(predictions) == [str(i) for i in range(40)]
    # the same captions as the training run's final evaluation of subj02's first 40 test rows: a reloaded model and
    # other batches, so compared on the rows whose greedy decoding has no near-tie step (greedy_helpers)
    from fgb2i_hf import BrainPrefixGPT2

    ce_predictions = json.load(open(out / "eval_test_predictions_subj02.json"))
    model = BrainPrefixGPT2.from_pretrained(str(out / "final"))
    rows = [i for i, s in enumerate(data["test"]["subject"]) if s == "subj02"][:40]
    decisive = decisive_rows(model, data["test"], rows, model.eos_token_id)
    assert sum(decisive) >= 36, sum(decisive)
    assert all(predictions[k] == ce_predictions[k] for k, sure in zip(predictions, decisive) if sure)
    table = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert {"BLEU-4", "CIDEr", "object F1", "CLIP-S", "RefCLIP-S"} <= set(table["rows"][MODEL_ROW])
    assert table["deltas"]["object F1"] == pytest.approx(
        table["rows"][MODEL_ROW]["object F1"] - table["rows"][CONTROL_ROW]["object F1"])
    assert table["deltas"]["object F1"] > 0.05
    markdown = open(tmp_path / "eval" / "metrics.md").read()
    assert "| brain |" in markdown and "| shuffled-brain control |" in markdown
    assert evaluation.rows == table["rows"]


# -- exact resume ---------------------------------------------------------------------------------------------------

class StopAt(TrainerCallback):
    """Simulates a crash after a step (hf-gotchas §3: not a smaller max_steps, which would change the schedule)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


class NoEpochUpdates(CaptionEpochCallback):
    def __init__(self, collator):  # noqa: D401 - replaces the real callback: the collator keeps epoch 0
        super().__init__(collator)

    def on_epoch_begin(self, args, state, control, **kwargs):
        pass


def _train(data, out, monkeypatch=None, stop=None, resume=None, epoch_callback=True):
    script_args, training_args = arguments(
        out, caption_column="captions", eval_split="", final_eval_split="", max_caption_tokens=24,
        training={"num_train_epochs": 3, "per_device_train_batch_size": 8, "train_sampling_strategy": "sequential",
                  "save_strategy": "steps", "save_steps": 4, "resume_from_checkpoint": resume})
    if not epoch_callback:
        monkeypatch.setattr("fgb2i_hf.drivers.ce.CaptionEpochCallback", NoEpochUpdates)
    run_ce(script_args, training_args, data=data, callbacks=[StopAt(stop)] if stop else None)
    if not epoch_callback:
        monkeypatch.undo()
    return load_file(str(out / "final" / "model.safetensors"))


def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_run(simnsd_dataset, tmp_path, one_thread, monkeypatch):
    # 24 rows (12 per subject) of 5 COCO captions each: 3 steps per epoch, a different caption per row each epoch
    data = DatasetDict(train=subset(simnsd_dataset, 12, 4)["train"])
    whole = _train(data, tmp_path / "whole")
    interrupted = _train(data, tmp_path / "resumed", stop=4)  # crash after step 4, in the second epoch
    assert sorted(os.listdir(tmp_path / "resumed")).count("checkpoint-4") == 1
    assert not all(torch.equal(whole[k], interrupted[k]) for k in whole)
    resumed = _train(data, tmp_path / "resumed", resume=str(tmp_path / "resumed" / "checkpoint-4"))
    assert set(resumed) == set(whole)
    # bit-exact by construction: one process, the same kernels on the same shapes; Trainer copies the checkpoint's
    # values into parameters allocated as in the uninterrupted run (load_state_dict), and restores the RNG states
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    state = json.load(open(tmp_path / "resumed" / "result.json"))
    assert state["global_step"] == 9
    # control: had the collator not been told the epoch on resume, the resumed run would train on other captions
    _train(data, tmp_path / "blind", stop=4)
    blind = _train(data, tmp_path / "blind", monkeypatch, resume=str(tmp_path / "blind" / "checkpoint-4"),
                   epoch_callback=False)
    assert not all(torch.equal(whole[k], blind[k]) for k in whole)


def test_a_damaged_checkpoint_is_named_and_a_missing_rng_state_is_said(simnsd_dataset, tmp_path, one_thread):
    import shutil
    import warnings

    from fgb2i_hf.training import CheckpointError

    data = DatasetDict(train=subset(simnsd_dataset, 12, 4)["train"])
    _train(data, tmp_path / "run", stop=4)

    def damaged(name, damage):
        out = tmp_path / name
        shutil.copytree(tmp_path / "run", out)
        checkpoint = out / "checkpoint-4"
        damage(checkpoint)
        return out, str(checkpoint)

    def truncate(path):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)

    for name, damage, message in [
        ("weights", lambda c: truncate(c / "model.safetensors"),
         r"checkpoint-4/model\.safetensors: cannot load the model weights \(SafetensorError"),
        ("state", lambda c: (c / "trainer_state.json").write_text("{not json"),
         r"checkpoint-4/trainer_state\.json: not valid JSON"),
        ("optimizer", lambda c: truncate(c / "optimizer.pt"), r"checkpoint-4: cannot load the optimizer or scheduler"),
        ("rng", lambda c: (c / "rng_state.pth").write_bytes(b"garbage"),
         r"checkpoint-4/rng_state\.pth: cannot be read.*delete it to resume without the random states"),
    ]:
        out, checkpoint = damaged(name, damage)
        with pytest.raises(CheckpointError, match=message):
            _train(data, out, resume=checkpoint)
    # a missing RNG state: the resume runs, and says that it is not exact
    out, checkpoint = damaged("no_rng", lambda c: os.remove(c / "rng_state.pth"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(data, out, resume=checkpoint)
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert any("rng_state.pth" in m and "not reproduce" in m for m in said), said


def test_caption_epoch_callback_follows_the_epoch_after_resume():
    from transformers import TrainerControl, TrainerState

    from fgb2i_hf.data.collate import BrainCaptionCollator
    from fgb2i_hf.testing import tiny_caption_tokenizer

    collator = BrainCaptionCollator(tiny_caption_tokenizer())
    callback = CaptionEpochCallback(collator)
    for epoch, expected in ((0.0, 0), (1.0, 1), (1.3333333, 1), (2.75, 2), (3.0, 3), (3 - 4e-16, 3)):
        callback.on_epoch_begin(None, TrainerState(epoch=epoch), TrainerControl())
        assert collator.epoch == expected, epoch


# -- configs --------------------------------------------------------------------------------------------------------

def parse(*argv):
    return TrlParser((CEScriptArguments, TrainingArguments)).parse_args_and_config(args=list(argv))


def test_sim_tiny_config_and_cli_overrides():
    script, training = parse("--config", os.path.join(CONFIGS, "sim_tiny.yaml"))
    assert script.language_model == "scratch" and script.subjects == ["subj01", "subj02", "subj05", "subj07"]
    assert script.caption_column == "fine_captions" and script.eval_references == "fine_captions"
    assert script.gpt2_config == {"n_embd": 64, "n_layer": 2, "n_head": 4} and not script.freeze_language_model
    assert training.eval_strategy == "epoch" and training.use_cpu
    script, training = parse("--config", os.path.join(CONFIGS, "sim_tiny.yaml"), "--learning_rate", "1e-4",
                             "--subjects", "subj01", "subj05", "--caption_column", "captions",
                             "--gpt2_config", '{"n_embd": 32, "n_layer": 1, "n_head": 2}', "--num_train_epochs", "2")
    assert training.learning_rate == 1e-4 and training.num_train_epochs == 2
    assert script.subjects == ["subj01", "subj05"]
    assert script.caption_column == "captions" and script.eval_references == "captions"  # references follow
    assert script.gpt2_config == {"n_embd": 32, "n_layer": 1, "n_head": 2}
    assert script.prefix_length == 4  # untouched YAML values stay


def test_nsd_paper_config():
    script, training = parse("--config", os.path.join(CONFIGS, "nsd_paper.yaml"))
    assert script.subjects == ["subj01", "subj02", "subj05", "subj07"]
    assert script.language_model == "gpt2" and script.freeze_language_model
    assert (script.prefix_length, script.mapper_layers, script.mapper_heads) == (10, 32, 8)  # the seed's mapper
    assert script.caption_column == "fine_captions" and script.max_caption_tokens == 77
    assert training.num_train_epochs == 200 and not training.use_cpu


def parse_rl_after_ce(ce_config: str, rl_config: str):
    """(stage-1 script args, stage-1 output_dir, stage-2 script args, ReinforceConfig) of two shipped configs."""
    from fgb2i_hf.rl import ReinforceConfig

    from fgb2i_hf.drivers.rl import RLScriptArguments
    ce, _ = parse("--config", os.path.join(CONFIGS, ce_config))
    ce_out = yaml.safe_load(open(os.path.join(CONFIGS, ce_config)))["output_dir"]
    script, rl = TrlParser((RLScriptArguments, ReinforceConfig)).parse_args_and_config(
        args=["--config", os.path.join(CONFIGS, rl_config)])
    return ce, ce_out, script, rl


def test_sim_tiny_rl_config_reads_the_ce_output():
    ce, ce_out, script, rl = parse_rl_after_ce("sim_tiny.yaml", "sim_tiny_rl.yaml")
    assert script.model_name_or_path == os.path.join(ce_out, "final")
    assert script.nsd_root == ce.nsd_root and script.subjects == ce.subjects
    assert rl.rewards == ["object_accuracy", "clip_text_image"] and script.clip_model == "simnsd/clip"


def test_nsd_paper_rl_config_holds_the_papers_settings():
    ce, ce_out, script, rl = parse_rl_after_ce("nsd_paper.yaml", "nsd_paper_rl.yaml")
    assert script.model_name_or_path == os.path.join(ce_out, "final")
    # stage 2 states no data settings of its own: they come from the stage-1 model's data contract
    assert script.subjects == ce.subjects and script.sessions is None and ce.sessions == 37
    assert script.image_reward == "surrogate" and script.surrogate_path
    assert rl.rewards == ["object_accuracy", "clip_text_image", "clip_image_image"]
    assert rl.reward_weights == [0.01, 0.01, 0.01] and rl.baseline == "none" and rl.num_train_epochs == 10


def test_unknown_config_key_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"nsd_root": "x", "learning_rate": 1e-3, "prefix_lenght": 4}))
    with pytest.raises(ValueError, match="prefix_lenght"):
        parse("--config", str(path))
    with pytest.raises(ValueError, match="not_a_flag"):
        parse("--config", os.path.join(CONFIGS, "sim_tiny.yaml"), "--not_a_flag", "1")


@pytest.mark.parametrize("overrides, message", [
    ({"caption_column": "coco"}, "caption_column must be one of"),
    ({"gpt2_config": '{"n_embd": 32}', "language_model": "gpt2"}, "gpt2_config is only used with"),
    ({"subjects": []}, "subjects is empty"),
    ({"subjects": ["subj01", "subj01"]}, "subjects listed twice"),
    ({"simulate_nsd": "huge"}, "simulate_nsd must be"),
])
def test_bad_settings_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        CEScriptArguments(**overrides)


# -- bad input: each stops before any training step -----------------------------------------------------------------

class NoStep(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        raise AssertionError("a training step ran")


def _fails(tmp_path, data, message, **script):
    # no monitoring split in these small subsets: the test split is checked as the final evaluation's
    script_args, training_args = arguments(tmp_path / "out", eval_split=script.pop("eval_split", ""), **script)
    with pytest.raises(ValueError, match=message):
        run_ce(script_args, training_args, data=data, callbacks=[NoStep()])
    assert not (tmp_path / "out" / "final").exists()


@pytest.mark.parametrize("training, message", [
    ({"learning_rate": -1e-3}, r"learning_rate must be > 0, got -0\.001"),
    ({"weight_decay": -0.1}, r"weight_decay must be >= 0"),
    ({"per_device_train_batch_size": 0}, r"per_device_train_batch_size must be >= 1"),
    ({"gradient_accumulation_steps": 0}, r"gradient_accumulation_steps must be >= 1"),
])
def test_bad_training_arguments_stop_before_any_data_or_folder(tmp_path, training, message):
    script_args, training_args = arguments(tmp_path / "out", nsd_root=str(tmp_path / "no_nsd_here"), training=training)
    with pytest.raises(ValueError, match=message):  # not the missing NSD root: nothing was read
        run_ce(script_args, training_args, callbacks=[NoStep()])
    assert not (tmp_path / "out").exists()


def test_an_unknown_model_id_names_the_config_field(simnsd_dataset, tmp_path):
    data = subset(simnsd_dataset, 8, 4)
    for field_values, field in [
            ({"language_model": "no-such-org/no-such-gpt2"}, "language_model"),
            ({"tokenizer_name_or_path": "no-such-org/no-such-tokenizer"}, "tokenizer_name_or_path")]:
        script = {"gpt2_config": None, "language_model": "no-such-org/no-such-gpt2", **field_values}
        script_args, training_args = arguments(tmp_path / field, eval_split="", **script)
        with pytest.raises(OSError, match=rf"{field}='{field_values[field]}': cannot load it"):
            run_ce(script_args, training_args, data=data, callbacks=[NoStep()])


def test_a_subject_absent_from_the_data(simnsd_dataset, simnsd_root, nsd_cache_dir, tmp_path):
    data = subset(simnsd_dataset, 8, 4)
    _fails(tmp_path, data, r"subject\(s\) \['subj05'\] have no rows in the 'train' split \(it holds \['subj01', "
                           r"'subj02'\]\)", subjects=["subj01", "subj02", "subj05"])
    _fails(tmp_path, data, r"holds rows of subject\(s\) \['subj02'\] not listed", subjects=["subj01"])
    # from the NSD root: SimNSD tiny has subjects 1, 2, 5 and 7 only
    from fgb2i_hf.data import NSDMissingFileError

    script_args, training_args = arguments(tmp_path / "root", subjects=["subj01", "subj03"], nsd_root=simnsd_root,
                                           cache_dir=nsd_cache_dir)
    with pytest.raises(NSDMissingFileError, match="no betas for subj03"):
        run_ce(script_args, training_args, callbacks=[NoStep()])


def test_rows_with_empty_captions(simnsd_dataset, tmp_path):
    data = subset(simnsd_dataset, 8, 4)
    data["train"] = data["train"].map(lambda r, i: {"captions": [] if i in (3, 9) else r["captions"]},
                                      with_indices=True)
    _fails(tmp_path, data, r"train split: 2 of 16 rows have an empty 'captions' \(first: subject='subj01'",
           caption_column="captions")
    data = subset(simnsd_dataset, 8, 4)
    data["test"] = data["test"].map(lambda r, i: {"captions": [] if i == 0 else r["captions"]}, with_indices=True)
    _fails(tmp_path, data, r"test split: 1 of 8 rows have an empty 'captions'", caption_column="captions")


def test_fine_captions_asked_for_but_absent(simnsd_root, nsd_cache_dir, tmp_path):
    # the NSD builder without a fine-captions file: every row's fine_captions is empty
    script_args, training_args = arguments(tmp_path / "out", subjects=["subj01"], nsd_root=simnsd_root,
                                           cache_dir=nsd_cache_dir, fine_captions="")
    with pytest.raises(ValueError, match="fine captions were asked for but are absent"):
        run_ce(script_args, training_args, callbacks=[NoStep()])
    assert not (tmp_path / "out" / "final").exists()


# -- the recipes as users run them ----------------------------------------------------------------------------------

def run(args, timeout=600, env_extra=None):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               **(env_extra or {}))
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_recipes_train_then_evaluate(simnsd_root, nsd_cache_dir, tmp_path):
    out = tmp_path / "ce"
    run([sys.executable, "recipes/train_ce.py", "--config", os.path.join(CONFIGS, "sim_tiny.yaml"),
         "--nsd_root", simnsd_root, "--cache_dir", nsd_cache_dir, "--output_dir", str(out), "--subjects", "subj07",
         "--max_train_rows", "96", "--eval_max_rows", "12", "--num_train_epochs", "2", "--max_caption_tokens", "16",
         "--caption_eval_metrics", "BLEU-4", "--final_eval_metrics", "BLEU-4", "--disable_tqdm", "true",
         "--report_to", "tensorboard"])
    result = json.load(open(out / "result.json"))
    assert result["global_step"] == 6 and result["epochs"] == 2
    evals = [h for h in result["log_history"] if "eval_loss" in h]
    assert len(evals) == 2 and all("eval_BLEU-4" in h and "eval_object_F1" in h for h in evals)
    assert sorted(d for d in os.listdir(out) if d.startswith("checkpoint-")) == ["checkpoint-3", "checkpoint-6"]
    assert any(f.startswith("events.out.tfevents") for _, _, fs in os.walk(out / "runs") for f in fs)
    # the evaluation recipe's main(), in this process (its CLI is the same TrlParser as train_ce's)
    sys.path.insert(0, os.path.join(REPO, "recipes"))
    try:
        from evaluate_captions import main as evaluate_main
    finally:
        sys.path.pop(0)
    evaluation = evaluate_main(["--model_name_or_path", str(out / "final"), "--nsd_root", simnsd_root, "--cache_dir",
                                nsd_cache_dir, "--max_rows", "12", "--metrics", "BLEU-4",
                                "--output_dir", str(tmp_path / "eval")])
    assert "| shuffled-brain control |" in open(tmp_path / "eval" / "metrics.md").read()
    assert set(evaluation.rows) == {MODEL_ROW, CONTROL_ROW}
    assert len(json.load(open(tmp_path / "eval" / "predictions_subj07.json"))) == 12


def test_two_cpu_processes_decode_sharded_and_agree_with_one(simnsd_root, nsd_cache_dir, tmp_path):
    """DDP on two CPU processes (mixed subjects, find_unused_parameters): each process decodes half the eval rows;
    the gathered metrics of the last evaluation equal the main process's own decoding of all rows afterwards."""
    out = tmp_path / "ddp"
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         "recipes/train_ce.py", "--config", os.path.join(CONFIGS, "sim_tiny.yaml"), "--nsd_root", simnsd_root,
         "--cache_dir", nsd_cache_dir, "--output_dir", str(out), "--subjects", "subj01", "subj02",
         "--max_train_rows", "64", "--eval_max_rows", "9", "--num_train_epochs", "2", "--max_caption_tokens", "16",
         "--caption_eval_metrics", "BLEU-4", "--final_eval_metrics", "BLEU-4", "--save_strategy", "no",
         "--final_eval_split", "validation", "--disable_tqdm", "true"], env_extra={"ACCELERATE_USE_CPU": "true"})
    result = json.load(open(out / "result.json"))
    assert result["processes"] == 2 and result["global_step"] == 2 * 2  # 128 rows / (32 x 2 processes) per epoch
    # the metrics below are equal only if the captions are: each process decoded other batches, so check that no
    # greedy step of the 18 eval rows is a near-tie (greedy_helpers)
    from fgb2i_hf import BrainPrefixGPT2
    from fgb2i_hf.data import load_nsd
    from fgb2i_hf.drivers.ce import first_rows_per_subject

    model = BrainPrefixGPT2.from_pretrained(str(out / "final"))
    # the final evaluation decodes the monitoring split again here, in one process
    rows = load_nsd(simnsd_root, subjects=["subj01", "subj02"], cache_dir=nsd_cache_dir)["validation"]
    rows = first_rows_per_subject(rows, 9)
    assert all(decisive_rows(model, rows, range(len(rows)), model.eos_token_id, max_new_tokens=16))
    last = [h for h in result["log_history"] if "eval_loss" in h][-1]
    brain = result["eval"]["rows"][MODEL_ROW]
    assert last["eval_BLEU-4"] == pytest.approx(brain["BLEU-4"], abs=1e-12)
    assert last["eval_object_F1"] == pytest.approx(brain["object F1"], abs=1e-12)
    assert len(json.load(open(out / "eval_validation_predictions_subj02.json"))) == 9
