"""Every SimNSD world component trains from scratch for a few steps (tiny sizes), saves, and loads by its class."""

import json
import os

import numpy as np
import pytest
import torch

from fgb2i_hf.core import versions
from fgb2i_hf.simnsd.world.clip import CLIPTrainingConfig, contrastive_loss, train_clip
from fgb2i_hf.simnsd.world.data import SIMNSD_SUBJECTS, load_world_data
from fgb2i_hf.simnsd.world.diffusion import UNetTrainingConfig, background_of, render, train_unet
from fgb2i_hf.simnsd.world.gpt2 import GPT2TrainingConfig, perplexity, train_gpt2
from fgb2i_hf.simnsd.world.text_encoder import convert_open_clip_text_to_hf, world_clip_tokenizer
from fgb2i_hf.simnsd.world.vae import VAETrainingConfig, reconstruction_error, train_vae

TINY_CLIP = dict(clip_embed_dim=16, clip_vision_width=32, clip_vision_layers=1, clip_text_width=16,
                 clip_text_heads=2, clip_text_layers=1, clip_context_length=40, clip_batch_size=32,
                 clip_warmup_steps=2)
TINY_GPT2 = dict(gpt2_vocab_size=300, gpt2_n_embd=32, gpt2_n_layer=1, gpt2_n_head=2, gpt2_batch_size=32,
                 gpt2_warmup_steps=2, gpt2_dropout=0.0)
TINY_VAE = dict(vae_block_out_channels=[8, 16, 16], vae_norm_num_groups=4, vae_batch_size=8, vae_warmup_steps=2)
TINY_UNET = dict(unet_block_out_channels=[16, 32], unet_attention_levels=[1], unet_attention_heads=2,
                 unet_norm_num_groups=4, unet_batch_size=8, unet_warmup_steps=2)
TINY_VD = dict(vd_block_out_channels=[16, 32], vd_attention_levels=[1], vd_attention_heads=2, vd_norm_num_groups=4,
               vd_batch_size=8, vd_warmup_steps=2, vd_eval_steps=2)
TINY_MINDEYE = dict(mindeye_subjects=["subj01"], mindeye_reconstruction_subjects=["subj01"], mindeye_epochs=3,
                    mindeye_batch_size=16, mindeye_max_train_rows=64, mindeye_eval_prior_steps=2,
                    mindeye_reconstruction_images=2,
                    mindeye_model_config=json.dumps(dict(
                        hidden_size=32, num_blocks=1, projector_hidden_size=16, prior_depth=1, prior_heads=2,
                        prior_dim_head=8, low_level_hidden_size=16, low_level_num_blocks=1, low_level_channels=8,
                        low_level_side=4, low_level_block_out_channels=[8, 8, 8], low_level_norm_num_groups=4)))
TINY_VDVAE = dict(vdvae_width=8, vdvae_custom_width_str="16:16,8:16,4:16,1:16", vdvae_zdim=2,
                  vdvae_enc_blocks="64d2,32d2,16d2,8d2,4d4,1x1", vdvae_dec_blocks="1x1,4m1,8m4,16m8,32m16,64m32",
                  vdvae_num_target_layers=4, vdvae_batch_size=4, vdvae_warmup_steps=1, vdvae_steps=2)


@pytest.fixture(scope="module")
def world_data(simnsd_root, nsd_cache_dir):
    return load_world_data(simnsd_root, cache_dir=nsd_cache_dir)


def test_world_data_splits(world_data, simnsd_root, nsd_cache_dir):
    from fgb2i_hf.data import load_nsd

    # the world pretrains on every non-shared image: NSD's train and validation images (simnsd/world/data.py)
    assert len(world_data.train) == 2600 and len(world_data.test) == 100  # 4 x 650 own images; 100 shared
    rows = load_nsd(simnsd_root, subjects=list(SIMNSD_SUBJECTS), cache_dir=nsd_cache_dir)
    validation = set(rows["validation"]["nsd_id"])
    assert 0 < len(validation) < 0.1 * 2600 and validation <= set(world_data.train.nsd_ids.tolist())
    assert set(world_data.train.nsd_ids.tolist()) == set(rows["train"]["nsd_id"]) | validation
    assert not set(world_data.train.nsd_ids.tolist()) & set(world_data.test.nsd_ids.tolist())
    assert world_data.train.images.shape == (2600, 64, 64, 3) and world_data.train.images.dtype == np.uint8
    assert all(len(c) == 5 for c in world_data.test.captions) and all(len(f) == 1 for f in world_data.test.fine_captions)
    owner, texts = world_data.test.caption_pairs()
    assert len(texts) == 600 and owner.max() == 99


def test_contrastive_loss_ignores_duplicate_captions():
    emb = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    scale = torch.tensor(np.log(10.0))
    perfect = contrastive_loss(emb, emb, scale, ["a", "b", "c"])
    # the same string for rows 0 and 1: they are no longer each other's negatives, so the loss can only drop
    assert contrastive_loss(emb, emb, scale, ["a", "a", "c"]) < perfect


def test_clip_trains_and_round_trips(world_data, tmp_path):
    from fgb2i_hf.clip import CLIPScorer

    data = world_data.subset(train=64, test=16)
    config = CLIPTrainingConfig(clip_epochs=12, **{**TINY_CLIP, "clip_learning_rate": 3e-3})
    scorer, record = train_clip(config, data, progress=False)
    assert record["steps"] == 24 and np.isfinite(record["final_loss"])
    assert record["final_loss"] < record["initial_loss"] - 0.3  # learned something about its 64 images
    test = record["metrics"]["test"]
    assert test["fine_captions"]["image_to_caption_chance"] == pytest.approx(1 / 16)
    scorer.save_pretrained(tmp_path)
    loaded = CLIPScorer.from_pretrained(str(tmp_path))
    texts = data.test.fine_captions[0] + data.test.captions[0]
    torch.testing.assert_close(loaded.encode_text(texts), scorer.encode_text(texts))
    torch.testing.assert_close(loaded.encode_images(data.test.images[:4]), scorer.encode_images(data.test.images[:4]))


def test_gpt2_trains_and_loads_frozen_into_brain_model(world_data, tmp_path):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from fgb2i_hf import BrainPrefixGPT2

    data = world_data.subset(train=100, test=20)
    config = GPT2TrainingConfig(gpt2_epochs=2, **{**TINY_GPT2, "gpt2_learning_rate": 1e-2})
    model, tokenizer, record = train_gpt2(config, data, progress=False)
    # 38 steps take the model far below the uniform guess over its vocabulary
    assert record["metrics"]["test_perplexity"] < len(tokenizer) / 4
    assert tokenizer.eos_token_id == 0 and tokenizer.pad_token is None
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    texts = data.test.fine_captions[0]
    assert reloaded_tokenizer(texts).input_ids == tokenizer(texts).input_ids
    assert perplexity(reloaded, reloaded_tokenizer, texts) == pytest.approx(perplexity(model, tokenizer, texts), rel=1e-5)
    brain = BrainPrefixGPT2.from_language_model(str(tmp_path), {"subj01": 20}, prefix_length=4, mapper_layers=1)
    assert not any(p.requires_grad for p in brain.gpt2.parameters())
    torch.testing.assert_close(brain.gpt2.transformer.wte.weight, reloaded.transformer.wte.weight)


def test_vae_and_unet_train_into_a_loadable_stable_diffusion_pipeline(world_data, tmp_path):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    from fgb2i_hf.clip import CLIPScorer

    data = world_data.subset(train=48, test=8)
    vae, vae_record = train_vae(VAETrainingConfig(vae_steps=6, vae_full_image_steps=1, **TINY_VAE), data,
                                progress=False)
    assert vae_record["latent_shape"] == [4, 16, 16]
    # scaling_factor = 1 / std of the train latents
    assert vae.config.scaling_factor == pytest.approx(vae_record["scaling_factor"])
    untrained = VAETrainingConfig(**TINY_VAE).model()
    assert reconstruction_error(vae, data.test.images)["mae_255"] < reconstruction_error(untrained, data.test.images)["mae_255"]

    scorer = CLIPScorer.from_config(CLIPTrainingConfig(**TINY_CLIP).model_config())
    text_encoder = convert_open_clip_text_to_hf(scorer)
    tokenizer = world_clip_tokenizer(40)
    pipe, record = train_unet(UNetTrainingConfig(unet_steps=4, **TINY_UNET), data, vae, text_encoder, tokenizer,
                              progress=False)
    assert record["steps"] == 4 and np.isfinite(record["final_loss"]) and record["train_pairs"] == 48 * 6
    assert pipe.unet.config.cross_attention_dim == 16 and pipe.unet.config.sample_size == 16
    pipe.save_pretrained(tmp_path)
    index = json.load(open(tmp_path / "model_index.json"))
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
    scheduler = json.load(open(tmp_path / "scheduler" / "scheduler_config.json"))
    assert scheduler["steps_offset"] == 1 and scheduler["prediction_type"] == "v_prediction"
    loaded = DiffusionPipeline.from_pretrained(str(tmp_path))
    assert isinstance(loaded, StableDiffusionPipeline) and loaded.unet.dtype == torch.float32
    images = render(loaded, ["a red dog", "a blue car"], num_inference_steps=2, batch_size=2)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    again = render(loaded, ["a red dog"], num_inference_steps=2)
    # a prompt + seed always gives the same image (up to one grey level of batched float rounding)
    assert np.abs(again[0].astype(int) - images[0]).max() <= 1
    # (img2img through the same parts runs in test_train_world_recipe_end_to_end's evaluation)


def _tiny_diffusion_folder(path):
    """What simnsd/versatile takes from simnsd/diffusion: a (tiny, untrained) VAE and the world's scheduler."""
    VAETrainingConfig(**TINY_VAE).model().save_pretrained(path / "vae")
    UNetTrainingConfig().scheduler().save_pretrained(path / "scheduler")
    return str(path)


@pytest.mark.usefixtures("one_thread")
def test_versatile_trains_both_streams_into_a_vd_backbone(world_data, tmp_path):
    from diffusers import DiffusionPipeline
    from diffusers.pipelines.deprecated.versatile_diffusion import VersatileDiffusionDualGuidedPipeline

    from fgb2i_hf.clip import CLIPScorer
    from fgb2i_hf.decoders.open_clip_targets import OpenCLIPImageTokenExtractor
    from fgb2i_hf.pipelines import FgB2IVersatileDiffusionPipeline, build_pipeline, load_backbone
    from fgb2i_hf.simnsd.world.versatile import (VersatileTrainingConfig, evaluate_versatile, save_versatile,
                                                 set_text_weights, train_versatile)

    data = world_data.subset(train=32, test=4)
    torch.manual_seed(0)
    scorer = CLIPScorer.from_config(CLIPTrainingConfig(**TINY_CLIP).model_config())
    pipe, record = train_versatile(VersatileTrainingConfig(vd_steps=3, **TINY_VD), data, scorer,
                                   _tiny_diffusion_folder(tmp_path / "diffusion"), progress=False)
    assert record["steps"] == 3 and np.isfinite(record["final_loss"]) and record["train_pairs"] == 32 * 6
    assert (record["text_tokens"], record["vision_tokens"]) == (40, 65)  # world context length; 8 x 8 patches + 1
    unet = pipe.image_unet
    assert unet.config.dual_cross_attention and unet.config.cross_attention_dim == 16
    assert pipe.text_unet is None and isinstance(pipe, FgB2IVersatileDiffusionPipeline)

    # the dual attention's per-example text weights: weight 0 ignores the text context, weight 1 the vision one
    # (exactly: the other stream's residual is multiplied by 0); weight 0.4 reads both
    latents, t = torch.randn(2, 4, 16, 16), torch.tensor([500, 500])
    text, vision = torch.randn(2, 40, 16), torch.randn(2, 65, 16)
    other_text, other_vision = torch.randn(2, 40, 16), torch.randn(2, 65, 16)

    def eps(weights, text_context, vision_context):
        set_text_weights(unet, weights, 40, 65)
        with torch.no_grad():
            return unet(latents, t, torch.cat([text_context, vision_context], 1)).sample

    assert torch.equal(eps([0.0, 0.0], text, vision), eps([0.0, 0.0], other_text, vision))
    assert torch.equal(eps([1.0, 1.0], text, vision), eps([1.0, 1.0], text, other_vision))
    assert not torch.allclose(eps([0.4, 0.4], text, vision), eps([0.4, 0.4], other_text, vision))
    # one batch with different weights per row = each row's weight alone (float rounding of batched kernels)
    mixed = eps([0.0, 1.0], text, vision)
    torch.testing.assert_close(mixed[0], eps([0.0, 0.0], text, vision)[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixed[1], eps([1.0, 1.0], text, vision)[1], atol=1e-5, rtol=1e-4)

    # the VD layout loads through the backbone loader, as a diffusers pipeline and into both VD bases
    folder = tmp_path / "versatile"
    folder.mkdir()
    save_versatile(pipe, str(folder))
    index = json.load(open(folder / "model_index.json"))
    assert index["_class_name"] == "VersatileDiffusionDualGuidedPipeline" and index["text_unet"] == [None, None]
    assert (folder / "tokenizer" / "merges.txt").exists() and not (folder / "tokenizer" / "tokenizer.json").exists()
    components = load_backbone(str(folder), "vd")
    assert "text_unet" not in components and components["image_unet"].config.dual_cross_attention
    assert isinstance(DiffusionPipeline.from_pretrained(str(folder)), VersatileDiffusionDualGuidedPipeline)
    mindeye = build_pipeline("mindeye", str(folder))
    embeds = mindeye.encode_images(torch.from_numpy(data.test.images[:2]).permute(0, 3, 1, 2).float() / 255)
    targets = OpenCLIPImageTokenExtractor(scorer, device="cpu").extract("clip_vision", images=data.test.images[:2],
                                                                         progress=False)
    torch.testing.assert_close(embeds, torch.from_numpy(targets), atol=1e-5, rtol=1e-5)
    images = mindeye(w=0.0, base_vision_embeds=embeds, num_inference_steps=2, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 64, 64, 3)
    metrics = evaluate_versatile(build_pipeline("brain_diffuser", str(folder)), data.test, scorer, n=2,
                                 num_inference_steps=2)
    assert metrics["n"] == 2 and 0.0 <= metrics["image_variation_two_way"] <= 1.0
    assert metrics["img2img_settings"] == {"strength": 0.75, "num_inference_steps": 50, "guidance_scale": 7.5,
                                           "text_mix": 0.4}


def test_background_classifier_reads_simnsd_backgrounds(world_data):
    from fgb2i_hf.simnsd.world.diffusion import background_in_caption

    data = world_data.test
    truth = [background_in_caption(f[0]) for f in data.fine_captions]
    assert None not in truth and len(set(truth)) == 4
    accuracy = np.mean([background_of(im) == t for im, t in zip(data.images, truth)])
    assert accuracy >= 0.97
    # control: a constant grey image is a street, a sky-over-blue one water
    assert background_of(np.full((64, 64, 3), (95, 95, 100), np.uint8)) == "street"


@pytest.mark.usefixtures("one_thread")
def test_train_world_recipe_end_to_end(simnsd_root, nsd_cache_dir, tmp_path):
    """recipes/train_world.py with tiny sizes: all seven components written with their records."""
    import importlib.util

    from fgb2i_hf.decoders import RidgeDecoder
    from fgb2i_hf.simnsd.world.io import read_record

    spec = importlib.util.spec_from_file_location("train_world", os.path.join(os.path.dirname(__file__), "..",
                                                                              "recipes", "train_world.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = tmp_path / "world"
    argv = ["--config", os.path.join(os.path.dirname(__file__), "..", "recipes", "configs", "world_simnsd.yaml"),
            "--output_dir", str(out), "--work_dir", str(tmp_path / "work"), "--nsd_root", simnsd_root,
            "--datasets_cache_dir", nsd_cache_dir, "--max_train_images", "48", "--diffusion_eval_images", "2",
            "--diffusion_eval_steps", "2",
            "--progress", "false", "--clip_epochs", "1", "--gpt2_epochs", "1", "--vae_steps", "3",
            "--vae_full_image_steps", "1", "--unet_steps", "3", "--ldm_subjects", "subj01",
            "--ldm_max_train_rows", "80", "--ldm_alphas", "1.0", "100.0", "10000.0"]
    for key, value in {**TINY_CLIP, **TINY_GPT2, **TINY_VAE, **TINY_UNET, **TINY_VDVAE, **TINY_VD,
                       **TINY_MINDEYE}.items():
        argv += [f"--{key}", *map(str, value if isinstance(value, list) else [value])]
    argv += ["--vd_steps", "2", "--mindeye_max_lr", "1e-3"]
    records = recipe.main(argv)
    assert set(records) == {"clip", "gpt2", "diffusion", "ldm_base", "vdvae", "versatile", "mindeye"}
    for name in records:
        record = read_record(str(out / name))
        assert record["component"] == f"simnsd/{name}" and record["storage_dtype"] == "float16"
        assert record["versions"] == versions() and record["world_config"]["seed"] == 0
    assert read_record(str(out / "clip"))["component_config"]["clip_text_width"] == 16
    # float16 on disk, float32 when loaded
    from safetensors import safe_open

    with safe_open(str(out / "diffusion" / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    decoder = RidgeDecoder.from_pretrained(str(out / "ldm_base" / "subj01" / "z"))
    assert decoder.target_shape == (4, 16, 16) and decoder.config.subject == "subj01"
    c = RidgeDecoder.from_pretrained(str(out / "ldm_base" / "subj01" / "c"))
    assert c.target_shape == (40, 16)
    assert (out / "ldm_base" / "metrics.json").exists() and not (out / "ldm_base" / "targets").exists()
    assert (tmp_path / "work" / "diffusion_samples.png").exists()
    from fgb2i_hf.models.vdvae import VDVAEModel

    assert VDVAEModel.from_pretrained(str(out / "vdvae")).config.num_target_layers == 4
    # versatile: the clip towers and the diffusion VAE in VD's layout; mindeye: its targets from versatile
    from fgb2i_hf.models.mindeye import MindEyeModel
    from fgb2i_hf.pipelines import load_backbone

    vd = load_backbone(str(out / "versatile"), "vd")
    assert vd["image_unet"].config.dual_cross_attention and vd["image_encoder"].config.projection_dim == 16
    assert set(records["versatile"]["metrics"]["test"]) >= {"image_variation_two_way", "text_to_image_two_way",
                                                            "img2img_brain_diffuser_two_way"}
    assert (tmp_path / "work" / "versatile_samples.png").exists()
    mindeye = MindEyeModel.from_pretrained(str(out / "mindeye"))
    assert (mindeye.config.clip_tokens, mindeye.config.clip_dim) == (65, 16) and mindeye.dtype == torch.float32
    assert mindeye.config.vae_scaling_factor == vd["vae"].config.scaling_factor
    assert records["mindeye"]["metrics"]["reconstruction"]["subj01"]["n"] == 2
    assert set(records["mindeye"]["metrics"]["test"]) == {"subj01"}
    # a second run of one component replaces only that folder
    before = read_record(str(out / "gpt2"))
    recipe.main(argv + ["--components", "clip"])
    assert read_record(str(out / "gpt2")) == before
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no scratch folders left behind
