"""The shipped world's Versatile Diffusion (``simnsd/versatile``) and MindEye (``simnsd/mindeye``), scored on the 100
shared test images of the tiny SimNSD (seed 0) they never saw, against controls; and the Brain-Diffuser and MindEye
bases running on them from betas alone (compare_bases, no external inputs)."""

import os

import numpy as np
import pytest
import torch

from fgb2i_hf.simnsd.world.data import load_world_data

SUBJECT = "subj01"


@pytest.fixture(scope="module")
def test_images(simnsd_root, nsd_cache_dir):
    return load_world_data(simnsd_root, cache_dir=nsd_cache_dir).test


@pytest.fixture(scope="module")
def versatile():
    from fgb2i_hf.pipelines import build_pipeline

    pipe = build_pipeline("mindeye", "simnsd/versatile")  # any VD base: the folder's components
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.usefixtures("one_thread")
def test_versatile_denoises_each_image_best_with_its_own_context(versatile, test_images):
    """The UNet's training loss on 32 unseen images: each stream is lower with the image's own context (its vision
    tokens; its fine caption) than with the next image's, and lower than unconditioned. Measured on noise seeds 0-4
    (the margins hold on each): image stream 0.286-0.290 vs next image 0.641-0.660, text stream 0.292-0.303 vs
    0.493-0.505, unconditional 0.362-0.379."""
    from fgb2i_hf.simnsd.world.versatile import denoising_losses

    losses = denoising_losses(versatile, test_images, n=32, seed=0)
    assert losses["image_stream"] < 0.6 * losses["image_stream_next_image"]
    assert losses["text_stream"] < 0.75 * losses["text_stream_next_image"]
    assert max(losses["image_stream"], losses["text_stream"]) < 0.9 * losses["unconditional"]


@pytest.fixture(scope="module")
def mindeye_scores(simnsd_root, nsd_cache_dir, simnsd_dataset, tmp_path_factory):
    """``evaluate_mindeye`` of the shipped model on subj01's 100 test rows, with the targets it was trained
    against (simnsd/versatile's image tokens and VAE latents, extracted by the driver's own code)."""
    from fgb2i_hf.core import resolve_pretrained
    from fgb2i_hf.data import NSDStimuli
    from fgb2i_hf.drivers.mindeye import cached_targets, evaluate_mindeye, split_arrays
    from fgb2i_hf.models.mindeye import MindEyeModel
    from fgb2i_hf.simnsd.world.mindeye import WorldMindEyeConfig

    model = MindEyeModel.from_pretrained(resolve_pretrained("simnsd/mindeye")).eval()
    run = WorldMindEyeConfig().run_config(simnsd_root, "simnsd/versatile",
                                          str(tmp_path_factory.mktemp("mindeye_targets")), seed=0, device="cpu",
                                          cache_dir=nsd_cache_dir, progress=False)
    betas, subjects, ids, _ = split_arrays(simnsd_dataset["test"], [SUBJECT])
    targets, _ = cached_targets(run, ids, NSDStimuli(simnsd_root), need_latents=True, progress=False)
    torch.set_num_threads(1)
    return evaluate_mindeye(model, betas, subjects, np.asarray(targets["clip_vision"]), np.asarray(targets["z"]),
                            prior_steps=20, seed=0)[SUBJECT]


def test_mindeye_retrieves_unseen_images_above_the_shuffled_brain_control(mindeye_scores):
    """100-way top-1 (chance 0.01), both directions. Measured (evaluate_mindeye seeds 0-4; the seed draws the
    shuffle and the prior's noise): image / brain retrieval 0.12 / 0.10, shuffled 0.00-0.02 / 0.00-0.02."""
    retrieval, shuffled = mindeye_scores["retrieval"], mindeye_scores["retrieval_shuffled"]
    for direction in ("image_retrieval", "brain_retrieval"):
        assert retrieval[direction] >= 0.06 and retrieval[direction] >= shuffled[direction] + 0.05


def test_mindeye_prior_and_low_level_head_beat_their_controls(mindeye_scores):
    """The prior's samples are closer to the true CLIP tokens than the backbone's direct output (MindEye1's design:
    only the prior is fitted to them); the blurry latents correlate with the true ones far above rows shuffled.
    Measured (seeds 0-4): prior cosine 0.62-0.63 at 20 prior steps (0.82 at all 100) vs backbone 0.09; latent r
    0.74 vs shuffled -0.06 to 0.04."""
    assert mindeye_scores["prior_cosine"] > mindeye_scores["backbone_cosine"] + 0.4
    assert mindeye_scores["latent_r"] > mindeye_scores["latent_r_shuffled"] + 0.5


CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "recipes", "configs")


def _yaml(name):
    import yaml

    with open(os.path.join(CONFIGS, name), encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.mark.usefixtures("one_thread")
def test_brain_diffuser_and_mindeye_bases_run_on_the_world_from_betas_alone(simnsd_root, nsd_cache_dir,
                                                                           simnsd_dataset, tmp_path):
    """recipes/configs/{decoders_brain_diffuser,compare_bases}_sim_world.yaml at small sizes: Brain-Diffuser's
    ridge decoders fitted in the world's spaces, then both bases on simnsd/versatile from betas (Brain-Diffuser's
    VDVAE stage from simnsd/vdvae, MindEye's prior and low-level head from simnsd/mindeye), base and FgB2I."""
    from fgb2i_hf.data import NSDStimuli
    from fgb2i_hf.drivers.compare import CompareBasesConfig, compare_bases
    from fgb2i_hf.drivers.fit import FitDecodersConfig, fit_decoders
    from fgb2i_hf.drivers.reconstruct import load_images
    from fgb2i_hf.metrics import load_feature_models
    from fgb2i_hf.testing import tiny_clip_scorer

    fit = FitDecodersConfig(**{**_yaml("decoders_brain_diffuser_sim_world.yaml"), "nsd_root": simnsd_root,
                               "output_dir": str(tmp_path / "bd"), "cache_dir": nsd_cache_dir, "max_train_rows": 100,
                               "clip_text_alphas": [1000.0], "clip_vision_alphas": [1000.0],
                               "alphas": {"vdvae": [1e5]}})
    metrics = fit_decoders(fit, progress=False)
    assert set(metrics[SUBJECT]) == {"clip_text", "clip_vision", "vdvae"}
    options = {**_yaml("compare_bases_sim_world.yaml"), "nsd_root": simnsd_root, "output_dir": str(tmp_path / "cmp"),
               "bases": ["brain_diffuser", "mindeye"], "brain_diffuser_decoders_dir": fit.output_dir,
               "brain_model": "tiny-random", "max_samples": 2, "num_inference_steps": 3,
               "base_options": {b: {"cache_dir": nsd_cache_dir} for b in ("brain_diffuser", "mindeye")}}
    config = CompareBasesConfig(**options)
    assert (config.vd_model, config.mindeye_model) == ("simnsd/versatile", "simnsd/mindeye")
    models = load_feature_models(pretrained=False, clip=tiny_clip_scorer())
    result = compare_bases(config, dataset=simnsd_dataset["test"], stimuli=NSDStimuli(simnsd_root),
                           feature_models=models, progress=False)
    assert list(result["rows"]) == ["Brain-Diffuser", "Brain-Diffuser + FgB2I", "MindEye", "MindEye + FgB2I"]
    ids = result["summaries"]["brain_diffuser"]["nsd_ids"]
    # the low-level stages computed from betas: simnsd/vdvae's 64 px decode, simnsd/mindeye's 64 px blurry image
    for base in ("brain_diffuser", "mindeye"):
        low = load_images(os.path.join(config.output_dir, base, "low_level"), ids)
        images = load_images(os.path.join(config.output_dir, base, "base"), ids)
        assert low.shape == images.shape == (2, 64, 64, 3) and low.std() > 1.0
    assert os.path.isfile(os.path.join(config.output_dir, "data_contract.json"))
