"""The Brain-Diffuser and MindEye bases compute every input from betas inside the pipeline: Brain-Diffuser's VDVAE
low-level stage (ridge-predicted latents -> VDVAE decode -> init image) and MindEye's model (prior -> CLIP-image
context, low-level head -> blurry init image), plus MindEye's best-of-N. Tiny random models: mechanics only."""

import pytest
import torch

from fgb2i_hf.pipelines import build_pipeline
from fgb2i_hf.tiny import tiny_vdvae

VOXELS = 40
SUBJECT = "subj01"


def generators(n, offset=0):
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


@pytest.fixture(scope="module")
def brain_diffuser():
    from fgb2i_hf.decoders import RidgeDecoder

    pipe = build_pipeline("brain_diffuser", "tiny-random", components={"vdvae": "tiny-random"})
    latent_size = tiny_vdvae().arch.latent_size(3)
    decoder = RidgeDecoder(num_voxels=VOXELS, target_shape=(latent_size,), alphas=[1.0], subject=SUBJECT,
                           target_name="vdvae")
    g = torch.Generator().manual_seed(0)
    decoder.fit(torch.randn(32, VOXELS, generator=g), torch.randn(32, latent_size, generator=g), progress=False)
    pipe.vdvae_decoder = decoder
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_brain_diffuser_runs_from_betas_alone_and_equals_the_run_given_its_low_level_image(brain_diffuser):
    pipe = brain_diffuser
    betas = torch.randn(2, VOXELS, generator=torch.Generator().manual_seed(1))
    embeds = dict(base_text_embeds=torch.randn(2, 77, 32), base_vision_embeds=torch.randn(2, 257, 32))
    call = dict(w=0.0, num_inference_steps=4, output_type="pt", **embeds)
    out = pipe(betas, SUBJECT, generator=generators(2), **call)
    assert out.init_images.shape == (2, 3, 16, 16)  # the tiny VDVAE's 16 px decode
    assert 0.0 <= float(out.init_images.min()) and float(out.init_images.max()) <= 1.0
    # the same low-level image passed in: the very same run (same process, tensors and kernels: bit-exact)
    from fgb2i_hf.pipelines.pipeline_fgb2i_versatile_diffusion import LOW_LEVEL_SALT, derived_generators

    low_level = pipe.vdvae_images(betas, SUBJECT, None, derived_generators(generators(2), LOW_LEVEL_SALT))
    given = pipe(betas, SUBJECT, image=low_level, generator=generators(2), **call)
    assert torch.equal(out.images, given.images)
    # ...and the low-level stage matters: other init images give other reconstructions
    other = pipe(betas, SUBJECT, image=torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)),
                 generator=generators(2), **call)
    assert not torch.allclose(out.images, other.images, atol=1e-3)


def test_vdvae_stage_is_per_image_whatever_the_batch(brain_diffuser):
    """Each row's VDVAE sample comes from its own generator: one image alone equals the same image in a batch."""
    pipe = brain_diffuser
    betas = torch.randn(3, VOXELS, generator=torch.Generator().manual_seed(3))
    together = pipe.vdvae_images(betas, SUBJECT, None, generators(3))
    alone = pipe.vdvae_images(betas[1:2], SUBJECT, None, generators(1, offset=1))
    # one conv over 3 rows vs 1 row may take other kernels: equal to rounding, not bit for bit
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def mindeye():
    pipe = build_pipeline("mindeye", "tiny-random", components={"mindeye_model": "tiny-random"},
                          voxel_counts={SUBJECT: VOXELS})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_mindeye_runs_from_betas_with_its_model(mindeye):
    betas = torch.randn(2, VOXELS, generator=torch.Generator().manual_seed(4))
    out = mindeye(betas, SUBJECT, w=0.0, num_inference_steps=4, output_type="pt", generator=generators(2))
    assert out.images.shape == (2, 3, 32, 32) and out.init_images.shape == (2, 3, 8, 8)
    # its conditioning is the prior's sample, normalised by its first token (MindEye's reconstruction)
    from fgb2i_hf.pipelines.pipeline_fgb2i_versatile_diffusion import LOW_LEVEL_SALT, derived_generators

    embeds, _ = mindeye.mindeye_inputs_from_betas(betas, SUBJECT, derived_generators(generators(2), LOW_LEVEL_SALT),
                                                  None)
    expected = embeds / (embeds[:, :1].norm(dim=-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(out.base_embeds, expected, atol=1e-6, rtol=0)  # the same computation, twice


def test_best_of_n_keeps_the_candidate_closest_to_the_prediction(mindeye):
    from fgb2i_hf.pipelines.pipeline_fgb2i_versatile_diffusion import (LOW_LEVEL_SALT, candidate_generators,
                                                                       derived_generators)

    betas = torch.randn(2, VOXELS, generator=torch.Generator().manual_seed(5))
    call = dict(w=0.0, num_inference_steps=4, output_type="pt")
    best = mindeye(betas, SUBJECT, best_of_n=3, generator=generators(2), **call)
    # the candidates share the model's conditioning and differ in the diffusion's noise: rebuild each one with
    # the same conditioning passed in and candidate k's generators (same process and kernels: bit-exact)
    embeds, blurry = mindeye.mindeye_inputs_from_betas(betas, SUBJECT,
                                                       derived_generators(generators(2), LOW_LEVEL_SALT), None)
    candidates = [mindeye(betas, SUBJECT, base_vision_embeds=embeds, image=blurry,
                          generator=candidate_generators(generators(2), k), **call).images for k in range(3)]
    assert torch.equal(mindeye(betas, SUBJECT, generator=generators(2), **call).images, candidates[0])
    for i in range(2):
        sims = [torch.nn.functional.cosine_similarity(mindeye.encode_images(c[i : i + 1]).flatten(1),
                                                      best.base_embeds[i : i + 1].flatten(1)).item()
                for c in candidates]
        chosen = max(range(3), key=lambda k: sims[k])
        torch.testing.assert_close(best.images[i], candidates[chosen][i], atol=1e-5, rtol=0)  # via PNG-free pt path
    with pytest.raises(ValueError, match="best_of_n"):
        mindeye(betas, SUBJECT, best_of_n=0, generator=generators(2), **call)
