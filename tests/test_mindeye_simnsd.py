"""MindEye on SimNSD (tiny scale, subj01): retrieval of held-out test images against chance and a shuffled-brain
control, and the driver end to end (targets, training, final/, evaluation) with the prior vs the backbone's direct
output. Targets are the SimNSD world's CLIP image tokens (simnsd/clip, 65 x 64) and VAE latents (simnsd/diffusion).

Margins were checked on seeds 0-4 (numbers in the comments; ``SEED`` picks the one run here)."""

import json
import os

import numpy as np
import pytest
import torch

from fgb2i_hf.drivers.mindeye import MindEyeRunConfig, build_model, cached_targets, run_mindeye, split_arrays
from fgb2i_hf.models.mindeye.retrieval import retrieval_accuracy
from fgb2i_hf.training.mindeye_trainer import MindEyeTrainData, MindEyeTrainer

SEED = int(os.environ.get("MINDEYE_TEST_SEED", "0"))
TINY = dict(hidden_size=128, num_blocks=2, projector_hidden_size=64, prior_depth=1, prior_heads=2, prior_dim_head=16,
            low_level_hidden_size=64, low_level_num_blocks=1, low_level_channels=16, low_level_side=4,
            low_level_block_out_channels=[16, 16, 16], low_level_norm_num_groups=8)


def run_config(output_dir, nsd_root, cache_dir, **kw) -> MindEyeRunConfig:
    settings = dict(nsd_root=nsd_root, cache_dir=cache_dir, output_dir=str(output_dir), subjects=["subj01"],
                    target_model_name_or_path="simnsd/clip", latent_model_name_or_path="simnsd/diffusion",
                    latent_image_size=64, device="cpu", extraction_batch_size=256, model_config=TINY, max_lr=1e-3,
                    seed=SEED, disable_tqdm=True, logging_steps=20)
    return MindEyeRunConfig(**{**settings, **kw})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is faster than two, and two spin on a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def simnsd_subj01(simnsd_root, nsd_cache_dir, tmp_path_factory):
    """subj01's rows and the CLIP targets of its images, cached where the driver test's run will find them."""
    from fgb2i_hf.data import NSDStimuli, load_nsd

    root = tmp_path_factory.mktemp("mindeye")
    config = run_config(root / "driver", simnsd_root, nsd_cache_dir)
    data = load_nsd(simnsd_root, subjects=["subj01"], cache_dir=nsd_cache_dir)
    train, test = split_arrays(data["train"], ["subj01"]), split_arrays(data["test"], ["subj01"])
    ids = np.unique(np.concatenate([train[2], test[2]]))
    targets, _ = cached_targets(config, ids, NSDStimuli(simnsd_root), need_latents=False, progress=False)
    return {"root": root, "nsd_root": simnsd_root, "data": data, "train": train, "test": test, "ids": ids, "clip": targets["clip_vision"]}


def train_contrastive(s, output_dir, shuffle_pairs: bool):
    """Backbone + projector with MindEye1's schedule (BiMixCo, then SoftCLIP), 20 epochs of 20 steps."""
    config = run_config(output_dir, None, None, num_train_epochs=20, low_level=False,
                        model_config={**TINY, "use_prior": False})
    betas, subjects, nsd_ids, counts = s["train"]
    model = build_model(config, counts, {"clip_vision": s["clip"]})
    index = np.searchsorted(s["ids"], nsd_ids)
    if shuffle_pairs:  # the control: each brain trained against another image's target
        index = np.random.default_rng(SEED).permutation(index)
    MindEyeTrainer(model, config, MindEyeTrainData(betas, subjects, index, s["clip"])).train()
    test_betas, _, test_ids, _ = s["test"]
    embeds = model.eval().encode(torch.from_numpy(test_betas.astype(np.float32)), "subj01")[1]
    truth = np.asarray(s["clip"])[np.searchsorted(s["ids"], test_ids)]
    return (retrieval_accuracy(embeds, truth, batch_size=300),  # all 100 test images: 100-way
            retrieval_accuracy(embeds, truth, batch_size=10, num_loops=300, seed=0))  # 10-way, 300 draws


def test_retrieval_far_above_chance_and_the_shuffled_control(simnsd_subj01):
    s = simnsd_subj01
    brain, brain10 = train_contrastive(s, s["root"] / "brain", shuffle_pairs=False)
    control, control10 = train_contrastive(s, s["root"] / "control", shuffle_pairs=True)
    assert brain["batch_size"] == 100 and brain["chance"] == pytest.approx(0.01)
    # Seeds 0-4, (image, brain) retrieval: 100-way brain (.11,.11) (.06,.06) (.08,.05) (.09,.10) (.06,.08), control
    # <= .02; 10-way brain .43-.51, control .06-.12 (chance .10).
    for direction in ("image_retrieval", "brain_retrieval"):
        assert brain10[direction] >= 0.35  # >= 3.5x chance
        assert control10[direction] <= 0.2
        assert brain10[direction] - control10[direction] >= 0.25
    mean = (brain["image_retrieval"] + brain["brain_retrieval"]) / 2
    mean_control = (control["image_retrieval"] + control["brain_retrieval"]) / 2
    assert mean >= 4 * brain["chance"]
    assert mean - mean_control >= 0.03


def test_driver_end_to_end_prior_vs_direct(simnsd_subj01):
    from transformers import AutoModel

    s = simnsd_subj01
    config = run_config(s["root"] / "driver", s["nsd_root"], None, num_train_epochs=3, eval_prior_steps=20)
    result = run_mindeye(config, data=s["data"], progress=False)
    final = result["final_model"]
    model = AutoModel.from_pretrained(final)
    assert model.config.clip_tokens == 65 and model.config.clip_dim == 64 and model.low_level is not None
    saved = json.load(open(os.path.join(final, "mindeye_training_config.json")))
    assert saved["data"]["subjects"] == ["subj01"] and saved["data"]["targets"]["clip_vision"]["model"] == "simnsd/clip"
    # decode_blurry divides by the scale of the VAE the latent targets came from (the world VAE's, not SD's 0.18215)
    from diffusers import AutoencoderKL

    from fgb2i_hf.core import resolve_pretrained

    vae_scale = AutoencoderKL.load_config(resolve_pretrained("simnsd/diffusion"), subfolder="vae")["scaling_factor"]
    assert model.config.vae_scaling_factor == saved["data"]["targets"]["z"]["scaling_factor"] == vae_scale != 0.18215
    evaluation = json.load(open(s["root"] / "driver" / "eval_test.json"))["subj01"]
    assert evaluation == result["eval"]["subj01"]
    # The prior is trained to output the CLIP tokens; the backbone's direct output only conditions it (and feeds the
    # projector), so the prior's samples are much closer to the true tokens. Seeds 0-4 (3 epochs): prior cosine
    # .27 .35 .31 .32 .44, backbone .06 .03 .03 .04 .02; prior MSE .016-.020, backbone .72-.86.
    assert evaluation["prior_cosine"] - evaluation["backbone_cosine"] >= 0.1
    assert evaluation["prior_mse"] < 0.5 * evaluation["backbone_mse"]
    with pytest.raises(FileExistsError, match="already holds a run"):
        run_mindeye(config, data=s["data"], progress=False)
