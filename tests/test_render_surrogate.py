"""The render surrogate of the image-image reward: fitting recovers a planted map, saving records the renderer and
CLIP and loading refuses others, the surrogate-mode reward scores with the surrogate and still renders a fraction,
the fit driver runs end to end on the SimNSD world's models, and the RL driver offers it."""

import json
import os

import numpy as np
import pytest
import torch

from fgb2i_hf.data.contract import DataContract
from fgb2i_hf.models import RenderSurrogate, RenderSurrogateConfig
from fgb2i_hf.rewards import (CLIPImageImageReward, SurrogateFitConfig, TextToImageRenderer, clip_identity,
                              fit_render_surrogate, load_render_surrogate, spearman, text_embeddings)
from fgb2i_hf.rewards.rendering import identity_key
from fgb2i_hf.tiny import tiny_clip_scorer, tiny_sd_components


def planted_pairs(seed, n=600, dim=16):
    """Text embeddings and the 'rendered' embeddings a fixed nonlinear map gives them, plus stimuli whose reward
    spreads: unit vectors throughout."""
    g = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    a, b = torch.randn(dim, dim, generator=g), torch.randn(dim, dim, generator=g)
    image = torch.nn.functional.normalize(text @ a + 0.5 * torch.tanh(2 * text @ b), dim=-1)
    # stimuli that share a random part of their direction with the target: rewards spread over [-0.5, 1]
    noise = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    share = torch.rand(n, 1, generator=g)
    stimulus = torch.nn.functional.normalize(share * image + (1 - share) * noise, dim=-1)
    return text, image, stimulus


def test_fit_recovers_a_planted_map(seed=0):
    """Held-out captions (a tenth, never fitted): cosine to the planted target > 0.97 and the reward's Spearman
    correlation with the planted reward > 0.97. Tried on seeds 0-4 (cosine 0.984-0.986, Spearman 0.989-0.996; the
    text embedding itself is at cosine -0.13 to 0.04 to the target); the test runs seed 0."""
    text, image, stimulus = planted_pairs(seed)
    config = SurrogateFitConfig(hidden_size=64, num_layers=2, epochs=60, batch_size=64, learning_rate=3e-3, seed=seed)
    model, report = fit_render_surrogate(text, image, config, {"settings": {"planted": seed}}, {"name": "planted"},
                                         stimulus_embeds=stimulus)
    assert report["val_captions"] == 60 and report["train_captions"] == 540
    assert report["val_cosine"] > 0.97 and report["val_reward_spearman"] > 0.97
    assert report["linear_baseline_val_cosine"] < report["val_cosine"] - 0.3
    assert model.config.renderer_key == identity_key({"settings": {"planted": seed}})
    with torch.no_grad():
        out = model(text[:4])
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))


def test_groups_stay_whole_in_the_held_out_split():
    text, image, _ = planted_pairs(0, n=100)
    groups = np.repeat(np.arange(20), 5)  # 20 images, 5 captions each
    _, report = fit_render_surrogate(text, image, SurrogateFitConfig(hidden_size=8, epochs=1, val_fraction=0.2),
                                     {"settings": {}}, {"name": "x"}, groups=groups)
    assert report["val_captions"] == 20  # 4 whole images
    with pytest.raises(ValueError, match="too few"):
        fit_render_surrogate(text[:1], image[:1], SurrogateFitConfig(epochs=1), {}, {})


# -- the reward in surrogate mode, on tiny random models ------------------------------------------------------------

@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(0)
    return tiny_clip_scorer()


@pytest.fixture(scope="module")
def renderer():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_sd_components(0), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    return TextToImageRenderer(pipe, pretrained="tiny-sd", num_inference_steps=1, guidance_scale=1.0, batch_size=32)


@pytest.fixture(scope="module")
def stimuli():
    rng = np.random.default_rng(0)
    return {n: rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for n in range(8)}


def untrained_surrogate(renderer, scorer, seed=0):
    torch.manual_seed(seed)
    identity = renderer.identity()
    return RenderSurrogate(RenderSurrogateConfig(text_dim=16, image_dim=16, hidden_size=16, num_layers=1,
                                                 renderer=identity, renderer_key=identity_key(identity),
                                                 clip=clip_identity(scorer))).eval()


def test_surrogate_reward_scores_every_sample_with_the_surrogate(renderer, scorer, stimuli):
    surrogate = untrained_surrogate(renderer, scorer)
    calls = []
    reward = CLIPImageImageReward(renderer=renderer, clip=scorer, stimuli=stimuli, render_surrogate=surrogate,
                                  surrogate_render_fraction=0.25, surrogate_check_batch=2, seed=0)
    original = renderer.render
    renderer.render = lambda prompts: calls.append(list(prompts)) or original(prompts)
    try:
        captions = [f"caption {i}" for i in range(8)]
        values = reward(captions, nsd_id=list(range(8)))
        stim = scorer.encode_images(np.stack([stimuli[i] for i in range(8)]))
        with torch.no_grad():
            expected = (surrogate(text_embeddings(scorer, captions)) * stim).sum(-1)
        # the same tensors through the same ops in this process: bit-equal by construction
        np.testing.assert_array_equal(np.asarray(values, np.float32), expected.numpy())
        assert len(calls) == 1 and len(calls[0]) == 2  # a quarter of 8 distinct captions: exactly 2 rendered
        logged = reward.log_values()
        assert logged["rendered"] == 2 and logged["surrogate_pairs"] == 2
        reward.surrogate_render_fraction, reward.surrogate_check_batch = 0.1, 4
        for _ in range(7):  # 0.1 of 8 distinct captions = 0.8: 0 or 1 queued per call, 0.8 on average
            reward([f"other {i} {_}" for i in range(8)], nsd_id=list(range(8)))
        queued = len(reward._check_queue)
        assert queued < 4 and len(calls) == 1 + (reward.log_values()["surrogate_pairs"] - 2) // 4  # whole batches
        reward.check_surrogate()  # flush what is queued
        assert 2 + 1 <= reward.log_values()["surrogate_pairs"] <= 2 + 7 and len(calls[-1]) in (queued, 4)
        assert spearman([1, 2, 3], [2, 4, 9]) == pytest.approx(1.0) and np.isnan(spearman([1, 1], [2, 3]))
    finally:
        renderer.render = original


def test_a_poorly_agreeing_surrogate_is_reported(renderer, scorer, stimuli):
    reward = CLIPImageImageReward(renderer=renderer, clip=scorer, stimuli=stimuli,
                                  render_surrogate=untrained_surrogate(renderer, scorer, seed=1),
                                  surrogate_render_fraction=1.0, surrogate_check_batch=8, surrogate_min_fidelity=1.01,
                                  fidelity_window=16)
    with pytest.warns(UserWarning, match="agree poorly with rendered ones"):
        reward([f"a scene number {i}" for i in range(8)], nsd_id=list(range(8)))  # 8 pairs >= 16 // 4
    summary = reward.log_values()
    assert summary["surrogate_pairs"] == 8 and -1 <= summary["surrogate_spearman"] <= 1


def test_saved_surrogate_is_refused_by_another_renderer_or_clip(renderer, scorer, tmp_path):
    surrogate = untrained_surrogate(renderer, scorer)
    surrogate.save_pretrained(tmp_path)
    loaded = load_render_surrogate(str(tmp_path), renderer=renderer, scorer=scorer)
    torch.testing.assert_close(loaded.linear.weight, surrogate.linear.weight)
    other_steps = TextToImageRenderer(renderer.pipeline, pretrained="tiny-sd", num_inference_steps=2,
                                      guidance_scale=1.0)
    with pytest.raises(ValueError, match=r"fitted on another renderer.*settings.num_inference_steps: fitted with 1, "
                                         r"offered 2"):
        load_render_surrogate(str(tmp_path), renderer=other_steps)
    torch.manual_seed(5)
    with pytest.raises(ValueError, match="fitted with the CLIP model"):
        load_render_surrogate(str(tmp_path), scorer=tiny_clip_scorer())
    with pytest.raises(ValueError, match="fitted on another renderer"):
        CLIPImageImageReward(renderer=other_steps, clip=scorer, render_surrogate=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="fit_reward_surrogate"):
        load_render_surrogate(str(tmp_path / "missing"))


# -- the fit driver and the RL driver, with the SimNSD world's models -------------------------------------------------

WORLD_RENDER = ["--renderer", "simnsd/diffusion", "--render_steps", "1", "--render_guidance", "1.0"]


@pytest.fixture(scope="module")
def fitted(simnsd_root, nsd_cache_dir, tmp_path_factory):
    from trl import TrlParser

    from fgb2i_hf.drivers.reward_surrogate import SurrogateScriptArguments, run_fit_reward_surrogate

    out = str(tmp_path_factory.mktemp("surrogate") / "render_surrogate")
    argv = ["--nsd_root", simnsd_root, "--cache_dir", nsd_cache_dir, "--subjects", "subj01", "--output_dir", out,
            "--clip_model", "simnsd/clip", *WORLD_RENDER, "--max_captions", "40", "--render_batch_size", "20",
            "--save_every", "20", "--hidden_size", "32", "--epochs", "3", "--device", "cpu"]
    script_args, fit_config = TrlParser((SurrogateScriptArguments, SurrogateFitConfig)).parse_args_and_config(args=argv)
    return out, run_fit_reward_surrogate(script_args, fit_config)


def test_fit_driver_saves_a_surrogate_that_records_its_renderer(fitted):
    path, report = fitted
    assert report["captions"] == 40 and report["val_captions"] + report["train_captions"] == 40
    assert os.path.exists(os.path.join(path, "model.safetensors")) and os.path.exists(path + ".renders.safetensors")
    saved = json.load(open(os.path.join(path, "config.json")))
    assert saved["renderer"]["settings"]["pretrained"] == "simnsd/diffusion"
    assert saved["renderer"]["settings"]["num_inference_steps"] == 1 and saved["clip"]["name"] == "simnsd/clip"
    assert saved["fit"]["versions"]["fgb2i_hf"] and json.load(open(os.path.join(path, "fit_report.json")))["captions"] == 40
    contract = DataContract.load(path)  # the rows whose captions were rendered: training images only
    assert contract.validation_fraction > 0 and set(contract.subjects) <= {"subj01", "subj02", "subj05", "subj07"}


def test_renderings_are_resumed_only_for_the_same_renderer_and_captions(fitted, tmp_path):
    from fgb2i_hf.clip import CLIPScorer
    from fgb2i_hf.drivers.reward_surrogate import render_embeddings

    path, _ = fitted
    scorer = CLIPScorer.from_pretrained("simnsd/clip")
    renderer = TextToImageRenderer("simnsd/diffusion", num_inference_steps=1, guidance_scale=1.0, batch_size=4)
    rendered = []
    original = renderer.render
    renderer.render = lambda prompts: rendered.extend(prompts) or original(prompts)
    captions = [f"a red {thing}" for thing in ("car", "bus", "cup", "dog", "cat", "kite")]
    file = str(tmp_path / "renders.safetensors")
    first = render_embeddings(captions[:4], renderer, scorer, file, save_every=1, progress=False)
    both = render_embeddings(captions, renderer, scorer, file, save_every=1, progress=False)
    assert rendered == captions  # the first four were read back, not rendered again
    torch.testing.assert_close(both[:4], first, atol=0, rtol=0)  # read back as saved
    rendered.clear()
    render_embeddings(captions[::-1], renderer, scorer, file, progress=False)  # other captions: all rendered
    assert rendered == captions[::-1]


def test_rl_driver_offers_the_surrogate_and_its_renderer(fitted, simnsd_root):
    from fgb2i_hf.drivers.rl import RLScriptArguments, reward_resources
    from fgb2i_hf.rewards import get_reward

    path, _ = fitted

    def reward_for(**settings):
        resources = reward_resources(RLScriptArguments(nsd_root=simnsd_root, clip_model="simnsd/clip", **settings))
        resources.setdefault("device", "cpu")  # what the trainer offers
        return get_reward("clip_image_image", resources=resources, surrogate_render_fraction=0.5,
                          surrogate_check_batch=1)

    reward = reward_for(image_reward="surrogate", surrogate_path=path)
    assert reward.surrogate is not None and reward.renderer.settings.num_inference_steps == 1
    values = reward(["a dog on a bench", "a red bus"], nsd_id=[0, 1])
    assert len(values) == 2 and all(-1 <= v <= 1 for v in values)
    assert reward.log_values()["surrogate_pairs"] >= 1
    with pytest.raises(ValueError, match="fitted on a renderer with other settings"):
        reward_for(surrogate_path=path, render_steps=4)
    with pytest.raises(ValueError, match="needs surrogate_path"):
        reward_for()  # image_reward defaults to surrogate
    with pytest.raises(ValueError, match="image_reward must be one of"):
        RLScriptArguments(image_reward="fast")
