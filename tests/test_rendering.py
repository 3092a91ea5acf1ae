"""The image-image reward's renderer (fgb2i_hf.rewards.rendering): the fast paths (on-device float images, batches,
float16, the render cache) give the reference path's rewards within stated tolerances; the identity tracks what
changes the image; the distilled option's mechanics (LCM scheduler, a fused LoRA) on tiny random components."""

import numpy as np
import pytest
import torch

from fgb2i_hf.rewards import (CLIPImageImageReward, RENDERER_PRESETS, RenderCache, RendererSettings,
                              TextToImageRenderer, renderer_settings)
from fgb2i_hf.tiny import tiny_clip_scorer, tiny_sd_components

CAPTIONS = ["a dog on a mat", "a red car", "two birds in a tree", "a cat", "a dog on a mat", "a bowl of fruit"]


def tiny_pipeline(seed=0, dtype=torch.float32):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_sd_components(seed), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    return pipe if dtype == torch.float32 else pipe.to(dtype)


@pytest.fixture(scope="module")
def pipeline():
    """One tiny SD for the renderers that leave it as it is (no scheduler swap, no LoRA)."""
    return tiny_pipeline()


def tiny_renderer(pipeline=None, **settings):
    """A renderer on ``pipeline`` (a fresh one when None: scheduler swaps and LoRAs change the pipeline)."""
    return TextToImageRenderer(pipeline or tiny_pipeline(), pretrained="tiny-sd",
                               **{"num_inference_steps": 2, **settings})


@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(0)
    return tiny_clip_scorer()


@pytest.fixture(scope="module")
def stimuli():
    rng = np.random.default_rng(0)
    return {n: rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for n in range(len(CAPTIONS))}


def rewards_of(images, scorer, stimuli, ids):
    stim = scorer.encode_images(np.stack([stimuli[i] for i in ids]))
    return (scorer.encode_images(images) * stim).sum(-1)


def test_on_device_images_are_the_uint8_images(scorer, pipeline):
    renderer = tiny_renderer(pipeline)
    floats, uint8 = renderer.render(CAPTIONS), renderer(CAPTIONS)
    assert floats.shape == (6, 3, 32, 32) and uint8.shape == (6, 32, 32, 3) and uint8.dtype == np.uint8
    # same process, same tensors: quantised floats * 255 are the uint8 values exactly
    np.testing.assert_array_equal((floats * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), uint8)
    # and CLIP sees the same pixels either way (k / 255 in float32 both ways)
    torch.testing.assert_close(scorer.encode_images(floats), scorer.encode_images(uint8), atol=1e-6, rtol=1e-5)


def test_batched_rendering_gives_the_one_at_a_time_reward(scorer, stimuli, pipeline):
    """The reference path renders one caption at a time through uint8 host images, without a cache; the reward
    renders the distinct captions in batches on the device. Batches change the images by float rounding only
    (different kernel shapes, so not bit-equal): pixels within 3/255, rewards within 2e-3 (measured: 1/255, < 1e-4)."""
    renderer = tiny_renderer(pipeline, batch_size=4)  # 5 distinct captions: a batch of 4 and one of 1
    one_at_a_time = np.concatenate([renderer([c]) for c in CAPTIONS])
    reward = CLIPImageImageReward(renderer=renderer, clip=scorer, stimuli=stimuli)
    got = reward(CAPTIONS, nsd_id=list(range(6)))
    assert reward.log_values()["rendered"] == 5  # "a dog on a mat" twice: rendered once
    np.testing.assert_allclose(got, rewards_of(one_at_a_time, scorer, stimuli, range(6)).numpy(), atol=2e-3)
    batched = renderer(CAPTIONS[:4])
    assert np.abs(batched.astype(int) - one_at_a_time[:4].astype(int)).max() <= 3


def test_float16_rendering_gives_the_float32_reward(scorer, stimuli, pipeline):
    """The accelerator path renders in float16; on this CPU the tiny model runs in both. Rewards agree within 5e-3
    (measured: mean pixel difference 0.6/255, reward difference < 1e-3); the identity is the same (float16 weights
    hash like their float32 originals)."""
    r32 = tiny_renderer(pipeline)
    r16 = TextToImageRenderer(tiny_pipeline(dtype=torch.float16), pretrained="tiny-sd", num_inference_steps=2)
    assert r16.dtype == torch.float16 and r32.key == r16.key
    captions = CAPTIONS[:3]
    a = CLIPImageImageReward(renderer=r32, clip=scorer, stimuli=stimuli)(captions, nsd_id=[0, 1, 2])
    b = CLIPImageImageReward(renderer=r16, clip=scorer, stimuli=stimuli)(captions, nsd_id=[0, 1, 2])
    np.testing.assert_allclose(b, a, atol=5e-3)


def test_identity_follows_what_changes_the_image(pipeline):
    base = tiny_renderer(pipeline)
    assert tiny_renderer().key == base.key  # same weights and settings, another pipeline object
    assert tiny_renderer(pipeline, batch_size=1).key == base.key  # speed settings are not part of it
    for other in (tiny_renderer(pipeline, num_inference_steps=3), tiny_renderer(pipeline, guidance_scale=2.0),
                  tiny_renderer(pipeline, seed=1), tiny_renderer(scheduler="LCMScheduler"),
                  TextToImageRenderer(tiny_pipeline(seed=1), pretrained="tiny-sd", num_inference_steps=2)):
        assert other.key != base.key
    assert base.identity()["settings"]["num_inference_steps"] == 2
    assert base.identity()["scheduler_class"] == "DDIMScheduler"


def test_render_cache_is_keyed_by_renderer_and_settings(scorer, stimuli, pipeline):
    shared = RenderCache(64)
    calls = []

    class Counting(TextToImageRenderer):
        def render(self, prompts):
            calls.append((self.settings.num_inference_steps, list(prompts)))
            return super().render(prompts)

    two = Counting(pipeline, pretrained="tiny-sd", num_inference_steps=2)
    three = Counting(pipeline, pretrained="tiny-sd", num_inference_steps=3)
    a = CLIPImageImageReward(renderer=two, clip=scorer, stimuli=stimuli, render_cache=shared)
    b = CLIPImageImageReward(renderer=three, clip=scorer, stimuli=stimuli, render_cache=shared)
    c = CLIPImageImageReward(renderer=Counting(pipeline, pretrained="tiny-sd", num_inference_steps=2),
                             clip=scorer, stimuli=stimuli, render_cache=shared)
    first = a(["a cat", "a red car"], nsd_id=[0, 1])
    other = b(["a cat", "a red car"], nsd_id=[0, 1])  # other settings: rendered again, its own values
    again = c(["a red car", "a cat"], nsd_id=[1, 0])  # same identity: served from the cache
    assert calls == [(2, ["a cat", "a red car"]), (3, ["a cat", "a red car"])]
    assert again == first[::-1] and other != first  # cached embeddings are reused as they are
    assert len(shared) == 4
    with pytest.raises(ValueError, match="cache_size"):
        RenderCache(-1)


def test_distilled_option_mechanics_lcm_scheduler_and_a_fused_lora(tmp_path):
    """LCM-LoRA as the distilled option would load it: an LCMScheduler from the pipeline's scheduler config and a
    LoRA loaded, fused and unloaded (here a random LoRA on the tiny UNet, saved as diffusers saves one)."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    donor = tiny_pipeline()
    torch.manual_seed(1)
    donor.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                      init_lora_weights=False))
    StableDiffusionPipeline.save_lora_weights(str(tmp_path), unet_lora_layers=get_peft_model_state_dict(donor.unet))

    plain = tiny_renderer(num_inference_steps=2, guidance_scale=1.0, scheduler="LCMScheduler")
    lcm = tiny_renderer(num_inference_steps=2, guidance_scale=1.0, scheduler="LCMScheduler", lora=str(tmp_path))
    assert type(lcm.pipeline.scheduler).__name__ == "LCMScheduler"
    assert not any("lora" in name for name, _ in lcm.pipeline.unet.named_parameters())  # fused, adapters gone
    assert lcm.identity()["weights_sha256"] != plain.identity()["weights_sha256"]
    images = lcm.render(CAPTIONS[:2])
    torch.testing.assert_close(lcm.render(CAPTIONS[:2]), images, atol=0, rtol=0)  # LCM's noise comes from the seed
    assert (images - plain.render(CAPTIONS[:2])).abs().mean() > 1e-3  # the LoRA changed the images
    with pytest.raises(ValueError, match="not a diffusers scheduler"):
        tiny_renderer(scheduler="NoSuchScheduler")


def test_presets_and_settings_are_checked():
    assert RENDERER_PRESETS["renderer"].pretrained == "CompVis/stable-diffusion-v1-4"
    distilled = renderer_settings("distilled")
    assert (distilled.pretrained, distilled.num_inference_steps, distilled.guidance_scale) == ("stabilityai/sd-turbo", 1, 0.0)
    lcm = renderer_settings("distilled", pretrained="CompVis/stable-diffusion-v1-4", scheduler="LCMScheduler",
                            lora="latent-consistency/lcm-lora-sdv1-5", num_inference_steps=4, guidance_scale=None)
    assert (lcm.num_inference_steps, lcm.guidance_scale, lcm.scheduler) == (4, 0.0, "LCMScheduler")  # None: preset's
    assert "batch_size" not in lcm.drawing() and "lora" in lcm.drawing()
    with pytest.raises(ValueError, match="renderer kind must be one of"):
        renderer_settings("surrogate")
    with pytest.raises(ValueError, match="unknown renderer settings"):
        renderer_settings("renderer", steps=2)
    with pytest.raises(ValueError, match="num_inference_steps must be"):
        RendererSettings(num_inference_steps=0)
    with pytest.raises(ValueError, match="dtype must be"):
        RendererSettings(dtype="fp8")
    assert RendererSettings().torch_dtype("cuda") == torch.float16 and RendererSettings().torch_dtype("cpu") == torch.float32
