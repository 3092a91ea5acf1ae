import numpy as np
import pytest
import torch

from fgb2i_hf.rl import EpochShuffleSampler, ReinforceConfig, advantages, sequence_mask


def test_sequence_mask_keeps_tokens_through_the_first_eos():
    eos = 9
    tokens = torch.tensor([[1, 2, 9, 9, 9], [1, 9, 3, 9, 4], [1, 2, 3, 4, 5], [9, 1, 1, 1, 1]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert torch.equal(sequence_mask(tokens, eos), expected)


def test_advantage_baselines_known_answers():
    r = np.array([1.0, 2.0, 3.0, 10.0, 10.0, 40.0])  # two brains, K = 3
    np.testing.assert_allclose(advantages(r, 3, "none"), r)
    np.testing.assert_allclose(advantages(r, 3, "greedy", greedy=np.array([2.0, 20.0])),
                               [-1, 0, 1, -10, -10, 20])
    # leave-one-out: r_k - mean(other two)
    np.testing.assert_allclose(advantages(r, 3, "leave_one_out"), [-1.5, 0, 1.5, -15, -15, 30])
    with pytest.raises(ValueError, match="greedy"):
        advantages(r, 3, "greedy")


def test_leave_one_out_advantages_sum_to_zero_per_brain():
    r = np.random.default_rng(0).normal(size=4 * 5)
    a = advantages(r, 5, "leave_one_out").reshape(4, 5)
    np.testing.assert_allclose(a.sum(1), 0, atol=1e-12)


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    first = list(a)
    assert sorted(first) == list(range(50))
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rewards=["object_accuracy"], reward_weights=[1.0, 2.0]), "2 values for 1 rewards"),
        (dict(baseline="mean"), "baseline must be one of"),
        (dict(baseline="leave_one_out", num_samples=1), "num_samples >= 2"),
        (dict(rewards=["object_accuracy"], reward_weights=[1.0], reward_kwargs={"clip_text_image": {}}),
         "not in rewards"),
    ],
)
def test_config_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReinforceConfig(**kwargs)


def test_config_parses_reward_kwargs_json():
    cfg = ReinforceConfig(rewards=["clip_text_image"], reward_weights=[0.5],
                          reward_kwargs='{"clip_text_image": {"clip": "simnsd/clip"}}')
    assert cfg.reward_kwargs == {"clip_text_image": {"clip": "simnsd/clip"}}
