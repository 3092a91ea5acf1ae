"""open_clip ViT -> transformers CLIPVisionModelWithProjection conversion: the tokens Versatile Diffusion reads equal
open_clip's, and VD's normalisation of them equals the MindEye driver's open_clip targets."""

import numpy as np
import pytest
import torch

from fgb2i_hf.clip import CLIPScorer
from fgb2i_hf.decoders.open_clip_targets import OpenCLIPImageTokenExtractor
from fgb2i_hf.simnsd.world.vision_encoder import (convert_open_clip_vision_to_hf, normalized_image_tokens,
                                                  world_clip_image_processor)


def _clip(quick_gelu=True, seed=0, **vision_overrides):
    torch.manual_seed(seed)
    config = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2,
                                              "head_width": 16, **vision_overrides},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
              "quick_gelu": quick_gelu}
    scorer = CLIPScorer.from_config(config)
    with torch.no_grad():  # large random weights so that every tensor of the computation matters
        for p in scorer.model.visual.parameters():
            p.normal_(0, 0.2)
    return scorer.eval()


def _images(n=5, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _open_clip_tokens(scorer, pixels):
    """open_clip's projected tokens, every token (class first): ln_post(transformer(embeds)) @ proj."""
    visual = scorer.model.visual
    x = visual._embeds(pixels)
    return visual.ln_post(visual.transformer(x)) @ visual.proj


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_hf_tokens_and_embeds_equal_open_clips(quick_gelu):
    scorer = _clip(quick_gelu=quick_gelu)
    hf = convert_open_clip_vision_to_hf(scorer)
    assert hf.config.hidden_act == ("quick_gelu" if quick_gelu else "gelu")
    assert (hf.config.image_size, hf.config.patch_size, hf.config.projection_dim) == (32, 8, 24)
    pixels = scorer.preprocess(_images())
    with torch.no_grad():
        out = hf(pixels)
        tokens = hf.visual_projection(hf.vision_model.post_layernorm(out.last_hidden_state))
        reference = _open_clip_tokens(scorer, pixels)
        assert tokens.shape == (5, 17, 24) and reference.abs().max() > 0.5
        # float rounding only: the same operations in another order (fused attention, split q/k/v)
        torch.testing.assert_close(tokens, reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.image_embeds, scorer.model.encode_image(pixels), atol=1e-5, rtol=1e-5)


def test_every_tensor_is_mapped_and_a_different_model_converts_differently():
    a, b = convert_open_clip_vision_to_hf(_clip(seed=0)), convert_open_clip_vision_to_hf(_clip(seed=1))
    pixels = torch.randn(2, 3, 32, 32)
    for name, tensor in a.state_dict().items():
        if name.endswith("position_ids"):
            continue
        assert not torch.equal(tensor, b.state_dict()[name]), f"{name} was not taken from the open_clip model"
    with torch.no_grad():
        assert (a(pixels).image_embeds - b(pixels).image_embeds).abs().max() > 0.1


def test_vd_normalised_tokens_equal_the_mindeye_open_clip_targets():
    """The processor + converted encoder + VD's normalisation (BrainDiffuserTargetExtractor, the MindEye driver's
    path for a VD folder) give the targets OpenCLIPImageTokenExtractor computes from the open_clip model."""
    from fgb2i_hf.decoders.targets import BrainDiffuserTargetExtractor

    scorer = _clip()
    images = _images(6)
    reference = OpenCLIPImageTokenExtractor(scorer, device="cpu").extract("clip_vision", images=images,
                                                                           progress=False)
    processor, encoder = world_clip_image_processor(scorer), convert_open_clip_vision_to_hf(scorer)
    vd = BrainDiffuserTargetExtractor(None, None, processor, encoder, image_size=32, device="cpu")
    ours = vd.extract("clip_vision", images=images, progress=False)
    assert ours.shape == (6, 17, 24)
    np.testing.assert_allclose(np.linalg.norm(ours[:, 0], axis=-1), 1.0, rtol=1e-5)  # class token has norm 1
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=1e-5)
    # the processor feeds the encoder what the scorer feeds its ViT (same size: no resampling)
    pixels = processor(images=list(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255), do_rescale=False,
                       return_tensors="pt").pixel_values
    torch.testing.assert_close(pixels, scorer.preprocess(images), atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(normalized_image_tokens(encoder, pixels), torch.from_numpy(reference),
                                   atol=1e-5, rtol=1e-5)


def test_hf_model_survives_save_and_load(tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    scorer = _clip()
    convert_open_clip_vision_to_hf(scorer).save_pretrained(tmp_path / "image_encoder")
    world_clip_image_processor(scorer).save_pretrained(tmp_path / "image_feature_extractor")
    encoder = CLIPVisionModelWithProjection.from_pretrained(tmp_path / "image_encoder")
    processor = CLIPImageProcessor.from_pretrained(tmp_path / "image_feature_extractor")
    assert processor.crop_size == {"height": 32, "width": 32}
    np.testing.assert_allclose(processor.image_mean, scorer.mean.flatten().tolist())
    pixels = scorer.preprocess(_images(2))
    with torch.no_grad():
        torch.testing.assert_close(normalized_image_tokens(encoder, pixels),
                                   OpenCLIPImageTokenExtractor(scorer, device="cpu").encode_images(
                                       "clip_vision", _images(2), [0, 1]), atol=1e-5, rtol=1e-5)


def test_unsupported_image_towers_are_refused():
    with pytest.raises(ValueError, match="layer scale"):
        convert_open_clip_vision_to_hf(_clip(ls_init_value=0.1))
    with pytest.raises(ValueError, match="averaging"):
        convert_open_clip_vision_to_hf(_clip(pool_type="avg"))
    with pytest.raises(ValueError, match="final_ln_after_pool"):
        convert_open_clip_vision_to_hf(_clip(final_ln_after_pool=True))
    with pytest.raises(ValueError, match="no_ln_pre"):
        convert_open_clip_vision_to_hf(_clip(no_ln_pre=True))
    with pytest.raises(TypeError, match="open_clip CLIP"):
        convert_open_clip_vision_to_hf(torch.nn.Linear(2, 2))
