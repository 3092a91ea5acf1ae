"""open_clip text tower -> transformers CLIPTextModel conversion, and the world's offline CLIP tokenizer."""

import pytest
import torch

from fgb2i_hf.clip import CLIPScorer
from fgb2i_hf.simnsd.world.text_encoder import (convert_open_clip_text_to_hf, open_clip_token_features,
                                         world_clip_tokenizer)

TEXTS = ["a large red dog on the left, in a beige room", "", "A green horse.  In a ROOM!",
         "a large person in purple on the left, a large black chair at the bottom and a small yellow umbrella in "
         "the centre, on a grey street with a house in the background and more words to overflow the context"]


def _clip(quick_gelu=True, context_length=24, width=32, seed=0, **text_overrides):
    torch.manual_seed(seed)
    config = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                              "head_width": 16},
              "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": width, "heads": 4,
                           "layers": 2, **text_overrides}, "quick_gelu": quick_gelu}
    scorer = CLIPScorer.from_config(config)
    with torch.no_grad():  # large random weights so that every part of the computation matters
        for p in scorer.model.parameters():
            p.normal_(0, 0.2)
    return scorer


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_hf_last_hidden_state_equals_open_clip_token_features(quick_gelu):
    scorer = _clip(quick_gelu=quick_gelu)
    ids = scorer.tokenize(TEXTS)
    hf = convert_open_clip_text_to_hf(scorer)
    assert hf.config.hidden_act == ("quick_gelu" if quick_gelu else "gelu")
    assert hf.config.max_position_embeddings == 24 and hf.config.pad_token_id == 0
    with torch.no_grad():
        ours = hf(ids).last_hidden_state
    reference = open_clip_token_features(scorer, ids)
    assert ours.shape == (4, 24, 32)
    assert reference.abs().max() > 0.5  # not a trivially small output
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_projection_model_matches_encode_text():
    scorer = _clip()
    ids = scorer.tokenize(TEXTS)
    hf = convert_open_clip_text_to_hf(scorer, with_projection=True)
    with torch.no_grad():
        out = hf(ids)
        torch.testing.assert_close(out.last_hidden_state, open_clip_token_features(scorer, ids), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.text_embeds, scorer.model.encode_text(ids), atol=1e-5, rtol=1e-5)


def test_conversion_changes_with_the_weights():
    """Control: a different open_clip model gives a different HF model (the check above is not vacuous)."""
    ids = _clip().tokenize(TEXTS)
    a = convert_open_clip_text_to_hf(_clip(seed=0))(ids).last_hidden_state
    b = convert_open_clip_text_to_hf(_clip(seed=1))(ids).last_hidden_state
    assert (a - b).abs().max() > 0.1


def test_hf_model_survives_save_and_load(tmp_path):
    from transformers import CLIPTextModel

    scorer = _clip()
    ids = scorer.tokenize(TEXTS)
    convert_open_clip_text_to_hf(scorer).save_pretrained(tmp_path)
    loaded = CLIPTextModel.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).last_hidden_state, open_clip_token_features(scorer, ids),
                                   atol=1e-5, rtol=1e-5)


def test_unsupported_text_towers_are_refused():
    with pytest.raises(ValueError, match="causal"):
        convert_open_clip_text_to_hf(_clip(no_causal_mask=True))
    with pytest.raises(ValueError, match="layer scale"):
        convert_open_clip_text_to_hf(_clip(ls_init_value=0.1))
    with pytest.raises(TypeError, match="open_clip CLIP"):
        convert_open_clip_text_to_hf(torch.nn.Linear(2, 2))


def test_tokenizer_ids_equal_open_clip_ids_padding_included(simnsd_dataset):
    from open_clip.tokenizer import SimpleTokenizer

    texts = TEXTS + [c for row in simnsd_dataset["test"].select(range(100)) for c in row["captions"] + row["fine_captions"]]
    for context_length in (77, 40, 12):
        tokenizer = world_clip_tokenizer(context_length)
        ours = tokenizer(texts, padding="max_length", max_length=context_length, truncation=True,
                         return_tensors="pt").input_ids
        reference = SimpleTokenizer(context_length=context_length)(texts)
        assert torch.equal(ours, reference), context_length
    assert tokenizer.pad_token_id == 0 and (ours[1, 2:] == 0).all()  # "" -> sot, eot, then pads of id 0
    # truncation keeps the end-of-text token last, as open_clip does
    assert ours[3, -1].item() == tokenizer.eos_token_id == 49407
