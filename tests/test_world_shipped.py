"""The shipped SimNSD world (fgb2i_hf/simnsd/world/{clip,gpt2,diffusion,ldm_base}) loads by its ``simnsd/<name>`` through
the loaders of real models and gives its known outputs on the tiny SimNSD (seed 0) of the test session.

Recorded values come from the shipped weights (``python recipes/evaluate_world.py`` prints the figures); a
retrained world changes them, and these tests then say so.
"""

import json
import os

import numpy as np
import pytest
import torch

from fgb2i_hf.core import resolve_pretrained, world_dir
from fgb2i_hf.simnsd.world.data import load_world_data
from greedy_helpers import MARGIN, smallest_greedy_margin

COMPONENTS = ("clip", "gpt2", "diffusion", "ldm_base")


@pytest.fixture(scope="module")
def world_test(simnsd_root, nsd_cache_dir):
    return load_world_data(simnsd_root, cache_dir=nsd_cache_dir).test


@pytest.fixture(scope="module")
def clip_scorer():
    from fgb2i_hf.clip import CLIPScorer

    return CLIPScorer.from_pretrained("simnsd/clip")


def _record(component):
    with open(os.path.join(world_dir(), component, "world_training.json"), encoding="utf-8") as f:
        return json.load(f)


def test_shipped_components_are_small_float16_and_recorded():
    from safetensors import safe_open

    total = 0
    for component in COMPONENTS:
        folder = resolve_pretrained(f"simnsd/{component}")
        assert folder == os.path.join(world_dir(), component)
        record = _record(component)
        assert record["component"] == f"simnsd/{component}" and record["seed"] == 0
        assert record["data"]["simnsd_seed"] == 0 and record["data"]["test_images"] == 100
        assert record["train_seconds"] > 0 and record["versions"]["torch"]
        weights = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".safetensors")]
        assert weights, component
        for path in weights:
            with safe_open(path, "pt") as f:
                assert {f.get_tensor(k).dtype for k in f.keys()} <= {torch.float16, torch.int64}, path
        total += sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)
    assert total < 20e6
    with pytest.raises(FileNotFoundError, match="no component 'nope'"):
        resolve_pretrained("simnsd/nope")


def test_shipped_clip_retrieves_the_right_caption(world_test, clip_scorer):
    from fgb2i_hf.simnsd.world.clip import retrieval

    fine = retrieval(clip_scorer, world_test.images, world_test.fine_captions)
    coco = retrieval(clip_scorer, world_test.images, world_test.captions)
    # chance: 1 % top-1 among the 100 fine captions; measured 0.45 / 0.83 (fine), 0.16 / 0.47 (COCO-like)
    assert fine["image_to_caption_top1_chance"] == pytest.approx(0.01)
    assert fine["image_to_caption_top1"] >= 0.35 and fine["image_to_caption_top5"] >= 0.7
    assert coco["image_to_caption_top1"] >= 0.1 and coco["image_to_caption_top5"] >= 0.35
    # the figures recorded at training time (float32 weights) hold for the float16-stored ones
    recorded = _record("clip")["metrics"]["test"]
    assert fine["image_to_caption_top1"] == pytest.approx(recorded["fine_captions"]["image_to_caption_top1"], abs=0.03)
    assert coco["image_to_caption_top1"] == pytest.approx(recorded["coco_captions"]["image_to_caption_top1"], abs=0.03)
    # control: every image paired with the next image's caption -> retrieval at chance
    shifted = retrieval(clip_scorer, world_test.images, world_test.fine_captions[1:] + world_test.fine_captions[:1])
    assert shifted["image_to_caption_top1"] <= 0.05
    # a known similarity: test image 0 with its own fine caption, and with image 1's
    image = clip_scorer.encode_images(world_test.images[:1])
    texts = clip_scorer.encode_text([world_test.fine_captions[0][0], world_test.fine_captions[1][0]])
    own, other = (image @ texts.T)[0].tolist()
    assert own == pytest.approx(CLIP_OWN_SIMILARITY, abs=2e-3) and other == pytest.approx(CLIP_OTHER_SIMILARITY, abs=2e-3)


def test_shipped_gpt2_models_held_out_captions(world_test):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from fgb2i_hf.simnsd.world.gpt2 import perplexity

    path = resolve_pretrained("simnsd/gpt2")
    model = GPT2LMHeadModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.dtype == torch.float32 and tokenizer.eos_token_id == 0
    texts = world_test.all_captions(fine=True)
    ppl = perplexity(model, tokenizer, texts)
    assert ppl == pytest.approx(_record("gpt2")["metrics"]["test_perplexity"], rel=0.01)
    assert ppl < 3.5  # a uniform guess over the 520-token vocabulary is 520
    # control: the same architecture, untrained
    torch.manual_seed(0)
    untrained = GPT2LMHeadModel(model.config).eval()
    assert perplexity(untrained, tokenizer, texts[:100]) > 100
    # greedy continuation of a caption start, from the <|endoftext|> position where the brain prefix goes
    ids = torch.tensor([[tokenizer.eos_token_id] + tokenizer("a large", add_special_tokens=False).input_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                         pad_token_id=tokenizer.eos_token_id, output_logits=True, return_dict_in_generate=True)
    # a stored answer is safe to compare exactly on any CPU because no greedy step is a near-tie (greedy_helpers)
    new = out.sequences[:, ids.shape[1]:]
    assert smallest_greedy_margin(new, torch.stack(out.logits, 1), tokenizer.eos_token_id) >= MARGIN
    assert tokenizer.decode(out.sequences[0, 1:], skip_special_tokens=True) == GPT2_GREEDY


def test_shipped_gpt2_is_the_frozen_language_model_of_the_brain_model():
    from fgb2i_hf import BrainPrefixGPT2

    brain = BrainPrefixGPT2.from_language_model("simnsd/gpt2", {"subj01": 20}, prefix_length=4, mapper_layers=1)
    assert not any(p.requires_grad for p in brain.gpt2.parameters())
    assert brain.gpt2.config.n_embd == _record("gpt2")["component_config"]["gpt2_n_embd"]


def test_shipped_diffusion_draws_the_captioned_scene(world_test, clip_scorer):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    from fgb2i_hf.simnsd.world.diffusion import background_in_caption, background_of, render, two_way_identification

    pipe = DiffusionPipeline.from_pretrained(resolve_pretrained("simnsd/diffusion"))
    assert isinstance(pipe, StableDiffusionPipeline) and pipe.unet.dtype == torch.float32
    n = 8
    captions = [f[0] for f in world_test.fine_captions[:n]]
    images = render(pipe, captions, seed=0, num_inference_steps=10, batch_size=n)
    assert images.shape == (n, 64, 64, 3)
    expected = [background_in_caption(c) for c in captions]
    correct = np.mean([background_of(im) == e for im, e in zip(images, expected)])
    assert correct >= DIFFUSION_MIN_BACKGROUND_ACCURACY
    # the generated images are nearer their own ground truth than the other ones (CLIP two-way, chance 0.5)
    assert two_way_identification(clip_scorer, images, world_test.images[:n]) >= 0.6
    # a known output: the mean colour of the first images at this seed
    np.testing.assert_allclose(images[:4].reshape(4, -1, 3).mean(1), DIFFUSION_MEAN_COLOURS, atol=3.0)
    # control: an empty prompt does not carry the scene
    empty = render(pipe, [""] * n, seed=0, num_inference_steps=10, batch_size=n)
    assert np.mean([background_of(im) == e for im, e in zip(empty, expected)]) < correct


def test_shipped_ldm_base_decodes_test_betas_into_the_pipeline(simnsd_dataset, world_test):
    from fgb2i_hf.decoders import RidgeDecoder
    from fgb2i_hf.pipelines import FgB2ILDMPipeline
    from fgb2i_hf.simnsd.world.pipelines import world_ldm_pipeline
    from fgb2i_hf.simnsd.world.diffusion import background_in_caption, background_of

    rows = simnsd_dataset["test"].filter(lambda s: s == "subj01", input_columns="subject").select(range(8))
    betas = torch.tensor(np.asarray(rows["betas"], dtype=np.float32))
    z = RidgeDecoder.from_pretrained("simnsd/ldm_base/subj01/z")
    c = RidgeDecoder.from_pretrained("simnsd/ldm_base/subj01/c")
    assert z.config.subject == "subj01" and z.target_shape == (4, 16, 16) and c.target_shape == (40, 32)
    assert z.config.num_voxels == betas.shape[1]
    z_pred = torch.as_tensor(z.predict(betas))
    assert z_pred.shape == (8, 4, 16, 16)
    metrics = json.load(open(os.path.join(resolve_pretrained("simnsd/ldm_base"), "metrics.json")))
    assert metrics["subj01"]["z"]["validation"]["column_r"] > 0.2  # scored on the validation split
    # the predicted latents are nearer their own image's VAE latent than the other images' (planted signal)
    pipe = world_ldm_pipeline("subj01")
    assert isinstance(pipe, FgB2ILDMPipeline) and pipe.brain_model is None
    with pytest.raises(ValueError, match="no decoders for 'subj03'"):
        world_ldm_pipeline("subj03")
    truth = world_test.images[np.searchsorted(world_test.nsd_ids, rows["nsd_id"])]
    x = torch.from_numpy(truth).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z_true = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
    r = np.corrcoef(z_pred.reshape(8, -1).numpy(), z_true.reshape(8, -1).numpy())[:8, 8:]
    off = ~np.eye(8, dtype=bool)
    assert (np.diag(r)[:, None] > r)[off].mean() >= 0.75
    # the base (w = 0) and the caption alone (w = 1, oracle captions) through the shipped pipeline
    base = pipe(betas[:4], "subj01", w=0.0, num_inference_steps=10, output_type="np",
                generator=torch.Generator().manual_seed(0)).images
    assert base.shape == (4, 64, 64, 3)
    captions = [f[0] for f in rows["fine_captions"][:4]]
    text = pipe(betas[:4], "subj01", w=1.0, captions=captions, num_inference_steps=10, output_type="np",
                generator=torch.Generator().manual_seed(0)).images
    as_uint8 = [np.clip(im * 255 + 0.5, 0, 255).astype(np.uint8) for im in text]
    assert np.mean([background_of(im) == background_in_caption(t) for im, t in zip(as_uint8, captions)]) >= 0.75


# known outputs of the shipped weights (recipes/evaluate_world.py and the calls above print them)
CLIP_OWN_SIMILARITY = 0.6169
CLIP_OTHER_SIMILARITY = -0.3198
GPT2_GREEDY = "a large yellow umbrella on the left, a small person in brown at the top and a"
DIFFUSION_MIN_BACKGROUND_ACCURACY = 0.75  # measured 1.0 on these 8 (and on all 100 test captions at 25 steps)
DIFFUSION_MEAN_COLOURS = np.array([[219.13, 189.24, 150.7], [123.64, 123.19, 127.33], [94.11, 145.87, 209.72],
                                   [220.68, 189.91, 151.14]])
