"""BrainPrefixGPT2 on the Hub side: save/load, Auto classes, from_language_model, model card, push_to_hub (no network)."""

import json
import os

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, GPT2LMHeadModel

import fgb2i_hf.core.names
from fgb2i_hf import BrainPrefixGPT2, BrainPrefixGPT2Config
from fgb2i_hf.models.brain_prefix_gpt2.model_card import create_model_card
from fgb2i_hf.testing import caption_batch, random_betas, tiny_brain_prefix_gpt2, tiny_gpt2_config

COUNTS = {"subj01": 40, "subj02": 56}
CAPTIONS = ["a cat sleeping on a laptop keyboard!", "a dog.", "two giraffes standing next to a tall tree."]
SUBJECTS = ["subj02", "subj01", "subj02"]


def _logits(model, tok):
    with torch.no_grad():
        return model(betas=random_betas(COUNTS, SUBJECTS), subject=SUBJECTS, **caption_batch(tok, CAPTIONS)).logits


@pytest.mark.parametrize("overrides", [{}, {"subject_hidden_size": 16}])
def test_save_load_round_trip_identical_logits_and_tied_embeddings(tmp_path, overrides):
    model, tok = tiny_brain_prefix_gpt2(COUNTS, **overrides)
    with torch.no_grad():  # make every part non-trivial, so a part that failed to load would show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = _logits(model, tok)
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "README.md"} <= set(os.listdir(tmp_path))
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "gpt2.transformer.wte.weight" in keys and "gpt2.lm_head.weight" not in keys  # stored once
    assert {"mapper.prefix_const", "subject_proj.subj01.weight", "subject_proj.subj02.bias"} <= keys
    for loaded in (BrainPrefixGPT2.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert type(loaded) is BrainPrefixGPT2
        assert loaded.gpt2.lm_head.weight is loaded.gpt2.transformer.wte.weight  # still tied
        # The loaded weights are bit-identical (from_pretrained keeps them in the safetensors buffer), but at other
        # memory alignments, so BLAS may pick other kernels: logits agree to rounding (5.6e-6 measured on an AMD EPYC).
        torch.testing.assert_close(_logits(loaded.eval(), tok), before, atol=1e-4, rtol=1e-4)
        for field in ("voxel_counts", "prefix_length", "mapper_layers", "mapper_heads", "mlp_ratio",
                      "subject_hidden_size", "freeze_language_model", "max_caption_tokens"):
            assert getattr(loaded.config, field) == getattr(model.config, field), field
        for field in ("n_layer", "n_embd", "vocab_size", "eos_token_id", "bos_token_id"):
            assert getattr(loaded.config.gpt2_config, field) == getattr(model.config.gpt2_config, field), field
        assert not any(p.requires_grad for p in loaded.gpt2.parameters())  # frozen LM stays frozen


def test_auto_classes():
    config = AutoConfig.for_model("brain_prefix_gpt2", voxel_counts=COUNTS, prefix_length=3, mapper_layers=1,
                                  gpt2_config=tiny_gpt2_config(64).to_dict())
    assert isinstance(config, BrainPrefixGPT2Config)
    assert config.gpt2_config.n_embd == 32 and config.voxel_counts == COUNTS
    model = AutoModel.from_config(config)
    assert isinstance(model, BrainPrefixGPT2)
    assert model.encode_brain(torch.zeros(2, 40), "subj01").shape == (2, 3, 32)


def test_checkpoint_of_another_model_type_is_refused(tmp_path):
    GPT2LMHeadModel(tiny_gpt2_config(64)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match=r"gpt2: config.json describes a 'gpt2' model, expected model_type "
                                         r"'brain_prefix_gpt2'.*from_language_model"):
        BrainPrefixGPT2.from_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match=r"describes a 'gpt2' model"):
        BrainPrefixGPT2Config.from_pretrained(tmp_path / "gpt2")


def test_from_language_model_wraps_a_pretrained_gpt2(tmp_path):
    lm = GPT2LMHeadModel(tiny_gpt2_config(64, initializer_range=0.5))
    lm.save_pretrained(tmp_path / "lm")
    model = BrainPrefixGPT2.from_language_model(str(tmp_path / "lm"), voxel_counts=COUNTS, prefix_length=3,
                                                mapper_layers=1, mapper_heads=2)
    assert model.config.language_model_name_or_path == str(tmp_path / "lm")
    assert model.config.gpt2_config.vocab_size == 64 and model.config.prefix_length == 3
    for name, p in lm.state_dict().items():
        assert torch.equal(model.gpt2.state_dict()[name], p), name  # exact by construction: stored bits, read back
    assert model.gpt2.lm_head.weight is model.gpt2.transformer.wte.weight
    assert not any(p.requires_grad for p in model.gpt2.parameters())
    assert all(p.requires_grad for p in model.mapper.parameters())
    # round trip of the wrapped model
    model.save_pretrained(tmp_path / "brain")
    again = BrainPrefixGPT2.from_pretrained(tmp_path / "brain")
    assert torch.equal(again.gpt2.transformer.wte.weight, lm.transformer.wte.weight)  # stored bits, read back
    # the brain side follows the language model's dtype
    double = BrainPrefixGPT2.from_language_model(str(tmp_path / "lm"), voxel_counts=COUNTS, prefix_length=3,
                                                 mapper_layers=1, language_model_kwargs={"dtype": torch.float64})
    assert {p.dtype for p in double.parameters()} == {torch.float64}
    assert double.generate(betas=torch.randn(2, 40), subject="subj01", max_new_tokens=3).shape == (2, 3)
    with pytest.raises(ValueError, match="do not pass gpt2_config"):
        BrainPrefixGPT2.from_language_model(str(tmp_path / "lm"), voxel_counts=COUNTS, gpt2_config={})


def test_simnsd_names_resolve_through_the_world(tmp_path, monkeypatch):
    """``simnsd/<component>`` loads the packaged world folder, by the same code path as a Hub id."""
    monkeypatch.setattr(fgb2i_hf.core.names, "world_dir", lambda: str(tmp_path))
    GPT2LMHeadModel(tiny_gpt2_config(64)).save_pretrained(tmp_path / "gpt2")
    model = BrainPrefixGPT2.from_language_model("simnsd/gpt2", voxel_counts=COUNTS, prefix_length=2, mapper_layers=1)
    assert model.config.language_model_name_or_path == "simnsd/gpt2"
    model.save_pretrained(tmp_path / "brain")
    loaded = BrainPrefixGPT2.from_pretrained("simnsd/brain")
    assert torch.equal(loaded.mapper.prefix_const, model.mapper.prefix_const)  # stored bits, read back
    with pytest.raises(FileNotFoundError, match="no component 'missing'"):
        BrainPrefixGPT2.from_pretrained("simnsd/missing")


def test_model_card_describes_the_model(tmp_path):
    model, _ = tiny_brain_prefix_gpt2({"subj01": 15724, "subj07": 12682}, subject_hidden_size=8,
                                      language_model_name_or_path="gpt2")
    model.save_pretrained(tmp_path, model_card={
        "datasets": ["nsd/natural-scenes-dataset"],
        "data_description": "NSD train split, LLaVA-1.5 fine captions.",
        "metrics": {"BLEU-4": 0.1903, "METEOR": 0.1945},
        "training": {"epochs": 200},
    })
    card = ModelCard.load(tmp_path / "README.md")
    text = card.content
    assert "| subj01 | 15724 |" in text and "| subj07 | 12682 |" in text
    assert "prefix length: 4" in text
    assert "2 layers, 4 heads, MLP ratio 2" in text
    assert "voxels -> 8 (one linear layer per subject) -> 4 x 32" in text
    assert "GPT-2 (2 layers, width 32" in text and "from `gpt2`" in text and "frozen (prefix tuning)" in text
    assert "| BLEU-4 | 0.1903 |" in text and "| METEOR | 0.1945 |" in text and "| epochs | 200 |" in text
    assert "NSD train split, LLaVA-1.5 fine captions." in text
    assert card.data.datasets == ["nsd/natural-scenes-dataset"]
    assert card.data.base_model == "gpt2" and card.data.library_name == "transformers"
    assert "fgb2i_hf" in card.data.tags and card.data.metrics == ["BLEU-4", "METEOR"]
    # without data or metrics the card says so rather than inventing any
    bare = str(create_model_card(model.config))
    assert "No metrics recorded." in bare and "Not recorded." in bare and "base_model" in bare
    assert "base_model" not in str(create_model_card(BrainPrefixGPT2Config(voxel_counts={"subj01": 3},
                                                                            language_model_name_or_path="/data/lm")))
    # model_card=False writes none
    model.save_pretrained(tmp_path / "nocard", model_card=False)
    assert not os.path.exists(tmp_path / "nocard" / "README.md")


def test_push_to_hub_uploads_weights_and_the_generated_card(monkeypatch):
    """push_to_hub with the Hub client replaced: what would be uploaded is captured, nothing leaves the machine."""
    import huggingface_hub

    uploaded = {}

    class FakeRepo:
        repo_id = "user/brain"

    def fake_create_repo(self, repo_id, private=None, exist_ok=False, **kw):
        uploaded["create"] = (repo_id, private, exist_ok)
        return FakeRepo()

    def fake_upload_folder(self, *, repo_id, folder_path, commit_message, commit_description, revision, create_pr):
        uploaded["files"] = sorted(os.listdir(folder_path))
        uploaded["readme"] = open(os.path.join(folder_path, "README.md")).read()
        uploaded["config"] = json.load(open(os.path.join(folder_path, "config.json")))
        uploaded["call"] = (repo_id, commit_message, revision, create_pr)
        return "https://hub/commit"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload_folder)
    model, _ = tiny_brain_prefix_gpt2(COUNTS)
    result = model.push_to_hub("brain", private=True, tags=["simnsd"], model_card={"metrics": {"CIDEr": 0.61}})
    assert result == "https://hub/commit"
    assert uploaded["create"] == ("brain", True, True)
    assert uploaded["call"] == ("user/brain", "Upload BrainPrefixGPT2", None, False)
    assert {"README.md", "config.json", "model.safetensors"} <= set(uploaded["files"])
    assert "| subj02 | 56 |" in uploaded["readme"] and "| CIDEr | 0.61 |" in uploaded["readme"]
    assert "- simnsd" in uploaded["readme"]
    assert 'AutoModel.from_pretrained("user/brain")' in uploaded["readme"]
    assert uploaded["config"]["model_type"] == "brain_prefix_gpt2"
    with pytest.raises(ValueError, match="push_to_hub"):
        model.save_pretrained("unused", push_to_hub=True)
