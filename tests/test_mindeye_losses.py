"""MindEye's losses, schedules, retrieval metrics and best-of-N on known answers."""

import math

import pytest
import torch
import torch.nn.functional as F

from fgb2i_hf.models.mindeye.losses import (bimixco_epochs, bimixco_loss, low_level_loss, mixco, mixco_targets,
                                            soft_clip_loss, softclip_temperature)
from fgb2i_hf.models.mindeye.retrieval import best_of_n, retrieval_accuracy, top1_identification


def unit(n, d, seed=0):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_softclip_with_identical_embeddings_is_the_target_entropy():
    image = unit(8, 16)
    t = 0.1
    targets = (image @ image.T / t).softmax(-1)
    entropy = -(targets * targets.log()).sum(-1).mean()
    torch.testing.assert_close(soft_clip_loss(image, image, t), entropy, atol=1e-6, rtol=1e-6)
    # identical embeddings minimise the cross-entropy to those targets: any other brain scores worse
    other = F.normalize(image + 0.3 * unit(8, 16, seed=1), dim=-1)
    assert soft_clip_loss(other, image, t) > soft_clip_loss(image, image, t)


def test_bimixco_with_lambda_one_is_the_symmetric_contrastive_loss():
    brain, image = unit(6, 12, 0), unit(6, 12, 1)
    t = 0.006
    logits = brain @ image.T / t
    labels = torch.arange(6)
    clip_loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(bimixco_loss(brain, image, t), clip_loss)
    perm = torch.tensor([3, 0, 1, 5, 2, 4])
    torch.testing.assert_close(bimixco_loss(brain, image, t, perm, torch.ones(6)), clip_loss)
    # with mixing, the targets move mass to the partner's image
    mixed = bimixco_loss(brain, image, t, perm, torch.full((6,), 0.5))
    forward = -(logits.log_softmax(-1) * mixco_targets(perm, torch.full((6,), 0.5))).sum(-1).mean()
    backward = -(logits.T.log_softmax(-1) * mixco_targets(perm, torch.full((6,), 0.5)).T).sum(-1).mean()
    torch.testing.assert_close(mixed, (forward + backward) / 2)


def test_mixco_targets_and_fixed_points():
    perm = torch.tensor([1, 0, 2])  # row 2 is its own partner
    lambdas = torch.tensor([0.7, 0.2, 0.4])
    expected = torch.tensor([[0.7, 0.3, 0.0], [0.8, 0.2, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(mixco_targets(perm, lambdas), expected)


def test_mixco_mixes_a_selection_within_subjects():
    torch.manual_seed(0)
    betas = torch.randn(64, 5)
    groups = ["a"] * 32 + ["b"] * 32
    mixed, perm, lambdas, selected = mixco(betas, groups=groups)
    assert set(perm[:32].tolist()) == set(range(32)) and set(perm[32:].tolist()) == set(range(32, 64))
    torch.testing.assert_close(mixed[~selected], betas[~selected])
    assert torch.all(lambdas[~selected] == 1)
    expected = lambdas[:, None] * betas + (1 - lambdas[:, None]) * betas[perm]
    torch.testing.assert_close(mixed[selected], expected[selected])
    assert 10 < int(selected.sum()) < 54  # select_prob 0.5 of 64 rows
    # Beta(0.15, 0.15) is U-shaped: most lambdas are near 0 or 1
    sel = lambdas[selected]
    assert float(((sel < 0.1) | (sel > 0.9)).float().mean()) > 0.5


def test_softclip_temperature_schedule():
    assert bimixco_epochs(240) == 79  # int(0.33 * 240), MindEye1
    assert softclip_temperature(79, 240) == pytest.approx(0.004)
    assert softclip_temperature(239, 240) == pytest.approx(0.0075)
    mid = softclip_temperature(79 + 80, 240)  # halfway through 161 SoftCLIP epochs: cosine midpoint
    assert mid == pytest.approx((0.004 + 0.0075) / 2, rel=1e-9)
    temps = [softclip_temperature(e, 240) for e in range(79, 240)]
    assert all(b >= a for a, b in zip(temps, temps[1:]))
    with pytest.raises(ValueError, match="not a SoftCLIP epoch"):
        softclip_temperature(10, 240)


def test_low_level_loss_known_answer():
    pred = torch.zeros(2, 4, 8, 8)
    assert float(low_level_loss(pred, pred + 0.18215)) == pytest.approx(1.0)


def test_top1_identification_known_answers():
    image = unit(10, 8)
    assert top1_identification(image, image) == (1.0, 1.0)
    swapped = image[torch.tensor([1, 0, 2, 3, 4, 5, 6, 7, 8, 9])]
    assert top1_identification(swapped, image) == pytest.approx((0.8, 0.8))
    with pytest.raises(ValueError, match="same shape"):
        top1_identification(image, image[:, :4])


def test_retrieval_accuracy_batches():
    torch.manual_seed(0)
    image = unit(500, 32)
    brain = F.normalize(image + 0.05 * torch.randn(500, 32), dim=-1)
    scores = retrieval_accuracy(brain, image, batch_size=300, num_loops=5, seed=1)
    assert scores["batch_size"] == 300 and scores["num_loops"] == 5 and scores["chance"] == pytest.approx(1 / 300)
    assert scores["image_retrieval"] > 0.95 and scores["brain_retrieval"] > 0.95
    control = retrieval_accuracy(brain[torch.randperm(500)], image, batch_size=300, num_loops=5, seed=1)
    assert control["image_retrieval"] < 0.02
    small = retrieval_accuracy(brain[:40], image[:40])
    assert small["batch_size"] == 40 and small["num_loops"] == 1 and small["image_retrieval"] == 1.0
    tokens = retrieval_accuracy(brain.view(500, 4, 8), image.view(500, 4, 8), batch_size=300, num_loops=5, seed=1)
    assert tokens["image_retrieval"] == scores["image_retrieval"]  # (N, tokens, dim) are flattened


def test_best_of_n_picks_the_planted_candidate():
    torch.manual_seed(0)
    predicted = torch.randn(3, 5, 4)
    candidates = torch.randn(3, 16, 5, 4)
    best = torch.tensor([7, 0, 15])
    for i, k in enumerate(best):
        candidates[i, k] = 2.5 * predicted[i] + 0.01 * torch.randn(5, 4)  # cosine ~1, whatever the scale
    assert torch.equal(best_of_n(candidates, predicted), best)
    candidates[1, 3] = 0.0  # an all-zero candidate gives NaN similarity and never wins
    assert torch.equal(best_of_n(candidates, predicted), best)
    with pytest.raises(ValueError, match=r"candidate_embeds must be \(N, k, \.\.\.\)"):
        best_of_n(candidates[:, :, :4], predicted)
    assert math.isclose(float(F.cosine_similarity(candidates[0, 7].flatten(), predicted[0].flatten(), dim=0)), 1.0,
                        abs_tol=1e-3)
