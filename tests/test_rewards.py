import sys

import numpy as np
import pytest
import torch

from fgb2i_hf.clip import CLIPScorer
from fgb2i_hf.rewards import (CLIPImageImageReward, CLIPTextImageReward, RewardError, available_rewards,
                              call_reward, get_reward, object_accuracy)

TINY_CLIP = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(0)
    return CLIPScorer.from_config(TINY_CLIP)


@pytest.fixture(scope="module")
def stimuli():
    rng = np.random.default_rng(0)
    return {n: rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for n in (3, 7, 11)}


def test_registered_names():
    assert {"object_accuracy", "clip_text_image", "clip_image_image"} <= set(available_rewards())


def test_object_accuracy_known_answers():
    values = object_accuracy(["a dog next to a car", "a cat", "a street", "two puppies and a sedan"],
                             objects=[["dog", "car"], ["dog"], [], ["dog", "car", "person"]])
    assert values == pytest.approx([1.0, 0.0, 1.0, 0.8])


def test_get_reward_by_name_and_by_import_path(tmp_path, monkeypatch):
    assert get_reward("object_accuracy") is object_accuracy
    (tmp_path / "my_rewards.py").write_text(
        "def length(completions, scale=1.0, **kw):\n    return [scale * len(c) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = get_reward("my_rewards:length", scale=2.0)
    assert fn(completions=["ab", "abc"]) == [4.0, 6.0]
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        get_reward("nope")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        get_reward("my_rewards:missing")
    with pytest.raises(ValueError, match="cannot import module"):
        get_reward("no_such_module_xyz:f")
    sys.modules.pop("my_rewards", None)


@pytest.mark.parametrize(
    "fn, message",
    [
        (lambda completions, **kw: 1 / 0, "reward 'bad' raised ZeroDivisionError"),
        (lambda completions, **kw: [1.0], "reward 'bad' returned 1 values for 2 completions"),
        (lambda completions, **kw: [1.0, float("nan")], "reward 'bad' returned nan"),
        (lambda completions, **kw: [1.0, float("inf")], "not finite"),
        (lambda completions, **kw: None, "must return a list of floats"),
        # a dict would become its keys, a string its characters: both refused, as are non-numeric items
        (lambda completions, **kw: {0.5: "a", 1.0: "b"}, r"must return a list of floats, got dict"),
        (lambda completions, **kw: "11", r"must return a list of floats, got str"),
        (lambda completions, **kw: ["1", "0"], r"must return floats, got str at position 0: '1'"),
        (lambda completions, **kw: np.array([[1.0, 2.0]]), r"must return a 1-D list of floats, got shape \(1, 2\)"),
    ],
)
def test_call_reward_names_the_failing_reward(fn, message):
    with pytest.raises(RewardError, match=message):
        call_reward("bad", fn, ["a", "b"])


def test_call_reward_accepts_lists_tuples_arrays_and_tensors():
    import torch

    for values in ([1, 0.5], (1.0, 0.5), np.array([1.0, 0.5], np.float32), torch.tensor([1.0, 0.5]), [True, 0.5]):
        np.testing.assert_array_equal(call_reward("ok", lambda completions, **kw: values, ["a", "b"]), [1.0, 0.5])


def test_call_reward_passes_columns():
    values = call_reward("object_accuracy", object_accuracy, ["a dog", "a cat"], objects=[["dog"], ["dog"]],
                         nsd_id=[1, 2])
    np.testing.assert_allclose(values, [1.0, 0.0])


def test_clip_text_image_is_the_clip_cosine_and_caches_images(scorer, stimuli):
    reward = CLIPTextImageReward(clip=scorer, stimuli=stimuli)
    calls = []
    original = scorer.encode_images
    scorer.encode_images = lambda images, **kw: calls.append(len(images)) or original(images, **kw)
    try:
        got = reward(["a dog", "a red car", "a dog"], nsd_id=[3, 7, 3])
        again = reward(["a cat"], nsd_id=[7])
    finally:
        scorer.encode_images = original
    expected = (scorer.encode_text(["a dog", "a red car", "a dog"])
                * scorer.encode_images(np.stack([stimuli[3], stimuli[7], stimuli[3]]))).sum(-1)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert calls == [2]  # ids 3 and 7 embedded once; the second call hit the cache
    assert len(again) == 1


def test_clip_text_image_prefers_the_images_column(scorer, stimuli):
    reward = CLIPTextImageReward(clip=scorer)  # no stimuli source
    images = [stimuli[11], stimuli[11]]
    got = reward(["a", "b"], nsd_id=[11, 11], images=images)
    assert got[0] != pytest.approx(got[1])  # different texts, same image
    with pytest.raises(ValueError, match="needs the stimulus images"):
        CLIPTextImageReward(clip=scorer)(["a"], nsd_id=[99])


def test_clip_image_image_planted_renderer(scorer, stimuli):
    # A renderer that "draws" the stimulus itself must get cosine 1; one that draws noise gets less.
    by_caption = {"caption of 3": stimuli[3], "caption of 7": stimuli[7]}
    perfect = CLIPImageImageReward(renderer=lambda prompts: np.stack([by_caption[p] for p in prompts]),
                                   clip=scorer, stimuli=stimuli)
    np.testing.assert_allclose(perfect(["caption of 3", "caption of 7"], nsd_id=[3, 7]), [1.0, 1.0], atol=1e-5)
    swapped = perfect(["caption of 7", "caption of 3"], nsd_id=[3, 7])
    assert max(swapped) < 0.9999


def test_clip_image_image_renders_each_caption_once_and_keeps_the_values(scorer, stimuli):
    rendered = []

    def renderer(prompts):  # deterministic per caption, as TextToImageRenderer is
        rendered.extend(prompts)
        return np.stack([np.random.default_rng(len(p)).integers(0, 255, (32, 32, 3), dtype=np.uint8)
                         for p in prompts])

    cached = CLIPImageImageReward(renderer=renderer, clip=scorer, stimuli=stimuli, cache_size=2)
    uncached = CLIPImageImageReward(renderer=renderer, clip=scorer, stimuli=stimuli, cache_size=0)
    captions, ids = ["a dog", "a red car", "a dog", "a red car"], [3, 7, 7, 3]
    first = cached(captions, nsd_id=ids)
    assert rendered == ["a dog", "a red car"]  # distinct captions only
    again = cached(captions[::-1], nsd_id=ids[::-1])
    assert rendered == ["a dog", "a red car"]  # all cached
    np.testing.assert_allclose(again[::-1], first, rtol=1e-6)
    rendered.clear()
    np.testing.assert_allclose(uncached(captions, nsd_id=ids), first, rtol=1e-5, atol=1e-6)
    assert rendered == ["a dog", "a red car"]  # no cache: still each distinct caption of a call once
    uncached(captions, nsd_id=ids)
    assert rendered == ["a dog", "a red car"] * 2  # ...but again in the next call
    rendered.clear()
    cached(["a cat"], nsd_id=[3])  # evicts the least recently used ("a red car"; "a dog" was used last)
    assert [key[0] for key in cached.cache.entries] == ["a dog", "a cat"]
    cached(["a red car"], nsd_id=[3])
    assert rendered == ["a cat", "a red car"]
    with pytest.raises(ValueError, match="cache_size"):
        CLIPImageImageReward(renderer=renderer, clip=scorer, cache_size=-1)


def test_the_clip_rewards_embed_each_caption_once_per_model(scorer, stimuli):
    """clip_text_image and a surrogate-mode clip_image_image both need CLIP_text of the same samples: the text
    embeddings are cached per (CLIP model, caption), so a step embeds each distinct caption once."""
    from fgb2i_hf.rewards import text_embeddings

    calls = []
    original = scorer.encode_text
    scorer.encode_text = lambda texts, **kw: calls.append(list(texts)) or original(texts, **kw)
    try:
        reward = CLIPTextImageReward(clip=scorer, stimuli=stimuli)
        first = reward(["a blue kite", "a green kite", "a blue kite"], nsd_id=[3, 7, 11])
        again = text_embeddings(scorer, ["a green kite", "a blue kite"])
    finally:
        scorer.encode_text = original
    assert calls == [["a blue kite", "a green kite"]]  # the repeated caption and the second call: no new embedding
    assert first[0] != pytest.approx(first[2])  # one caption, two stimuli: two scores
    torch.testing.assert_close(again, original(["a green kite", "a blue kite"]), atol=1e-6, rtol=1e-5)
