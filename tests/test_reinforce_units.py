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
        # every field is checked when the config is made, before any data is built (issue 13)
        (dict(learning_rate=-1e-3), r"learning_rate must be > 0, got -0\.001"),
        (dict(learning_rate=0.0), r"learning_rate must be > 0"),
        (dict(weight_decay=-0.1), r"weight_decay must be >= 0"),
        (dict(per_device_train_batch_size=0), r"per_device_train_batch_size must be >= 1"),
        (dict(gradient_accumulation_steps=0), r"gradient_accumulation_steps must be >= 1"),
        (dict(num_train_epochs=0), r"num_train_epochs must be > 0"),
        (dict(max_steps=0), r"max_steps must be a positive number of steps, or -1"),
        (dict(temperature=0.0), r"temperature must be > 0"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-1), r"top_k must be >= 0"),
        (dict(max_new_tokens=0), r"max_new_tokens must be >= 1"),
        (dict(kl_coef=-1.0), r"kl_coef must be >= 0"),
        (dict(ce_weight=float("nan")), r"ce_weight must be a finite number, got nan"),
        (dict(reward_weights=[0.01, float("inf"), 0.01]), r"reward_weights must be finite numbers"),
        (dict(logging_steps=0), r"logging_steps must be >= 1"),
        (dict(save_steps=-1), r"save_steps must be >= 0"),
        (dict(max_grad_norm=-1.0), r"max_grad_norm must be >= 0"),
        (dict(warmup_steps=-1), r"warmup_steps must be >= 0"),
        (dict(lr_scheduler_type="cosine_restart"), r"lr_scheduler_type must be one of .*'constant_with_warmup'"),
        (dict(caption_column="coco"), r"caption_column must be one of"),
        (dict(rewards=[3], reward_weights=[1.0]), r"rewards must be a list of reward names"),
    ],
)
def test_config_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReinforceConfig(**kwargs)


def test_config_takes_a_single_reward_as_a_list_of_one():
    cfg = ReinforceConfig(rewards="object_accuracy", reward_weights=0.5, report_to="none")
    assert cfg.rewards == ["object_accuracy"] and cfg.reward_weights == [0.5] and cfg.report_to == []
    assert ReinforceConfig(rewards=[], reward_weights=[]).rewards == []  # no reward: the CE-only control


def test_config_parses_reward_kwargs_json():
    cfg = ReinforceConfig(rewards=["clip_text_image"], reward_weights=[0.5],
                          reward_kwargs='{"clip_text_image": {"clip": "simnsd/clip"}}')
    assert cfg.reward_kwargs == {"clip_text_image": {"clip": "simnsd/clip"}}


def _rl_recipe_arguments():
    from fgb2i_hf.drivers.rl import RLScriptArguments

    return RLScriptArguments


def test_rl_recipe_config_is_checked_when_parsed(tmp_path):
    """`subjects: subj01` (a string) is one subject, not six; a bad value stops at parsing, before any data."""
    import yaml
    from trl import TrlParser

    RLScriptArguments = _rl_recipe_arguments()
    path = tmp_path / "rl.yaml"
    settings = dict(model_name_or_path="stage1", nsd_root=str(tmp_path / "nsd"), subjects="subj01",
                    output_dir=str(tmp_path / "out"))
    path.write_text(yaml.safe_dump(settings))
    script, config = TrlParser((RLScriptArguments, ReinforceConfig)).parse_args_and_config(args=["--config", str(path)])
    assert script.subjects == ["subj01"]
    path.write_text(yaml.safe_dump({**settings, "learning_rate": -1e-3}))
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        TrlParser((RLScriptArguments, ReinforceConfig)).parse_args_and_config(args=["--config", str(path)])
    assert not (tmp_path / "out").exists()
    for bad, message in [(dict(subjects=["subj1x"]), r"subjects: unknown subject 'subj1x'"),
                         (dict(subjects=[]), r"subjects is empty"),
                         (dict(subjects=["subj01", "subj01"]), r"subjects listed twice"),
                         (dict(sessions=0), r"sessions must be >= 1"),
                         (dict(render_steps=0), r"render_steps must be >= 1"),
                         (dict(max_train_rows=0), r"max_train_rows must be >= 1"),
                         (dict(eval_references="coco"), r"eval_references must be one of")]:
        with pytest.raises(ValueError, match=message):
            RLScriptArguments(**bad)


def test_every_config_with_subjects_takes_one_name_as_one_subject(tmp_path):
    """A YAML `subjects: subj01` is one subject everywhere (it was six, ['0', '1', 'b', 'j', 's', 'u'], in some)."""
    from fgb2i_hf.drivers.caption_eval import EvaluateCaptionsArguments
    from fgb2i_hf.drivers.fit import FitDecodersConfig
    from fgb2i_hf.drivers.ce import CEScriptArguments

    RLScriptArguments = _rl_recipe_arguments()
    made = [RLScriptArguments(subjects="subj01"), CEScriptArguments(subjects="subj01"),
            FitDecodersConfig(nsd_root="nsd", output_dir=str(tmp_path), subjects="subj01"),
            EvaluateCaptionsArguments(subjects="subj01")]
    assert [m.subjects for m in made] == [["subj01"]] * 4
    assert CEScriptArguments(subjects=[1, "subj2"]).subjects == ["subj01", "subj02"]
    with pytest.raises(ValueError, match=r"subjects: unknown subject 'subj9'"):
        FitDecodersConfig(nsd_root="nsd", output_dir=str(tmp_path), subjects=["subj9"])
