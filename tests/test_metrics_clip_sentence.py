"""CLIP-S / RefCLIP-S (Hessel et al. 2021) and sentence similarity (MindEye2) against hand computations."""

import math

import numpy as np
import pytest
import torch

from fgb2i_hf.clip import CLIPScorer
from fgb2i_hf.metrics import clip_score, clip_score_per_caption, sentence_similarity

TINY_CLIP = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


class PlantedScorer:
    """A stand-in CLIPScorer with planted unit embeddings: texts by their exact (prefixed) string, images by index."""

    def __init__(self, texts: dict, images: list):
        self.texts = {k: torch.tensor(v, dtype=torch.float32) for k, v in texts.items()}
        self.images = torch.tensor(images, dtype=torch.float32)

    def encode_text(self, texts):
        return torch.stack([self.texts[t] for t in texts])

    def encode_images(self, images):
        return self.images[torch.as_tensor(images)]


def test_clip_s_and_refclip_s_planted():
    p = "A photo depicts "
    texts = {p + "c0": [1, 0, 0], p + "c1": [0, 1, 0], p + "c2": [0, 0, 1],
             p + "r00": [0, 1, 0], p + "r01": [0.8, 0.6, 0], p + "r10": [0, 1, 0], p + "r20": [0, 0, -1]}
    images = [[0.6, 0.8, 0], [0, -1, 0], [0, 0, 1]]
    scorer = PlantedScorer(texts, images)
    per = clip_score_per_caption(["c0", "c1", "c2"], [0, 1, 2], [["r00", "r01"], ["r10"], ["r20"]], scorer=scorer)
    # CLIP-S = 2.5 max(cos, 0): cos 0.6, -1 (clipped), 1.
    torch.testing.assert_close(per["CLIP-S"], torch.tensor([1.5, 0.0, 2.5]))
    # RefCLIP-S = H-mean(CLIP-S, max(max_r cos, 0)): H(1.5, 0.8); H(0, 1) = 0; H(2.5, max(-1, 0) = 0) = 0.
    torch.testing.assert_close(per["RefCLIP-S"], torch.tensor([2 * 1.5 * 0.8 / 2.3, 0.0, 0.0]))
    corpus = clip_score(["c0", "c1", "c2"], [0, 1, 2], [["r00", "r01"], ["r10"], ["r20"]], scorer=scorer)
    assert corpus["CLIP-S"] == pytest.approx(4.0 / 3) and corpus["RefCLIP-S"] == pytest.approx(2 * 1.2 / 2.3 / 3)
    assert "RefCLIP-S" not in clip_score(["c0"], [0], scorer=scorer)


def test_clip_s_with_tiny_clip_matches_hand_computation():
    torch.manual_seed(0)
    scorer = CLIPScorer.from_config(TINY_CLIP)
    images = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    captions = ["a dog on the grass", "two red cars", "a bowl of fruit"]
    refs = [["a puppy outside", "grass and a dog"], ["cars parked"], ["fruit in a bowl", "apples", "a kitchen"]]
    out = clip_score(captions, images, refs, scorer=scorer)

    t = scorer.encode_text(["A photo depicts " + c for c in captions])
    v = scorer.encode_images(images)
    cos = (t * v).sum(-1)
    clip_s = [2.5 * max(float(c), 0.0) for c in cos]
    text_sims = [max(float(x) for x in scorer.encode_text(["A photo depicts " + r for r in rs]) @ t[i])
                 for i, rs in enumerate(refs)]
    ref_s = [0.0 if a + max(b, 0) == 0 else 2 * a * max(b, 0) / (a + max(b, 0)) for a, b in zip(clip_s, text_sims)]
    assert out["CLIP-S"] == pytest.approx(sum(clip_s) / 3, abs=1e-6)
    assert out["RefCLIP-S"] == pytest.approx(sum(ref_s) / 3, abs=1e-6)


def test_clip_score_bad_input():
    scorer = PlantedScorer({"A photo depicts a": [1, 0]}, [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="1 predictions but 2 images"):
        clip_score(["a"], [0, 1], scorer=scorer)
    with pytest.raises(ValueError, match="1 predictions but 2 reference"):
        clip_score(["a"], [0], [["a"], ["b"]], scorer=scorer)


def test_sentence_similarity_with_a_callable_encoder():
    vectors = {"a": [1.0, 0.0], "b": [0.0, 2.0], "c": [3.0, 3.0]}
    encoder = lambda texts: np.array([vectors[t] for t in texts])  # noqa: E731
    # cos(a, c) = 1/sqrt(2); cos(b, b) = 1; with two references the cosines are averaged: (cos(a,a) + cos(a,b)) / 2.
    assert sentence_similarity(["a", "b"], ["c", "b"], encoder=encoder) == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert sentence_similarity(["a"], [["a", "b"]], encoder=encoder) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        sentence_similarity(["a", "b"], ["c"], encoder=encoder)


def test_sentence_similarity_with_a_tiny_sentence_transformer(tmp_path):
    from sentence_transformers import SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = "[PAD] [UNK] [CLS] [SEP] [MASK] a the dog cat runs on grass red car two sits".split()
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(tmp_path)
    encoder = SentenceTransformer(modules=[Transformer(str(tmp_path)), Pooling(16)], device="cpu")

    preds, refs = ["a dog runs on the grass", "two red car"], ["the cat sits", "a red car"]
    e_p = encoder.encode(preds, convert_to_numpy=True)
    e_r = encoder.encode(refs, convert_to_numpy=True)
    e_p /= np.linalg.norm(e_p, axis=1, keepdims=True)
    e_r /= np.linalg.norm(e_r, axis=1, keepdims=True)
    expected = float(np.mean(np.sum(e_p * e_r, axis=1)))
    assert sentence_similarity(preds, refs, encoder=encoder) == pytest.approx(expected, abs=1e-6)
    assert sentence_similarity(preds, preds, encoder=encoder) == pytest.approx(1.0, abs=1e-6)
