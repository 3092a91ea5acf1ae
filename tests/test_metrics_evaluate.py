"""Our evaluate modules load offline by path and give the library functions' numbers."""

import os

import numpy as np
import pytest
import torch

import evaluate
from fgb2i_hf.clip import CLIPScorer
from fgb2i_hf.metrics import (EVALUATE_MODULES, caption_metrics, clip_score, evaluate_module_path,
                              evaluate_module_paths, load_feature_models, object_metrics, reconstruction_metrics,
                              sentence_similarity)

TINY_CLIP = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
PREDICTIONS = ["A dog runs on the grass.", "two cats sleeping on a red couch", "a bus near a stop sign"]
REFERENCES = [["A brown dog running across a field.", "A dog on the grass."],
              ["Two cats asleep on a sofa.", "Cats napping on a red couch."],
              ["A red bus drives past a stop sign.", "A bus at a stop sign.", "A city bus."]]


def test_every_module_loads_offline_by_path():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    paths = evaluate_module_paths()
    assert list(paths) == list(EVALUATE_MODULES)
    for name, path in paths.items():
        module = evaluate.load(path)
        assert isinstance(module, evaluate.Metric), name
        assert evaluate.load(os.path.dirname(path)).name == module.name  # the folder works too
    with pytest.raises(ValueError, match="unknown evaluate module"):
        evaluate_module_path("bleu")


def test_caption_module_matches_library():
    module = evaluate.load(evaluate_module_path("caption_metrics"))
    kwargs = dict(metrics=["BLEU", "ROUGE-L", "CIDEr"], tokenizer="python")  # METEOR: tested against the jar elsewhere
    got = module.compute(predictions=PREDICTIONS, references=REFERENCES, **kwargs)
    assert got == caption_metrics(PREDICTIONS, REFERENCES, **kwargs)
    assert set(got) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"}


def test_object_module_matches_library():
    module = evaluate.load(evaluate_module_path("object_metrics"))
    objects = [["dog"], ["cat", "couch"], ["bus", "stop sign", "car"]]
    got = module.compute(predictions=PREDICTIONS, references=objects)
    assert got == object_metrics(PREDICTIONS, objects)
    assert got["recall"] == pytest.approx(5 / 6)


def test_clip_and_sentence_modules_match_library():
    torch.manual_seed(0)
    scorer = CLIPScorer.from_config(TINY_CLIP)
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    module = evaluate.load(evaluate_module_path("clip_score"))
    got = module.compute(predictions=PREDICTIONS, references=REFERENCES, images=images, scorer=scorer)
    assert got == pytest.approx(clip_score(PREDICTIONS, images, REFERENCES, scorer=scorer), abs=1e-7)

    encoder = lambda texts: np.array([[len(t), t.count("a"), t.count("o") + 1.0] for t in texts])  # noqa: E731
    module = evaluate.load(evaluate_module_path("sentence_similarity"))
    singles = [r[0] for r in REFERENCES]
    assert module.compute(predictions=PREDICTIONS, references=singles, encoder=encoder) == {
        "sentence_similarity": pytest.approx(sentence_similarity(PREDICTIONS, singles, encoder=encoder))}
    assert module.compute(predictions=PREDICTIONS, references=REFERENCES, encoder=encoder) == {
        "sentence_similarity": pytest.approx(sentence_similarity(PREDICTIONS, REFERENCES, encoder=encoder))}


def test_reconstruction_module_matches_library():
    torch.manual_seed(0)
    models = load_feature_models(["alexnet", "clip"], pretrained=False, clip=CLIPScorer.from_config(TINY_CLIP))
    rng = np.random.default_rng(1)
    gt = rng.random((3, 3, 24, 24), dtype=np.float32)
    pred = np.clip(gt + rng.normal(scale=0.2, size=gt.shape).astype(np.float32), 0, 1)
    chosen = ["PixCorr", "SSIM", "AlexNet(2)", "AlexNet(5)", "CLIP"]
    module = evaluate.load(evaluate_module_path("reconstruction_metrics"))
    got = module.compute(predictions=pred, references=gt, feature_extractors=models, metrics=chosen)
    expected = reconstruction_metrics(gt, pred, models, metrics=chosen, progress=False)
    assert got == pytest.approx(expected, abs=1e-9)
    assert got["PixCorr"] > 0.5  # gt vs noisy gt, not vice versa: the module passes references as ground truth
