"""FgB2IVersatileDiffusionPipeline (Brain-Diffuser and MindEye bases) and MindEyeInputs, on tiny random VD."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, VersatileDiffusionDualGuidedPipeline

from fgb2i_hf.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from fgb2i_hf.pipelines import FgB2IPipeline, FgB2IVersatileDiffusionPipeline, MindEyeInputs, patch_dual_attention
from fgb2i_hf.testing import tiny_vd_components

STEPS = 4
# Images of two code paths (ours and diffusers' or MindEye's reference) or of a reloaded copy run other kernels and
# agree to float rounding, not bit for bit; a wrong setting (strength, guidance, text mix, contexts) moves pixels by
# more than 1e-3.
IMAGE_ATOL = 1e-4
CAPTIONS = ["a small brown dog on a wooden bench", "a red bus driving down a street"]


def make(base, **overrides):
    pipe = FgB2IVersatileDiffusionPipeline(**{**tiny_vd_components(seed=0), **overrides}, base=base)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def bd():
    return make("brain_diffuser")


@pytest.fixture(scope="module")
def mindeye():
    return make("mindeye")


@pytest.fixture(scope="module")
def features():
    g = torch.Generator().manual_seed(11)
    return dict(text=torch.randn(2, 77, 32, generator=g), vision=torch.randn(2, 257, 32, generator=g),
                image=torch.rand(2, 3, 32, 32, generator=g))


def run(pipe, seed=3, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
    return pipe(**kwargs)


def bd_run(pipe, f, **kwargs):
    return run(pipe, base_text_embeds=f["text"], base_vision_embeds=f["vision"], image=f["image"], **kwargs)


def me_run(pipe, f, **kwargs):
    kwargs.setdefault("image", f["image"])
    return run(pipe, base_vision_embeds=f["vision"], **kwargs)


# -- the dual-attention mechanics against diffusers' own pipelines ------------------------------------------


def test_diffusers_dual_guided_needs_the_attention_mask_patch():
    """diffusers 0.42's DualTransformer2DModel rejects `encoder_attention_mask`; if this starts passing
    without the patch, patch_dual_attention can go."""
    reference = VersatileDiffusionDualGuidedPipeline(**tiny_vd_components(seed=0))
    reference.set_progress_bar_config(disable=True)
    image = torch.rand(3, 32, 32)
    import PIL.Image

    pil = PIL.Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    with pytest.raises(TypeError, match="encoder_attention_mask"):
        reference(prompt="a cat", image=pil, num_inference_steps=1, output_type="np")
    assert patch_dual_attention(reference.image_unet) > 0
    assert reference(prompt="a cat", image=pil, num_inference_steps=1, output_type="np").images.shape == (1, 32, 32, 3)


def test_w0_without_init_image_is_diffusers_dual_guided(bd):
    """Contexts from diffusers' own encoders and its unconditional contexts: the same images as
    VersatileDiffusionDualGuidedPipeline (text weight 0.4, guidance 7.5, from noise), up to float rounding."""
    import PIL.Image

    reference = VersatileDiffusionDualGuidedPipeline(**tiny_vd_components(seed=0))
    reference.set_progress_bar_config(disable=True)
    patch_dual_attention(reference.image_unet)
    pil = PIL.Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8))
    expected = reference(prompt="a cat on a mat", image=pil, text_to_image_strength=0.4, num_inference_steps=STEPS,
                         guidance_scale=7.5, generator=torch.Generator().manual_seed(0), output_type="np").images
    text = reference._encode_text_prompt(["a cat on a mat"], "cpu", 1, True)
    vision = reference._encode_image_prompt([pil], "cpu", 1, True)
    ours = run(bd, seed=0, base_text_embeds=text[1:], base_vision_embeds=vision[1:], negative_text_embeds=text[:1],
               negative_vision_embeds=vision[:1], w=0.0)
    np.testing.assert_allclose(ours.images, expected, atol=IMAGE_ATOL, rtol=0)
    assert ours.text_mix == 0.4


def test_brain_diffuser_w0_is_the_base_img2img(bd, features):
    """Brain-Diffuser = SD-style img2img of the dual UNet from the low-level image; diffusers' SD img2img
    driving the same UNet with the concatenated contexts (text weight 0.4) is the independent reference (equal up
    to float rounding)."""
    f = features
    ours = bd_run(bd, f, w=0.0)
    uncond_text, uncond_vision = bd.unconditional_contexts(2, torch.float32)
    reference = StableDiffusionImg2ImgPipeline(vae=bd.vae, text_encoder=bd.text_encoder, tokenizer=bd.tokenizer,
                                               unet=bd.image_unet, scheduler=bd.scheduler, safety_checker=None,
                                               feature_extractor=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    bd.set_transformer_params(0.4, ("text", "image"))
    expected = reference(prompt_embeds=torch.cat([f["text"], f["vision"]], 1),
                         negative_prompt_embeds=torch.cat([uncond_text, uncond_vision], 1), image=f["image"],
                         strength=0.75, guidance_scale=7.5, num_inference_steps=STEPS,
                         generator=torch.Generator().manual_seed(3), output_type="np").images
    np.testing.assert_allclose(ours.images, expected, atol=IMAGE_ATOL, rtol=0)
    assert ours.captions is None and ours.text_embeds is None and torch.equal(ours.base_embeds, f["text"])  # itself


def test_brain_diffuser_unconditional_contexts_are_empty_prompt_and_grey_image(bd):
    uncond_text, uncond_vision = bd.unconditional_contexts(1, torch.float32)
    assert torch.equal(uncond_text, bd.encode_text([""]))  # exact by construction: the same encoder call
    pixels = bd.image_feature_extractor(images=[torch.full((3, 224, 224), 0.5)], do_rescale=False,
                                        return_tensors="pt").pixel_values
    expected = (0.5 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    assert torch.allclose(pixels[0, :, 0, 0], expected, atol=1e-6)  # mid-grey, not rescaled to black
    assert uncond_vision.shape == (1, 257, 32)
    assert torch.allclose(uncond_vision[:, 0].norm(dim=-1), torch.ones(1))  # VD: over the class token's norm


@torch.no_grad()
def mindeye_reference(pipe, vision, blurry, seed, steps, strength=0.85, scale=3.5):
    """MindEye's `utils.reconstruction` (MedARC-AI/fMRI-reconstruction-NSD), written out with diffusers parts:
    normalised CLIP-image tokens, zero unconditional contexts, image stream only, CLIP-normalised init."""
    unet, vae, scheduler = pipe.image_unet, pipe.vae, pipe.scheduler
    generator = torch.Generator().manual_seed(seed)
    embeds = vision / (vision[:, 0].norm(dim=-1).reshape(-1, 1, 1) + 1e-6)
    prompt = torch.zeros(len(embeds), 77, 32)
    context = torch.cat([torch.cat([torch.zeros_like(prompt), prompt]),
                         torch.cat([torch.zeros_like(embeds), embeds])], dim=1)
    pipe.set_transformer_params(0.0, ("text", "image"))
    scheduler.set_timesteps(steps)
    t_start = steps - min(int(steps * strength), steps)
    timesteps = scheduler.timesteps[t_start:]
    normalized = (blurry - torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    latents = vae.encode(normalized).latent_dist.sample(generator) * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator)
    latents = scheduler.add_noise(latents, noise, timesteps[:1].repeat(len(latents)))
    for t in timesteps:
        eps = unet(scheduler.scale_model_input(torch.cat([latents] * 2), t), t, encoder_hidden_states=context).sample
        uncond, cond = eps.chunk(2)
        latents = scheduler.step(uncond + scale * (cond - uncond), t, latents).prev_sample
    return ((vae.decode(latents / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).numpy()


def test_mindeye_w0_is_mindeyes_reconstruction(mindeye, features):
    ours = me_run(mindeye, features, w=0.0)
    expected = mindeye_reference(mindeye, features["vision"], features["image"], seed=3, steps=STEPS)
    np.testing.assert_allclose(ours.images, expected, atol=IMAGE_ATOL, rtol=0)  # two code paths: up to rounding
    assert ours.text_mix == 0.0 and torch.allclose(ours.base_embeds[:, 0].norm(dim=-1), torch.ones(2), atol=1e-5)


# -- the text bridge ------------------------------------------------------------------------------------------


def test_brain_diffuser_w1_is_text_alone_and_w_between_is_the_average(bd, features):
    f = features
    text = bd.encode_text(CAPTIONS)
    base = bd_run(bd, f, w=0.0)
    alone = bd_run(bd, f, w=1.0, captions=CAPTIONS)
    assert np.abs(alone.images - base.images).max() > 1e-3
    # exact by construction: the fusion computes these very embeddings (1 * text + 0 * base; 0.3 * text + 0.7 * base),
    # then the same pipeline runs the same kernels
    assert np.array_equal(alone.images, run(bd, base_text_embeds=text, base_vision_embeds=f["vision"],
                                            image=f["image"], w=0.0).images)
    mixed = bd_run(bd, f, w=0.3, captions=CAPTIONS)
    assert np.array_equal(mixed.images, run(bd, base_text_embeds=0.3 * text + 0.7 * f["text"],
                                            base_vision_embeds=f["vision"], image=f["image"], w=0.0).images)
    assert mixed.fused_embeds.shape == (2, 77 + 257, 32) and mixed.text_mix == 0.4


def test_mindeye_fusion_weight_is_the_dual_attention_text_weight(mindeye, features):
    f = features
    base = me_run(mindeye, f, w=0.0)
    mixed = me_run(mindeye, f, w=0.5, captions=CAPTIONS)
    assert mixed.text_mix == 0.5 and np.abs(mixed.images - base.images).max() > 1e-3
    # w = 1: the image stream has weight 0, so MindEye's embeddings no longer matter (text alone)
    alone = me_run(mindeye, f, w=1.0, captions=CAPTIONS)
    other_vision = dict(f, vision=torch.randn(2, 257, 32))
    # exact by construction: the image stream is multiplied by exactly 0 and the shapes (so the kernels) are the same
    assert np.array_equal(alone.images, me_run(mindeye, other_vision, w=1.0, captions=CAPTIONS).images)
    with pytest.raises(ValueError, match="its text weight is `w`"):
        me_run(mindeye, f, w=0.5, captions=CAPTIONS, text_mix=0.4)


def test_captions_decoded_from_betas_feed_the_text_context(features):
    from fgb2i_hf.testing import random_betas, tiny_brain_prefix_gpt2

    model, tokenizer = tiny_brain_prefix_gpt2({"subj01": 40}, seed=0)
    pipe = make("brain_diffuser", brain_model=model, caption_tokenizer=tokenizer)
    betas = random_betas({"subj01": 40}, ["subj01", "subj01"], seed=1)
    out = bd_run(pipe, features, betas=betas, subject="subj01", w=0.5)
    captions = model.generate_captions(betas, "subj01", tokenizer)
    # exact by construction: one model, one process, the same inputs and kernels
    assert out.captions == captions
    assert np.array_equal(out.images, bd_run(pipe, features, w=0.5, captions=captions).images)


@pytest.mark.parametrize("base", ["brain_diffuser", "mindeye"])
def test_guidance_fusion_runs_on_both_bases(bd, mindeye, features, base):
    pipe, runner = (bd, bd_run) if base == "brain_diffuser" else (mindeye, me_run)
    guided = runner(pipe, features, w=0.5, fusion="guidance", captions=CAPTIONS)
    assert guided.fused_embeds is None and guided.images.shape == (2, 32, 32, 3)
    assert np.abs(guided.images - runner(pipe, features, w=0.0).images).max() > 1e-3
    assert np.abs(guided.images - runner(pipe, features, w=0.5, captions=CAPTIONS).images).max() > 1e-4


def test_mindeye_without_blurry_image_generates_from_noise(mindeye, features):
    out = me_run(mindeye, features, image=None, w=0.0, num_images_per_prompt=2, output_type="pt")
    assert out.images.shape == (4, 3, 32, 32)
    assert not np.allclose(out.images.numpy(), me_run(mindeye, features, w=0.0, output_type="pt",
                                                      num_images_per_prompt=2).images.numpy())


# -- save / load -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["brain_diffuser", "mindeye"])
def test_save_load_round_trip(features, tmp_path, base):
    pipe = make(base)
    pipe.remove_unused_weights()  # the text UNet's transformers live on in the dual image UNet
    pipe.save_pretrained(tmp_path / base)
    loaded = FgB2IPipeline.from_pretrained(tmp_path / base)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is FgB2IVersatileDiffusionPipeline and loaded.config.base == base
    runner = bd_run if base == "brain_diffuser" else me_run
    for kwargs in ({"w": 0.0}, {"w": 0.5, "captions": CAPTIONS}):  # reloaded weights: other alignment, kernels
        np.testing.assert_allclose(runner(loaded, features, **kwargs).images, runner(pipe, features, **kwargs).images,
                                   atol=IMAGE_ATOL, rtol=0)


def test_smaller_vision_towers_set_the_image_context_length(features):
    """A CLIP vision tower with 65 tokens (the tiny SimNSD target models) drives the same dual attention."""
    pipe = make("brain_diffuser", **{k: v for k, v in tiny_vd_components(seed=0, vision_patch_size=4).items()
                                     if k in ("image_encoder", "image_feature_extractor")})
    assert pipe.vision_tokens == 65
    out = bd_run(pipe, dict(features, vision=features["vision"][:, :65]), w=0.5, captions=CAPTIONS)
    assert out.fused_embeds.shape == (2, 77 + 65, 32) and np.isfinite(out.images).all()
    with pytest.raises(ValueError, match=r"`base_vision_embeds` must have shape \(2, 65, 32\)"):
        bd_run(pipe, features, w=0.0)
    encoderless = make("mindeye", image_encoder=None, image_feature_extractor=None)
    assert encoderless.vision_tokens is None
    assert me_run(encoderless, dict(features, vision=features["vision"][:, :65]), w=0.5,
                  captions=CAPTIONS).images.shape == (2, 32, 32, 3)
    # MindEye's embeddings set the length even beside a 257-token image encoder (which MindEye never runs)
    assert me_run(make("mindeye"), dict(features, vision=features["vision"][:, :65]), w=0.0).images.shape == (2, 32, 32, 3)


@pytest.mark.parametrize("base", ["brain_diffuser", "mindeye"])
def test_bad_counts_are_named(bd, mindeye, features, base):
    pipe, runner = (bd, bd_run) if base == "brain_diffuser" else (mindeye, me_run)
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match=rf"`num_inference_steps` must be a positive int, got {steps!r}"):
            runner(pipe, features, w=0.0, num_inference_steps=steps)
    for n in (0, -1):
        with pytest.raises(ValueError, match=rf"`num_images_per_prompt` must be a positive int, got {n!r}"):
            runner(pipe, features, w=0.0, num_images_per_prompt=n)


def test_a_universal_checkpoint_needs_the_text_unet():
    with pytest.raises(ValueError, match="pass `text_unet`"):
        make("brain_diffuser", text_unet=None)
    with pytest.raises(ValueError, match="unknown base .takagi."):
        make("takagi")


# -- MindEye inputs ----------------------------------------------------------------------------------------------


@pytest.fixture()
def mindeye_inputs(features):
    ids = [41, 7, 123]
    embeds = torch.randn(3, 257, 32)
    blurry = (torch.rand(3, 32, 32, 3) * 255).to(torch.uint8)
    return MindEyeInputs(ids, embeds, blurry, embed_shape=(257, 32))


def test_mindeye_inputs_look_up_by_nsd_id_and_feed_the_pipeline(mindeye, mindeye_inputs):
    embeds, images = mindeye_inputs.get([123, 41])
    assert torch.equal(embeds, mindeye_inputs.clip_image_embeds[[2, 0]])  # a lookup: the stored values
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32 and images.max() <= 1
    by_id = run(mindeye, mindeye_inputs=mindeye_inputs, nsd_ids=[123, 41], w=0.0)
    direct = run(mindeye, base_vision_embeds=embeds, image=images, w=0.0)
    assert np.array_equal(by_id.images, direct.images)  # exact by construction: the same tensors, same kernels


def test_mindeye_inputs_missing_ids_and_wrong_shapes_fail_clearly(mindeye, mindeye_inputs):
    with pytest.raises(KeyError, match="no entry for nsd_id 5, 6"):
        mindeye_inputs.get([7, 5, 6])
    with pytest.raises(KeyError, match="nsd_id 999"):
        run(mindeye, mindeye_inputs=mindeye_inputs, nsd_ids=[41, 999], w=0.0)
    with pytest.raises(ValueError, match=r"must have shape \(N, 257, 768\), got \(3, 256, 768\)"):
        MindEyeInputs([1, 2, 3], torch.zeros(3, 256, 768))
    with pytest.raises(ValueError, match="2 CLIP-image embeddings for 3 nsd_ids"):
        MindEyeInputs([1, 2, 3], torch.zeros(2, 257, 768))
    with pytest.raises(ValueError, match="2 blurry images for 3 nsd_ids"):
        MindEyeInputs([1, 2, 3], torch.zeros(3, 257, 768), torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="must lie in"):
        MindEyeInputs([1, 2, 3], torch.zeros(3, 257, 768), torch.full((3, 3, 8, 8), 2.0))
    with pytest.raises(ValueError, match="duplicates"):
        MindEyeInputs([1, 1, 3], torch.zeros(3, 257, 768))
    wide = MindEyeInputs([41], torch.zeros(1, 257, 768))  # real MindEye width into the 32-wide tiny VD
    with pytest.raises(ValueError, match=r"`base_vision_embeds` must have shape \(1, 257, 32\)"):
        run(mindeye, mindeye_inputs=wide, nsd_ids=[41], w=0.0)
    with pytest.raises(ValueError, match="needs `nsd_ids`"):
        run(mindeye, mindeye_inputs=mindeye_inputs, w=0.0)


def test_mindeye_inputs_file_round_trip(mindeye_inputs, tmp_path):
    path = tmp_path / "mindeye" / "subj01_test.safetensors"
    mindeye_inputs.save(path)
    loaded = MindEyeInputs.from_file(path, embed_shape=(257, 32))
    assert torch.equal(loaded.nsd_ids, mindeye_inputs.nsd_ids)  # exact: stored bits read back
    assert torch.equal(loaded.clip_image_embeds, mindeye_inputs.clip_image_embeds)
    assert torch.equal(loaded.blurry_images, mindeye_inputs.blurry_images)
    torch.save({"nsd_ids": torch.tensor([3]), "clip_image_embeds": torch.zeros(1, 257, 32)}, tmp_path / "me.pt")
    assert MindEyeInputs.from_file(tmp_path / "me.pt", embed_shape=(257, 32)).blurry_images is None
    torch.save({"clip_image_embeds": torch.zeros(1, 257, 32)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="missing `nsd_ids`"):
        MindEyeInputs.from_file(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"must have shape \(N, 257, 768\)"):
        MindEyeInputs.from_file(path)  # 32-wide embeddings where VD's 768 are expected
    with pytest.raises(FileNotFoundError):
        MindEyeInputs.from_file(tmp_path / "nope.safetensors")
