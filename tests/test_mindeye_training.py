"""MindEyeTrainer on a small synthetic set: schedule, log, refusal, and a resume that crosses epoch boundaries and
ends bit-identical to the uninterrupted run."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from fgb2i_hf import MindEyeConfig, MindEyeModel
from fgb2i_hf.training.mindeye_trainer import (ImageEpochSampler, MindEyeTrainData, MindEyeTrainer,
                                               MindEyeTrainingConfig)

IMAGES, TRIALS, VOXELS = 20, 2, 12


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is faster than two, and two spin on a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_data() -> MindEyeTrainData:
    """20 images x 2 trials; column 0 of each row's betas is its row number (to read the order back)."""
    rng = np.random.default_rng(0)
    rows = IMAGES * TRIALS
    betas = rng.standard_normal((rows, VOXELS)).astype(np.float32)
    betas[:, 0] = np.arange(rows)
    return MindEyeTrainData(betas=betas, subjects=["subj01"] * rows, image_index=np.repeat(np.arange(IMAGES), TRIALS),
                            clip_targets=rng.standard_normal((IMAGES, 5, 8)).astype(np.float32),
                            latent_targets=rng.standard_normal((IMAGES, 4, 4, 4)).astype(np.float32))


def tiny_model() -> MindEyeModel:
    torch.manual_seed(0)
    return MindEyeModel(MindEyeConfig(
        voxel_counts={"subj01": VOXELS}, clip_tokens=5, clip_dim=8, hidden_size=16, num_blocks=1,
        projector_hidden_size=8, prior_depth=1, prior_heads=1, prior_dim_head=8, prior_timesteps=10,
        low_level_hidden_size=8, low_level_num_blocks=1, low_level_channels=4, low_level_side=2,
        low_level_block_out_channels=[4, 4], low_level_norm_num_groups=2))


def config(output_dir, **kw) -> MindEyeTrainingConfig:
    # 20 images per epoch, batch 8, partial batch dropped: 2 steps per epoch; 4 epochs = 8 steps
    return MindEyeTrainingConfig(output_dir=str(output_dir), num_train_epochs=4, per_device_train_batch_size=8,
                                 disable_tqdm=True, seed=7, **kw)


def read_log(output_dir):
    with open(os.path.join(output_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_schedule_phases_and_log(tmp_path):
    trainer = MindEyeTrainer(tiny_model(), config(tmp_path / "run"), synthetic_data())
    trainer.train()
    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(1, 9))
    assert [r["epoch"] for r in log] == [0, 0, 1, 1, 2, 2, 3, 3]
    # int(0.33 * 4) = 1 BiMixCo epoch, then SoftCLIP from 0.004 (first) to 0.0075 (last epoch)
    assert [r["phase"] for r in log] == ["bimixco"] * 2 + ["softclip"] * 6
    assert log[2]["temperature"] == pytest.approx(0.004) and log[-1]["temperature"] == pytest.approx(0.0075)
    # OneCycleLR: starts at max_lr / 25 (torch's div_factor), peaks after pct_start = 2 / epochs of the steps
    assert log[0]["lr"] == pytest.approx(3e-4 / 25)
    assert max(r["lr"] for r in log) == pytest.approx(3e-4, rel=0.05)
    assert all(k in log[0] for k in ("loss", "loss_contrastive", "loss_prior", "loss_low_level"))
    assert all(np.isfinite(r["loss"]) for r in log)
    final = trainer.save_model()
    assert os.path.exists(os.path.join(final, "model.safetensors"))
    saved = json.load(open(os.path.join(final, "mindeye_training_config.json")))
    assert saved["training"]["num_train_epochs"] == 4 and "torch" in saved["versions"]
    reloaded = MindEyeModel.from_pretrained(final)
    for k, v in params(trainer.model).items():
        assert torch.equal(v, reloaded.state_dict()[k]), k


def test_refuses_to_overwrite_a_run(tmp_path):
    MindEyeTrainer(tiny_model(), config(tmp_path / "run", max_steps=1), synthetic_data()).train()
    with pytest.raises(FileExistsError, match=r"already holds a run \(log.jsonl, checkpoints/\)"):
        MindEyeTrainer(tiny_model(), config(tmp_path / "run"), synthetic_data())


def test_resume_across_epoch_boundaries_is_bit_identical(tmp_path):
    full = MindEyeTrainer(tiny_model(), config(tmp_path / "full"), synthetic_data())
    full.train()

    # a run that checkpoints at step 3 (mid epoch 1), logs steps 4 and 5, and is killed before saving step 5
    part = MindEyeTrainer(tiny_model(), config(tmp_path / "part", save_steps=3, max_steps=5), synthetic_data())
    part.train()
    shutil.rmtree(tmp_path / "part" / "checkpoints" / "checkpoint-5")
    assert [r["step"] for r in read_log(tmp_path / "part")] == [1, 2, 3, 4, 5]

    # a fresh process resumes from step 3 (epoch 1, one batch in) and runs through epochs 2 and 3
    resumed = MindEyeTrainer(tiny_model(), config(tmp_path / "part", save_steps=3, resume_from_checkpoint="latest"),
                             synthetic_data())
    resumed.train()
    assert resumed.global_step == 8
    # same process, same kernels, same data order and per-step random draws: bit-equal by construction
    for k, v in params(full.model).items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    full_log, resumed_log = read_log(tmp_path / "full"), read_log(tmp_path / "part")
    assert [r["step"] for r in resumed_log] == list(range(1, 9))  # each step once: 4 and 5 were rewritten
    assert full_log == resumed_log


def test_epoch_order_survives_accelerates_own_epoch_counter(tmp_path):
    """accelerate's prepared loader calls sampler.set_epoch(its own iteration counter), which a new process starts at
    0; the trainer sets the epoch itself, so epoch 3 resumed after one batch reads epoch 3's rows."""
    trainer = MindEyeTrainer(tiny_model(), config(tmp_path / "run"), synthetic_data())
    order = trainer.sampler.order(3)
    rows = [int(r) for batch in trainer.epoch_batches(3, skip=1) for r in batch["betas"][:, 0]]
    assert rows == order[8:16]
    naive = [int(r) for batch in trainer.accelerator.skip_first_batches(trainer.dataloader, 1)
             for r in batch["betas"][:, 0]]
    assert naive == trainer.sampler.order(3)[8:16]  # the loader now carries epoch 3 too
    fresh = MindEyeTrainer(tiny_model(), config(tmp_path / "fresh"), synthetic_data())
    stale = [int(r) for batch in fresh.accelerator.skip_first_batches(fresh.dataloader, 1)
             for r in batch["betas"][:, 0]]
    assert stale == fresh.sampler.order(0)[8:16] != order[8:16]  # what a naive resume would have read


def test_sampler_visits_each_image_once_per_epoch():
    groups = [np.array([2 * i, 2 * i + 1]) for i in range(IMAGES)]
    sampler = ImageEpochSampler(groups, seed=1)
    for epoch in range(3):
        order = sampler.order(epoch)
        assert sorted(r // 2 for r in order) == list(range(IMAGES))
    assert sampler.order(0) != sampler.order(1) and sampler.order(2) == ImageEpochSampler(groups, 1).order(2)
    every = ImageEpochSampler(groups, seed=1, repeats="all_trials")
    assert len(every) == 40 and sorted(every.order(0)) == list(range(40))


def test_recipe_configs_parse_and_the_nsd_config_is_mindeye1():
    from dataclasses import fields

    from trl import TrlParser

    from fgb2i_hf.drivers.mindeye import MindEyeRunConfig

    configs = os.path.join(os.path.dirname(__file__), "..", "recipes", "configs")
    (nsd,) = TrlParser((MindEyeRunConfig,)).parse_args_and_config(
        ["--config", os.path.join(configs, "mindeye_nsd.yaml"), "--num_train_epochs", "3"])
    assert nsd.num_train_epochs == 3  # the command line wins
    defaults = MindEyeTrainingConfig()
    paper = ("per_device_train_batch_size", "max_lr", "lr_scheduler_type", "final_div_factor", "weight_decay",
             "mixup_pct", "bimixco_temperature", "softclip_temperature_start", "softclip_temperature_end",
             "mixco_beta", "mixco_select_prob", "prior_loss_weight", "repeats", "max_grad_norm", "seed")
    for name in paper:  # the YAML restates MindEye1's values, which are the config defaults
        assert getattr(nsd, name) == getattr(defaults, name), name
    assert {f.name for f in fields(MindEyeTrainingConfig)} >= set(paper)
    assert nsd.model_config == {} and (nsd.clip_image_size, nsd.latent_image_size, nsd.sessions) == (224, 512, 37)
    (sim,) = TrlParser((MindEyeRunConfig,)).parse_args_and_config(
        ["--config", os.path.join(configs, "mindeye_sim_tiny.yaml"), "--model_config", '{"hidden_size": 64}'])
    assert sim.target_model_name_or_path == "simnsd/clip" and sim.model_config == {"hidden_size": 64}
    with pytest.raises(ValueError, match=r"model_config sets \['clip_dim'\]"):
        MindEyeRunConfig(model_config={"clip_dim": 8})
