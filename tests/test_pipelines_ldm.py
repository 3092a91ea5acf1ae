"""FgB2ILDMPipeline and the fusion rules, on tiny random Stable Diffusion components (CPU, seconds)."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline

from fgb2i_hf.pipelines import (
    FgB2ILDMPipeline,
    FgB2IPipeline,
    FgB2IPipelineOutput,
    classifier_free_guidance,
    composed_guidance,
    fuse_embeddings,
    prepare_betas,
)
from fgb2i_hf.testing import tiny_sd_components
from greedy_helpers import assert_greedy_is_decisive

STEPS = 4
# Images of two code paths or of a reloaded copy (other kernels) agree to float rounding, not bit for bit; a wrong
# setting (strength, guidance, scheduler step, conditioning) moves pixels by more than 1e-3.
IMAGE_ATOL = 1e-4
CAPTIONS = ["a small brown dog on a wooden bench", "a red bus driving down a street"]


@pytest.fixture(scope="module")
def components():
    return tiny_sd_components(seed=0)


@pytest.fixture(scope="module")
def pipe(components):
    pipe = FgB2ILDMPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def base_inputs():
    g = torch.Generator().manual_seed(11)
    z = torch.randn(2, 4, 16, 16, generator=g)  # the decoded latents, 32 px images
    c = torch.randn(2, 77, 32, generator=g)  # the decoded CLIP text conditioning
    return z, c


def run(pipe, z, c, seed=3, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
    return pipe(base_latents=z, base_embeds=c, **kwargs)


# -- fusion rules ---------------------------------------------------------------------------------------


def test_fuse_embeddings_is_the_weighted_average():
    text, base = torch.full((1, 2, 3), 2.0), torch.full((1, 2, 3), -1.0)
    # exact by construction: every value and product here is exact in binary floating point
    assert torch.equal(fuse_embeddings(text, base, 0.25), torch.full((1, 2, 3), 0.25 * 2 - 0.75))
    assert torch.equal(fuse_embeddings(text, base, 0.0), base)
    assert torch.equal(fuse_embeddings(text, base, 1.0), text)
    with pytest.raises(ValueError, match="same CLIP text space"):
        fuse_embeddings(text, torch.zeros(1, 3, 3), 0.5)


def test_composed_guidance_formula_and_its_limits():
    u, b, t = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([-5.0])
    # u + s[(1-w)(b-u) + w(t-u)] = 1 + 2[(0.75)(2) + 0.25(-6)] = 1 + 2 * 0 = 1
    assert composed_guidance(u, b, t, scale=2.0, w=0.25).item() == pytest.approx(1.0)
    assert torch.allclose(composed_guidance(u, b, t, 7.0, 0.0), classifier_free_guidance(u, b, 7.0))
    assert torch.allclose(composed_guidance(u, b, t, 7.0, 1.0), classifier_free_guidance(u, t, 7.0))
    assert composed_guidance(None, b, t, 1.0, 0.5).item() == pytest.approx(-1.0)  # no guidance: the mixture


def test_prepare_betas_pads_mixed_subjects_and_checks_them():
    betas, subject = prepare_betas([np.ones(3, np.float16), np.ones(5)], ["subj01", "subj02"])
    assert betas.shape == (2, 5) and betas.dtype == torch.float32
    assert betas[0].tolist() == [1, 1, 1, 0, 0] and subject == ["subj01", "subj02"]
    assert prepare_betas(torch.ones(2, 4), ["subj01", "subj01"])[1] == "subj01"
    with pytest.raises(ValueError, match="one name per row"):
        prepare_betas([np.ones(3), np.ones(5)], "subj01")
    with pytest.raises(ValueError, match="2 names for 3 rows"):
        prepare_betas(torch.ones(3, 4), ["subj01", "subj02"])
    with pytest.raises(ValueError, match="`subject` is required"):
        prepare_betas(torch.ones(3, 4), None)


# -- the base method, exactly ---------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["average", "guidance"])
def test_w0_is_takagi_img2img(pipe, components, base_inputs, fusion):
    """w = 0 equals diffusers' own SD img2img from z with prompt_embeds = c (Takagi & Nishimoto's recipe), up to
    float rounding: two code paths (ours and diffusers') are not guaranteed the same kernels on every CPU."""
    z, c = base_inputs
    ours = run(pipe, z, c, w=0.0, fusion=fusion)
    reference = StableDiffusionImg2ImgPipeline(**components, safety_checker=None, feature_extractor=None,
                                               requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    expected = reference(prompt_embeds=c, image=z, strength=0.8, guidance_scale=5.0, num_inference_steps=STEPS,
                         generator=torch.Generator().manual_seed(3), output_type="np").images
    np.testing.assert_allclose(ours.images, expected, atol=IMAGE_ATOL, rtol=0)
    assert ours.captions is None and ours.text_embeds is None and torch.equal(ours.fused_embeds, c)  # c itself


def test_w0_never_touches_the_captioner(pipe, base_inputs):
    """No brain_model and no captions: w = 0 must run anyway; w > 0 must say what is missing."""
    z, c = base_inputs
    assert pipe.brain_model is None
    run(pipe, z, c, w=0.0)
    with pytest.raises(ValueError, match="pass `betas`"):
        run(pipe, z, c, w=0.5)
    with pytest.raises(ValueError, match="no `brain_model`"):
        pipe(torch.zeros(2, 8), "subj01", base_latents=z, base_embeds=c, w=0.5, num_inference_steps=2)


def test_w1_is_text_alone_and_w_between_is_the_average(pipe, base_inputs):
    z, c = base_inputs
    text = pipe.encode_text(CAPTIONS)
    base = run(pipe, z, c, w=0.0)
    alone = run(pipe, z, c, w=1.0, captions=CAPTIONS)
    # exact by construction: 1 * text + 0 * c is text bit for bit, then the same pipeline runs the same kernels
    assert np.array_equal(alone.images, run(pipe, z, text, w=0.0).images)
    assert np.abs(alone.images - base.images).max() > 1e-3
    assert alone.captions == CAPTIONS and torch.equal(alone.text_embeds, text)  # same encoder, inputs, kernels
    mixed = run(pipe, z, c, w=0.3, captions=CAPTIONS)
    # exact by construction: fuse_embeddings computes this very expression (1 - 0.3 == 0.7 in binary), same kernels
    assert np.array_equal(mixed.images, run(pipe, z, 0.3 * text + 0.7 * c, w=0.0).images)
    assert torch.allclose(mixed.fused_embeds, 0.3 * text + 0.7 * c)


def test_guidance_fusion_composes_the_two_conditions(pipe, base_inputs):
    z, c = base_inputs
    text = pipe.encode_text(CAPTIONS)
    guided = run(pipe, z, c, w=0.5, fusion="guidance", captions=CAPTIONS)
    assert guided.fused_embeds is None and guided.fusion == "guidance"
    assert np.abs(guided.images - run(pipe, z, c, w=0.5, captions=CAPTIONS).images).max() > 1e-3
    # at w = 1 the base branch has weight 0: the same as guidance by the text alone (batched 3 vs 2: fp noise)
    only_text = run(pipe, z, c, w=1.0, fusion="guidance", captions=CAPTIONS)
    assert np.allclose(only_text.images, run(pipe, z, text, w=0.0).images, atol=1e-4)
    # without CFG (scale 1) it is the plain mixture of the two noise predictions, and it runs
    assert run(pipe, z, c, w=0.5, fusion="guidance", captions=CAPTIONS, guidance_scale=1.0).images.shape == (2, 32, 32, 3)


# -- seeding, batching, outputs ---------------------------------------------------------------------------


def test_generators_seed_each_image_and_batching_matches_single_rows(pipe, base_inputs):
    z, c = base_inputs
    batch = run(pipe, z, c, w=0.5, captions=CAPTIONS,
                generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])
    for i, seed in enumerate((5, 6)):
        single = pipe(base_latents=z[i : i + 1], base_embeds=c[i : i + 1], captions=CAPTIONS[i : i + 1], w=0.5,
                      num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed), output_type="np")
        assert np.allclose(batch.images[i], single.images[0], atol=1e-5)
    again = run(pipe, z, c, w=0.5, captions=CAPTIONS,
                generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])
    assert np.array_equal(batch.images, again.images)  # exact by construction: the same call, the same kernels
    assert not np.allclose(run(pipe, z, c, w=0.5, captions=CAPTIONS, seed=4).images, batch.images)


def test_num_images_per_prompt_and_output_types(pipe, base_inputs):
    z, c = base_inputs
    out = run(pipe, z, c, w=0.5, captions=CAPTIONS, num_images_per_prompt=2, output_type="pt")
    assert isinstance(out, FgB2IPipelineOutput)
    assert out.images.shape == (4, 3, 32, 32) and 0 <= out.images.min() and out.images.max() <= 1
    assert len(out.captions) == 2 and out.base_embeds.shape == (2, 77, 32)
    assert not torch.equal(out.images[0], out.images[1])  # two samples of one row differ
    latents = run(pipe, z, c, w=0.0, output_type="latent").images
    assert latents.shape == (2, 4, 16, 16)
    pil = run(pipe, z, c, w=0.0, output_type="pil").images
    assert len(pil) == 2 and pil[0].size == (32, 32)
    images, captions = run(pipe, z, c, w=0.5, captions=CAPTIONS, return_dict=False)
    assert images.shape == (2, 32, 32, 3) and captions == CAPTIONS


def test_height_takes_z_through_takagis_vae_round_trip(pipe, base_inputs):
    """z of 32 px images reconstructed at 64 px: decode, resize, encode again (Takagi's 320 -> 512 px step)."""
    z, c = base_inputs
    out = run(pipe, z, c, w=0.0, height=64, width=64)
    assert out.images.shape == (2, 64, 64, 3)
    generator = torch.Generator().manual_seed(3)
    resized = pipe.resize_latents(z, (64, 64), generator)
    assert resized.shape == (2, 4, 32, 32)
    same = pipe(base_latents=resized, base_embeds=c, w=0.0, num_inference_steps=STEPS, generator=generator,
                output_type="np")
    assert np.array_equal(out.images, same.images)  # exact by construction: the same operations on the same tensors


def test_bad_inputs_fail_clearly(pipe, base_inputs):
    z, c = base_inputs
    with pytest.raises(ValueError, match="`w` must be a number in"):
        run(pipe, z, c, w=1.5)
    with pytest.raises(ValueError, match="`fusion` must be one of"):
        run(pipe, z, c, w=0.5, fusion="concat", captions=CAPTIONS)
    with pytest.raises(ValueError, match=r"`base_embeds` must have shape \(2, 77, 32\)"):
        run(pipe, z, c[:, :10], w=0.0)
    with pytest.raises(ValueError, match="scaled VAE latents"):
        run(pipe, z[:, :3], c, w=0.0)
    with pytest.raises(ValueError, match="3 generators for 2 images"):
        run(pipe, z, c, w=0.0, generator=[torch.Generator()] * 3)
    with pytest.raises(ValueError, match="`captions` must be 2 strings"):
        run(pipe, z, c, w=0.5, captions=["only one"])
    with pytest.raises(ValueError, match="no `z_decoder` component"):
        pipe(torch.zeros(2, 8), "subj01", base_embeds=c, w=0.0, num_inference_steps=2)
    # counts: a ValueError naming the argument (was ZeroDivisionError, a size-mismatch RuntimeError, a TypeError)
    for steps in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=rf"`num_inference_steps` must be a positive int, got {steps!r}"):
            run(pipe, z, c, w=0.0, num_inference_steps=steps)
    for n in (0, -1, 1.0):
        with pytest.raises(ValueError, match=rf"`num_images_per_prompt` must be a positive int, got {n!r}"):
            run(pipe, z, c, w=0.0, num_images_per_prompt=n)


# -- save / load ------------------------------------------------------------------------------------------


def test_save_load_round_trip_through_the_base_class(pipe, base_inputs, tmp_path):
    z, c = base_inputs
    pipe.save_pretrained(tmp_path / "ldm")
    loaded = FgB2IPipeline.from_pretrained(tmp_path / "ldm")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is FgB2ILDMPipeline
    for kwargs in ({"w": 0.0}, {"w": 0.6, "captions": CAPTIONS}):  # reloaded weights: other alignment, kernels
        np.testing.assert_allclose(run(loaded, z, c, **kwargs).images, run(pipe, z, c, **kwargs).images,
                                   atol=IMAGE_ATOL, rtol=0)
    assert type(FgB2ILDMPipeline.from_pretrained(tmp_path / "ldm")) is FgB2ILDMPipeline


def test_from_pretrained_names_what_it_cannot_load(tmp_path, components):
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                 requires_safety_checker=False)
    sd.save_pretrained(tmp_path / "sd")
    with pytest.raises(ValueError, match="'StableDiffusionPipeline', which is not an FgB2I pipeline"):
        FgB2IPipeline.from_pretrained(tmp_path / "sd")
    # the concrete class loads a plain SD checkpoint (as from CompVis/stable-diffusion-v1-4), FgB2I parts empty
    loaded = FgB2ILDMPipeline.from_pretrained(tmp_path / "sd")
    assert loaded.brain_model is None and loaded.unet.config.cross_attention_dim == 32


# -- the captioner (BrainPrefixGPT2) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def brain_pipe(components):
    from fgb2i_hf.testing import tiny_brain_prefix_gpt2

    model, tokenizer = tiny_brain_prefix_gpt2({"subj01": 40, "subj02": 56}, seed=0)
    pipe = FgB2ILDMPipeline(**components, brain_model=model, caption_tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_captions_are_decoded_from_the_betas(brain_pipe, base_inputs):
    from fgb2i_hf.testing import random_betas

    z, c = base_inputs
    betas = random_betas({"subj01": 40}, ["subj01", "subj01"], seed=1)
    expected = brain_pipe.brain_model.generate_captions(betas, "subj01", brain_pipe.caption_tokenizer)
    out = brain_pipe(betas, "subj01", base_latents=z, base_embeds=c, w=0.5, num_inference_steps=STEPS,
                     generator=torch.Generator().manual_seed(3), output_type="np")
    # exact by construction in this test: one model, one process, the same inputs and kernels
    assert out.captions == expected and len(out.captions) == 2
    assert torch.equal(out.text_embeds, brain_pipe.encode_text(expected))
    given = run(brain_pipe, z, c, w=0.5, captions=expected)
    assert np.array_equal(out.images, given.images)  # decoding the captions does not touch the diffusion RNG
    beams = brain_pipe(betas, "subj01", base_latents=z, base_embeds=c, w=0.5, num_inference_steps=STEPS,
                       caption_generation_kwargs={"num_beams": 3, "max_new_tokens": 5}, output_type="np")
    assert beams.captions == brain_pipe.brain_model.generate_captions(
        betas, "subj01", brain_pipe.caption_tokenizer, num_beams=3, max_new_tokens=5)


def test_mixed_subject_betas_reach_the_captioner_padded(brain_pipe, base_inputs):
    z, c = base_inputs
    rows = [np.random.default_rng(0).standard_normal(40), np.random.default_rng(1).standard_normal(56)]
    out = brain_pipe(rows, ["subj01", "subj02"], base_latents=z, base_embeds=c, w=0.5, num_inference_steps=2,
                     output_type="latent")
    padded, subjects = prepare_betas(rows, ["subj01", "subj02"])
    # exact by construction: the same padded tensor through the same model
    assert out.captions == brain_pipe.brain_model.generate_captions(padded, subjects, brain_pipe.caption_tokenizer)


def test_w0_with_a_captioner_never_calls_it(brain_pipe, pipe, base_inputs, monkeypatch):
    z, c = base_inputs

    def fail(*args, **kwargs):
        raise AssertionError("the captioner ran at w = 0")

    monkeypatch.setattr(brain_pipe.brain_model, "generate_captions", fail)
    out = brain_pipe(torch.zeros(2, 40), "subj01", base_latents=z, base_embeds=c, w=0.0, num_inference_steps=STEPS,
                     generator=torch.Generator().manual_seed(3), output_type="np")
    # exact by construction: both pipelines hold the very same component objects
    assert np.array_equal(out.images, run(pipe, z, c, w=0.0).images) and out.captions is None


def test_round_trip_with_the_brain_model(brain_pipe, base_inputs, tmp_path):
    from fgb2i_hf.testing import random_betas

    z, c = base_inputs
    betas = random_betas({"subj01": 40}, ["subj01", "subj01"], seed=2)
    brain_pipe.save_pretrained(tmp_path / "fgb2i")
    loaded = FgB2IPipeline.from_pretrained(tmp_path / "fgb2i")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.brain_model).__name__ == "BrainPrefixGPT2"
    kwargs = dict(base_latents=z, base_embeds=c, w=0.5, num_inference_steps=STEPS, output_type="np")
    a = brain_pipe(betas, "subj01", generator=torch.Generator().manual_seed(3), **kwargs)
    b = loaded(betas, "subj01", generator=torch.Generator().manual_seed(3), **kwargs)
    # the reloaded copy agrees to rounding: its captions are the same because no greedy step is a near-tie
    assert_greedy_is_decisive(brain_pipe.brain_model, betas, "subj01", brain_pipe.caption_tokenizer.eos_token_id)
    assert a.captions == b.captions
    np.testing.assert_allclose(a.images, b.images, atol=IMAGE_ATOL, rtol=0)
