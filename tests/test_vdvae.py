"""VDVAEModel: shapes of the ImageNet-64 config, the output distribution, seeding, save/load, the shipped SimNSD
VDVAE (``simnsd/vdvae``) against the mean-image baseline, and its trainer."""

import json
import math
import os

import numpy as np
import pytest
import torch

from fgb2i_hf.models.vdvae import VDVAEArchitecture, VDVAEModel
from fgb2i_hf.models.vdvae import mixture_of_logistics as mol

TINY = dict(image_size=16, width=8, zdim=2, enc_blocks="16x1,16d2,8x1,8d2,4x1,4d4,1x1",
            dec_blocks="1x1,4m1,4x1,8m4,16m8,16x1", custom_width_str="4:12,1:12", num_mixtures=3, num_target_layers=3)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small convolutions: one thread beat two on the shared 2-core CPU (a training step of the trainer test's model,
    0.74 s vs 19 s under load), so this module runs on one and restores the setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = VDVAEModel(**TINY).eval()
    with torch.no_grad():  # a prior that is not N(0, 1) everywhere (its last conv starts at zero)
        for block in model.decoder.blocks:
            block.prior.conv4.weight.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def gen(seed):
    return torch.Generator().manual_seed(seed)


# -- the ImageNet-64 default config ----------------------------------------------------------------------------

def test_imagenet64_config_gives_brain_diffusers_31_layers_of_91168_values():
    with torch.device("meta"):  # the default (ImageNet-64) model without memory for its 125M weights
        model = VDVAEModel()
    assert model.num_layers == 75 and model.config.num_target_layers == 31
    # Brain-Diffuser's own table of the 31 layer sizes (scripts/vdvae_reconstruct_images.py, layer_dims)
    brain_diffuser = [2**4] * 2 + [2**8] * 4 + [2**10] * 8 + [2**12] * 16 + [2**14]
    assert [math.prod(s) for s in model.latent_shapes(31)] == brain_diffuser
    assert model.arch.latent_size(31) == sum(brain_diffuser) == 91_168
    assert model.latent_shapes(31)[-1] == (16, 32, 32) and model.latent_shapes()[-1] == (16, 64, 64)
    # the same from the config values alone
    arch = VDVAEArchitecture.from_config(**model.config)
    assert arch.latent_size(31) == 91_168 and arch.layers_for_size(91_168) == 31


def test_bad_configs_and_inputs_say_what_is_wrong(tiny):
    with pytest.raises(ValueError, match="dec_blocks: cannot read '4q1'"):
        VDVAEModel(**{**TINY, "dec_blocks": "1x1,4q1,16m4"})
    with pytest.raises(ValueError, match="must end at the image size 16"):
        VDVAEModel(**{**TINY, "dec_blocks": "1x1,4m1,8m4"})
    with pytest.raises(ValueError, match="num_target_layers must be in 1..6"):
        VDVAEModel(**{**TINY, "num_target_layers": 7})
    with pytest.raises(ValueError, match=r"images must be \(N, 3, 16, 16\)"):
        tiny.encode(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"latent layer 1 must have shape \(N, 2, 4, 4\)"):
        tiny.decode([torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 8, 8)])
    with pytest.raises(ValueError, match="not the flattened latents of the first k layers"):
        tiny.unflatten_latents(torch.zeros(2, 5))


def test_flatten_and_unflatten_are_inverse(tiny, images):
    latents = tiny.encode(images, num_layers=4)
    flat = tiny.flatten_latents(latents)
    assert flat.shape == (4, 2 + 32 + 32 + 128)
    assert torch.equal(flat[:, 2:34], latents[1].reshape(4, -1))  # layer after layer, C order
    back = tiny.unflatten_latents(flat)
    assert len(back) == 4 and all(torch.equal(a, b) for a, b in zip(back, latents))
    # decode takes either form (the same values: bit-exact)
    assert torch.equal(tiny.decode(flat, generator=gen(3)), tiny.decode(latents, generator=gen(3)))


# -- the output distribution -----------------------------------------------------------------------------------

def _logistic_bin(x, mu, s):
    """P(the 8-bit value x in [-1, 1]) under a discretised logistic, float64 (ends open to +-inf)."""
    cdf = lambda v: 1 / (1 + np.exp(-(v - mu) / s))  # noqa: E731
    upper = 1.0 if x > 0.999 else cdf(x + 1 / 255)
    lower = 0.0 if x < -0.999 else cdf(x - 1 / 255)
    return upper - lower


def test_mixture_nll_matches_the_logistic_bin_probabilities():
    # one component, red->green, red->blue and green->blue coefficients tanh(0.5), tanh(-0.3), tanh(0.2)
    m, log_s = 1, np.log(0.05)
    params = torch.tensor([0.0, 0.1, log_s, 0.5, -0.2, log_s, -0.3, 0.3, log_s, 0.2], dtype=torch.float64)
    a, b, c = np.tanh([0.5, -0.3, 0.2])
    for rgb in ([0.2, 0.0, -0.1], [-1.0, -0.3, 1.0]):
        x = torch.tensor(rgb, dtype=torch.float64).view(1, 3, 1, 1)
        r, g, bl = rgb
        p = (_logistic_bin(r, 0.1, 0.05) * _logistic_bin(g, -0.2 + a * r, 0.05)
             * _logistic_bin(bl, 0.3 + b * r + c * g, 0.05))
        nll = mol.negative_log_likelihood(params.view(1, 10, 1, 1), x, m)
        assert float(nll) == pytest.approx(-np.log(p) / 3, rel=1e-9)


def test_mixture_probabilities_sum_to_the_red_marginal():
    """Summed over every green and blue level, p(r, g, b) is the mixture's marginal of r: the coupled channels
    are normalised."""
    torch.manual_seed(0)
    params = torch.randn(20, dtype=torch.float64) * 0.5  # 2 components
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for r in (-1.0, 40 / 127.5 - 1, 1.0):
        g, b = torch.meshgrid(levels, levels, indexing="ij")
        x = torch.stack([torch.full_like(g, r), g, b], 0).reshape(3, -1).T.reshape(-1, 3, 1, 1)
        log_p = -3 * mol.negative_log_likelihood(params.view(1, 20, 1, 1).expand(len(x), -1, -1, -1), x, 2)
        logits, means, log_scales, _ = mol.split_params(params.view(1, 20, 1, 1), 2)
        weights = torch.softmax(logits.flatten(), 0).numpy()
        marginal = sum(w * _logistic_bin(r, float(means[0, 0, k]), float(log_scales[0, 0, k].exp()))
                       for k, w in enumerate(weights))
        assert float(log_p.exp().sum()) == pytest.approx(marginal, rel=1e-6)  # far tails: density x bin width


def test_output_samples_scatter_around_the_output_mean():
    g = torch.Generator().manual_seed(0)
    params = torch.randn(1, 30, 1, 1, generator=g).expand(1, 30, 64, 64).clone()
    params[:, 3:] = params[:, 3:] * 0.3
    params[:, 3 + 3:30:9] = params[:, 3 + 3:30:9].clamp(max=0) - 4.0  # small log-scales: clipping never matters
    params[:, 3 + 3 + 1:30:9] = params[:, 3 + 3 + 1:30:9] - 4.0
    params[:, 3 + 3 + 2:30:9] = params[:, 3 + 3 + 2:30:9] - 4.0
    draws = torch.stack([mol.sample(params, 3, generator=g) for _ in range(8)])  # 8 x 4096 draws per channel
    expected = mol.mean(params, 3)
    assert expected.abs().max() < 0.9 and (draws.std(0) > 0).all()
    # per channel, the average of 32,768 draws is within 5 standard errors of the mean
    error = (draws.mean((0, 3, 4)) - expected.mean((2, 3))).abs()
    assert (error < 5 * draws.std((0, 3, 4)) / math.sqrt(draws[:, :, 0].numel())).all(), error


# -- seeding ---------------------------------------------------------------------------------------------------

def test_decode_is_seeded_and_only_the_sampled_layers_vary(tiny, images):
    latents = tiny.encode(images, num_layers=3)
    first = tiny.decode(latents, generator=gen(0))
    assert first.shape == (4, 3, 16, 16) and 0 <= first.min() and first.max() <= 1
    # same seed, same process: bit-exact by construction
    assert torch.equal(first, tiny.decode(latents, generator=gen(0)))
    assert (first - tiny.decode(latents, generator=gen(1))).abs().max() > 1e-3
    # the prior layers alone vary with the seed: with the output mean, still different images
    assert (tiny.decode(latents, generator=gen(0), output="mean")
            - tiny.decode(latents, generator=gen(1), output="mean")).abs().max() > 1e-3
    # every layer given: nothing is drawn before the output, so its mean does not depend on the seed
    everything = tiny.encode(images, num_layers=tiny.num_layers)
    assert torch.equal(tiny.decode(everything, generator=gen(0), output="mean"),
                       tiny.decode(everything, generator=gen(1), output="mean"))
    # temperature 0: the prior means, nothing drawn
    assert torch.equal(tiny.decode(latents, generator=gen(0), temperature=0.0, output="mean"),
                       tiny.decode(latents, generator=gen(5), temperature=0.0, output="mean"))


def test_encode_means_and_per_image_seeded_samples(tiny, images):
    means = tiny.encode(images)
    assert [tuple(z.shape) for z in means] == [(4, 2, 1, 1), (4, 2, 4, 4), (4, 2, 4, 4)]  # num_target_layers = 3
    assert all(torch.equal(a, b) for a, b in zip(means, tiny.encode(images)))
    batch = tiny.encode(images, latent_sampling="sample", generator=[gen(i) for i in range(4)])
    alone = tiny.encode(images[2:3], latent_sampling="sample", generator=[gen(2)])
    for z_batch, z_alone, z_mean in zip(batch, alone, means):
        # one generator per image: a row does not depend on its batch (batched vs single convs: float rounding)
        torch.testing.assert_close(z_batch[2:3], z_alone, atol=1e-5, rtol=1e-5)
        assert (z_batch - z_mean).abs().max() > 1e-3


# -- save / load -----------------------------------------------------------------------------------------------

def test_save_and_load_round_trip(tiny, images, tmp_path):
    tiny.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = VDVAEModel.from_pretrained(str(tmp_path)).eval()
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(tiny.config)
    state, original = loaded.state_dict(), tiny.state_dict()
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in state)
    latents = tiny.encode(images)
    # identical float32 weights, same process and kernels: bit-exact by construction
    assert torch.equal(loaded.decode(latents, generator=gen(7)), tiny.decode(latents, generator=gen(7)))
    assert all(torch.equal(a, b) for a, b in zip(loaded.encode(images), latents))


def test_a_pipeline_holds_it_as_a_component(tiny, tmp_path):
    from diffusers import DiffusionPipeline

    class LowLevelPipeline(DiffusionPipeline):
        def __init__(self, vdvae):
            super().__init__()
            self.register_modules(vdvae=vdvae)

    LowLevelPipeline(tiny).save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["vdvae"] == ["fgb2i_hf.models.vdvae.modeling_vdvae", "VDVAEModel"]
    loaded = LowLevelPipeline.from_pretrained(str(tmp_path)).vdvae
    assert isinstance(loaded, VDVAEModel)
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), tiny.parameters()))  # float32 copies


# -- the shipped SimNSD VDVAE ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def simnsd_images(simnsd_root, nsd_cache_dir):
    """subj01's distinct train images (mean-image baseline) and the 100 shared test images, (N, 3, 64, 64)."""
    from fgb2i_hf.data import NSDStimuli, load_nsd

    rows = load_nsd(simnsd_root, subjects=["subj01"], cache_dir=nsd_cache_dir)
    stimuli = NSDStimuli(simnsd_root)
    out = {}
    for split in ("train", "test"):
        ids = sorted(set(int(i) for i in rows[split]["nsd_id"]))
        out[split] = torch.from_numpy(stimuli.get(ids)).permute(0, 3, 1, 2).float() / 255
    return out


@pytest.fixture(scope="module")
def shipped():
    return VDVAEModel.from_pretrained("simnsd/vdvae").eval()


def test_shipped_vdvae_is_small_float16_and_recorded(shipped):
    from safetensors import safe_open

    from fgb2i_hf.core import resolve_pretrained

    folder = resolve_pretrained("simnsd/vdvae")
    with safe_open(os.path.join(folder, "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert shipped.dtype == torch.float32
    with open(os.path.join(folder, "world_training.json"), encoding="utf-8") as f:
        record = json.load(f)
    assert record["component"] == "simnsd/vdvae" and record["seed"] == 0 and record["data"]["simnsd_seed"] == 0
    assert record["size_bytes"] < 4e6 and record["versions"]["torch"]
    assert record["target_size"] == shipped.arch.latent_size(shipped.config.num_target_layers)


def test_shipped_vdvae_reconstructs_held_out_images_better_than_the_mean_image(shipped, simnsd_images):
    """On the first 50 test images (ratios to the mean-image MSE, measured: 0.30 and 0.60; the second is 0.595-0.598
    over generator seeds 0-5; on all 100 test images 0.31 and 0.61, world_training.json)."""
    test, mean_image = simnsd_images["test"][:50], simnsd_images["train"].mean(0, keepdim=True)
    baseline = ((mean_image - test) ** 2).mean()
    recon = shipped.reconstruct(test, generator=gen(0))  # every layer's posterior mean, output mean
    assert ((recon - test) ** 2).mean() < 0.5 * baseline
    # Brain-Diffuser's decode: the first k layers, the rest from the prior at temperature 1, output sampled
    k = shipped.config.num_target_layers
    decoded = shipped.decode(shipped.encode(test, num_layers=k), generator=gen(0))
    assert ((decoded - test) ** 2).mean() < 0.8 * baseline


# -- the trainer -----------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
def test_trainer_runs_and_skips_updates_over_the_threshold(simnsd_images):
    from fgb2i_hf.simnsd.world.data import WorldData, WorldImages
    from fgb2i_hf.simnsd.world.vdvae import VDVAETrainingConfig, train_vdvae

    def split(x):
        u8 = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()
        return WorldImages(np.arange(len(u8)), u8, [[]] * len(u8), [[]] * len(u8))

    data = WorldData("simnsd", split(simnsd_images["train"][:8]), split(simnsd_images["test"][:2]))
    small = dict(vdvae_width=8, vdvae_custom_width_str="16:16,8:16,4:16,1:16", vdvae_zdim=2,
                 vdvae_enc_blocks="64d2,32d2,16d2,8d2,4d4,1x1", vdvae_dec_blocks="1x1,4m1,8m4,16m8,32m16,64m32",
                 vdvae_num_target_layers=4, vdvae_batch_size=4, vdvae_warmup_steps=1, vdvae_steps=2)
    model, record = train_vdvae(VDVAETrainingConfig(**small), data, seed=0, progress=False)
    assert record["steps"] == 2 and record["skipped_updates"] == 0 and np.isfinite(record["final_loss"])
    assert record["target_size"] == 2 + 32 + 128 + 512 and model.config.num_target_layers == 4
    test = record["metrics"]["test"]
    assert set(test) >= {"all_layers", "first_k_output_mean", "first_k_output_sample", "mean_image"}
    assert test["n"] == 2 and test["mean_image"]["mse"] > 0
    # every update skipped: the EMA model is still the initialisation
    frozen, record = train_vdvae(VDVAETrainingConfig(**{**small, "vdvae_skip_threshold": 1e-9}), data, seed=0,
                                 progress=False)
    assert record["skipped_updates"] == 2
    torch.manual_seed(0)
    init = VDVAETrainingConfig(**small).model(frozen.config.pixel_mean, frozen.config.pixel_std)
    assert all(torch.equal(a, b) for a, b in zip(frozen.parameters(), init.parameters()))
