"""Target extraction (LDM z/c, Brain-Diffuser CLIP-text/vision) with tiny random models built from configs."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from fgb2i_hf.decoders.targets import BrainDiffuserTargetExtractor, LDMTargetExtractor, extract_targets
from fgb2i_hf.tiny import tiny_brain_diffuser_extractor, tiny_ldm_extractor

CAPTIONS = [["a cat on a mat", "a small grey cat"], ["two dogs"], ["a red bus", "a bus", "a street with a bus"],
            ["a kite"], ["a plate of food", ""]]


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def ldm():
    return tiny_ldm_extractor(model_seed=0, device="cpu")


@pytest.fixture(scope="module")
def brain_diffuser():
    return tiny_brain_diffuser_extractor(model_seed=0, device="cpu")


class Stimuli:
    """The NSDStimuli interface: ``get(list_of_ids) -> uint8 (n, H, W, 3)``; counts what was read."""

    def __init__(self, images):
        self.images, self.reads = images, []

    def get(self, ids):
        self.reads.append(list(ids))
        return self.images[ids]


def test_ldm_z_is_the_scaled_vae_posterior_of_the_resized_image(ldm, images):
    mean_ldm = LDMTargetExtractor(ldm.vae, ldm.tokenizer, ldm.text_encoder, image_size=32, latent_sampling="mean",
                                  device="cpu")
    z_mean = mean_ldm.extract("z", images=images, progress=False)
    assert z_mean.shape == (5, 4, 16, 16) and z_mean.dtype == np.float32
    # known answer: Lanczos resize, [-1, 1], posterior mean times the VAE's scaling factor
    x = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.LANCZOS)) for im in images])
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        posterior = ldm.vae.encode(x).latent_dist
    expected = posterior.mean * ldm.vae.config.scaling_factor
    np.testing.assert_allclose(z_mean, expected.numpy(), atol=1e-5)
    # Takagi samples the posterior: the difference from the mean is unit Gaussian noise in posterior-std units
    z = ldm.extract("z", images=images, progress=False)
    noise = (z - z_mean) / (posterior.std.numpy() * ldm.vae.config.scaling_factor)
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05


def test_ldm_z_noise_is_seeded_per_image_not_per_batch(ldm, images):
    one_batch = ldm.extract("z", images=images, batch_size=5, progress=False)
    pairs = ldm.extract("z", images=images, batch_size=2, progress=False)
    np.testing.assert_allclose(pairs, one_batch, atol=1e-5)
    # the same image under another id gets other noise; under its own id, the same value
    stim = Stimuli(images)
    by_id = ldm.extract("z", images=stim, ids=[3, 0], progress=False)
    np.testing.assert_allclose(by_id[0], one_batch[3], atol=1e-5)
    assert np.abs(ldm.extract("z", images=images[[3]], progress=False)[0] - one_batch[3]).max() > 1e-3


def test_ldm_c_is_the_mean_text_embedding_over_captions(ldm):
    c = ldm.extract("c", captions=CAPTIONS, batch_size=2, progress=False)
    assert c.shape == (5, 77, 32)

    def embed(text):
        tokens = ldm.tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        with torch.no_grad():
            return ldm.text_encoder(tokens.input_ids).last_hidden_state[0].numpy()

    np.testing.assert_allclose(c[0], (embed(CAPTIONS[0][0]) + embed(CAPTIONS[0][1])) / 2, atol=1e-5)
    np.testing.assert_allclose(c[1], embed("two dogs"), atol=1e-5)
    np.testing.assert_allclose(c[4], embed("a plate of food"), atol=1e-5)  # the empty caption is skipped
    reordered = ldm.extract("c", captions=[CAPTIONS[2][::-1]], progress=False)
    np.testing.assert_allclose(reordered[0], c[2], atol=1e-5)
    with pytest.raises(ValueError, match="image 7 has no captions"):
        ldm.extract("c", captions=[["a"], [""]], ids=[6, 7], progress=False)


def test_brain_diffuser_embeddings_are_normalised_like_versatile_diffusion(brain_diffuser, images):
    text = brain_diffuser.extract("clip_text", captions=CAPTIONS, progress=False)
    vision = brain_diffuser.extract("clip_vision", images=images, batch_size=2, progress=False)
    assert text.shape == (5, 77, 32) and vision.shape == (5, 65, 32)  # 65 = (32 / 4)^2 patches + class token
    # VD divides every token by the norm of the pooled embedding: the end-of-text token (one caption) and the
    # class token (images) come out unit length
    eot = brain_diffuser.tokenizer(["two dogs"]).input_ids[0].index(brain_diffuser.tokenizer.eos_token_id)
    assert np.linalg.norm(text[1, eot]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vision[:, 0], axis=-1), 1.0, atol=1e-5)
    assert np.abs(np.linalg.norm(vision[:, 1:], axis=-1) - 1).max() > 0.01  # the other tokens are not


def test_targets_from_nsd_stimuli_match_an_array(brain_diffuser, images):
    stim = Stimuli(images)
    from_ids = brain_diffuser.extract("clip_vision", images=stim, ids=[4, 1, 2], batch_size=2, progress=False)
    np.testing.assert_allclose(from_ids, brain_diffuser.extract("clip_vision", images=images[[4, 1, 2]],
                                                                progress=False), atol=1e-5)
    assert stim.reads == [[4, 1], [2]]
    with pytest.raises(ValueError, match="uint8"):
        brain_diffuser.extract("clip_vision", images=images.astype(np.float32), progress=False)
    with pytest.raises(ValueError, match="extracts"):
        brain_diffuser.extract("z", images=images, progress=False)
    with pytest.raises(ValueError, match="captions="):
        brain_diffuser.extract("clip_text", images=images, progress=False)


def test_extractors_save_and_reload_with_their_settings(tmp_path, ldm, images):
    ldm.save_pretrained(tmp_path)
    assert {"vae", "tokenizer", "text_encoder", "target_extractor.json"} <= set(os.listdir(tmp_path))
    reloaded = LDMTargetExtractor.from_pretrained(str(tmp_path), device="cpu")
    assert reloaded.settings() | {"model": None} == ldm.settings() | {"model": None}
    np.testing.assert_allclose(reloaded.extract("z", images=images, progress=False),
                               ldm.extract("z", images=images, progress=False), atol=1e-5)
    np.testing.assert_allclose(reloaded.extract("c", captions=CAPTIONS, progress=False),
                               ldm.extract("c", captions=CAPTIONS, progress=False), atol=1e-6)


def test_brain_diffuser_extractor_save_reload(tmp_path, brain_diffuser, images):
    brain_diffuser.save_pretrained(tmp_path)
    reloaded = BrainDiffuserTargetExtractor.from_pretrained(str(tmp_path), device="cpu")
    np.testing.assert_allclose(reloaded.extract("clip_vision", images=images, progress=False),
                               brain_diffuser.extract("clip_vision", images=images, progress=False), atol=1e-6)


def test_extract_targets_resumes_after_a_kill(tmp_path, ldm, images):
    path = str(tmp_path / "z.npy")
    ids = [4, 0, 3, 1, 2]
    reference = ldm.extract("z", images=images, ids=ids, progress=False)

    calls = []
    original = ldm.iter_batches

    def dies_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(kwargs["ids"].tolist())
        yield from original(*args, **kwargs)

    ldm.iter_batches = dies_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            extract_targets(ldm, "z", path, ids=ids, images=Stimuli(images), batch_size=2, progress=False)
    finally:
        del ldm.iter_batches
    assert not os.path.exists(path) and os.path.exists(path + ".partial.npy")
    assert calls == [[4, 0], [3, 1]]

    stim = Stimuli(images)
    out = extract_targets(ldm, "z", path, ids=ids, images=stim, batch_size=2, progress=False)
    assert stim.reads == [[2]]  # only the unfinished batch
    np.testing.assert_allclose(out, reference, atol=1e-5)
    assert sorted(os.listdir(tmp_path)) == ["z.npy", "z.npy.json"]
    # a finished file is reused; other settings recompute it
    stim.reads.clear()
    extract_targets(ldm, "z", path, ids=ids, images=stim, batch_size=2, progress=False)
    assert stim.reads == []
    other_seed = LDMTargetExtractor(ldm.vae, ldm.tokenizer, ldm.text_encoder, image_size=32, seed=7, device="cpu")
    recomputed = extract_targets(other_seed, "z", path, ids=ids, images=stim, batch_size=2, progress=False)
    assert len(stim.reads) == 3 and np.abs(np.asarray(recomputed) - reference).max() > 1e-3
