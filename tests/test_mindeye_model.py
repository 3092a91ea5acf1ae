"""MindEyeModel: shapes, save/load and Auto classes, mixed-subject batches, the prior's schedule and building blocks."""

import math

import pytest
import torch
from transformers import AutoConfig, AutoModel

from fgb2i_hf import MindEyeConfig, MindEyeModel
from fgb2i_hf.models.mindeye.prior import prior_scheduler, relative_position_buckets, rotate_interleaved

VOXELS = {"subj01": 30, "subj02": 24}


def tiny_config(**overrides) -> MindEyeConfig:
    kwargs = dict(voxel_counts=VOXELS, clip_tokens=9, clip_dim=16, hidden_size=32, num_blocks=2,
                  projector_hidden_size=24, prior_depth=2, prior_heads=2, prior_dim_head=8, prior_timesteps=10,
                  low_level_hidden_size=16, low_level_num_blocks=1, low_level_channels=8, low_level_side=2,
                  low_level_block_out_channels=[8, 8], low_level_norm_num_groups=4)
    return MindEyeConfig(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MindEyeModel(tiny_config()).eval()


def test_forward_shapes_and_prior_loss(model):
    betas = torch.randn(3, 30)
    target = torch.randn(3, 9, 16)
    out = model(betas, "subj01", clip_image_embeds=target)
    assert out.backbone_embeds.shape == out.retrieval_embeds.shape == out.prior_embeds.shape == (3, 9, 16)
    assert out.prior_loss.ndim == 0 and out.prior_loss > 0
    assert out.blurry_latents.shape == (3, 4, 4, 4)  # side 2 upsampled once (2 decoder blocks)
    assert model.config.latent_size == 4
    without = model(betas, "subj01")
    assert without.prior_loss is None and without.prior_embeds is None
    torch.testing.assert_close(without.backbone_embeds, out.backbone_embeds)  # eval mode: same pass, bit-equal
    assert model.retrieval_embeddings(betas, "subj01").shape == (3, 9 * 16)
    torch.testing.assert_close(model.retrieval_embeddings(betas, "subj01").norm(dim=-1), torch.ones(3))


def test_generate_embeddings_seeded(model):
    betas = torch.randn(2, 24)
    a = model.generate_embeddings(betas, "subj02", generator=torch.Generator().manual_seed(1))
    b = model.generate_embeddings(betas, "subj02", generator=torch.Generator().manual_seed(1))
    c = model.generate_embeddings(betas, "subj02", generator=torch.Generator().manual_seed(2))
    assert a.shape == (2, 9, 16)
    assert torch.equal(a, b)  # same generator seed, same process and kernels: bit-equal by construction
    assert not torch.allclose(a, c)
    guided = model.generate_embeddings(betas, "subj02", generator=torch.Generator().manual_seed(1),
                                       guidance_scale=3.0, num_inference_steps=5)
    assert guided.shape == (2, 9, 16) and torch.isfinite(guided).all()


def test_reconstruction_inputs_with_a_vae(model):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), latent_channels=4,
                        layers_per_block=1).eval()
    embeds, images = model.reconstruction_inputs(torch.randn(2, 30), "subj01", vae=vae, num_inference_steps=3,
                                                 generator=torch.Generator().manual_seed(0))
    assert embeds.shape == (2, 9, 16)
    assert images.shape == (2, 3, 8, 8) and images.min() >= 0 and images.max() <= 1  # latent 4 x 4 -> 8 px
    assert model.reconstruction_inputs(torch.randn(2, 30), "subj01", num_inference_steps=2)[1] is None


def test_save_load_and_auto_classes(model, tmp_path):
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, MindEyeConfig) and config.voxel_counts == VOXELS
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MindEyeModel)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    betas = torch.randn(4, 30)
    torch.testing.assert_close(loaded(betas, "subj01").blurry_latents, model(betas, "subj01").blurry_latents)


def test_mixed_subject_batch_equals_per_subject_runs(model):
    torch.manual_seed(3)
    b1, b2 = torch.randn(3, 30), torch.randn(2, 24)
    mixed = torch.zeros(5, 30)
    subjects = ["subj01", "subj02", "subj01", "subj02", "subj01"]  # rows 0-2 of subj01 and 0-1 of subj02, interleaved
    rows = {"subj01": iter(b1), "subj02": iter(b2)}
    for i, s in enumerate(subjects):
        row = next(rows[s])
        mixed[i, : row.shape[0]] = row
    out = model(mixed, subjects)
    one, two = model(b1, "subj01"), model(b2, "subj02")
    expected = torch.stack([one.retrieval_embeds[0], two.retrieval_embeds[0], one.retrieval_embeds[1],
                            two.retrieval_embeds[1], one.retrieval_embeds[2]])
    # same weights, different matmul batch shapes: equal up to float32 summation order
    torch.testing.assert_close(out.retrieval_embeds, expected, atol=1e-5, rtol=1e-5)
    expected_latents = torch.stack([one.blurry_latents[0], two.blurry_latents[0], one.blurry_latents[1],
                                    two.blurry_latents[1], one.blurry_latents[2]])
    torch.testing.assert_close(out.blurry_latents, expected_latents, atol=1e-5, rtol=1e-5)


def test_input_errors_name_the_problem(model):
    with pytest.raises(ValueError, match="unknown subject 'subj09'"):
        model(torch.randn(2, 30), "subj09")
    with pytest.raises(ValueError, match="subj02 has 24 voxels"):
        model(torch.randn(2, 30), "subj02")
    bad = torch.randn(2, 30)
    with pytest.raises(ValueError, match=r"row 1 \(subj02\) has non-zero values after its 24 voxels"):
        model(bad, ["subj01", "subj02"])
    with pytest.raises(ValueError, match="2 names for 3 rows"):
        model(torch.randn(3, 30), ["subj01", "subj01"])
    with pytest.raises(ValueError, match="clip_image_embeds must be"):
        model(torch.randn(2, 30), "subj01", clip_image_embeds=torch.randn(2, 8, 16))


def test_optional_heads_and_config_checks():
    no_heads = MindEyeModel(tiny_config(low_level=False, use_prior=False))
    assert no_heads.low_level is None and no_heads.prior is None
    assert not any(k.startswith(("low_level.", "prior.")) for k in no_heads.state_dict())
    with pytest.raises(ValueError, match="no diffusion prior"):
        no_heads.generate_embeddings(torch.randn(1, 30), "subj01")
    with pytest.raises(ValueError, match="no low-level head"):
        no_heads.blurry_latents(torch.randn(1, 30), "subj01")
    with pytest.raises(ValueError, match=r"voxel_counts\['subj01'\] must be a positive int"):
        tiny_config(voxel_counts={"subj01": 0})
    with pytest.raises(ValueError, match="multiples of low_level_norm_num_groups"):
        tiny_config(low_level_block_out_channels=[8, 10])
    with pytest.raises(ValueError, match="prior_rotary_dim must be even"):
        tiny_config(prior_rotary_dim=3)
    paper = MindEyeConfig(voxel_counts={"subj01": 15724})
    assert (paper.clip_tokens, paper.clip_dim, paper.hidden_size, paper.num_blocks) == (257, 768, 4096, 4)
    assert paper.latent_size == 64 and paper.rotary_dim == 32 and paper.image_embed_scale == math.sqrt(768)


def test_prior_schedule_is_dalle2_cosine():
    """Known answer: DALLE2's cosine betas (Nichol & Dhariwal 2021), 1 - abar(t+1)/abar(t), capped at 0.999."""
    T, s = 100, 0.008
    abar = [math.cos(((t / T) + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    betas = torch.tensor([min(1 - abar[t + 1] / abar[t], 0.999) for t in range(T)])
    scheduler = prior_scheduler(T)
    torch.testing.assert_close(scheduler.betas.double(), betas.double(), atol=1e-6, rtol=0)
    assert scheduler.config.prediction_type == "sample" and scheduler.config.clip_sample is False


def test_rotary_and_relative_position_known_answers():
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0, 5.0]])  # one position, rotary on the first 4 features
    angles = torch.tensor([[math.pi / 2, math.pi / 2, math.pi, math.pi]])
    # pairs (1, 0) turned by 90 degrees -> (0, 1); (0, 1) turned by 180 -> (0, -1); the 5th feature is untouched
    torch.testing.assert_close(rotate_interleaved(x, angles), torch.tensor([[0.0, 1.0, 0.0, -1.0, 5.0]]),
                               atol=1e-6, rtol=0)
    buckets = relative_position_buckets(4, 5, num_buckets=32, max_distance=128, device="cpu")
    expected = torch.tensor([[max(q - k, 0) for k in range(5)] for q in range(4)])
    assert torch.equal(buckets, expected)
    far = relative_position_buckets(200, 1, num_buckets=32, max_distance=128, device="cpu")[:, 0]
    assert far[15] == 15 and far[16] == 16 and far[-1] == 31 and bool((far[1:] >= far[:-1]).all())
