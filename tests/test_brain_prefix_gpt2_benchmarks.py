"""Smoke runs of the BrainPrefixGPT2 benchmarks (their figures are printed, never asserted), with known answers:
ClipCap's decoding and ours give the same captions, and a step's FLOPs are ~2x (frozen GPT-2) or ~3x (trained
GPT-2) the forward pass's."""

import importlib.util
import pathlib

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decoding_benchmark_quick_run_gives_the_same_captions_both_ways():
    bench = _load("bench_decoding")
    results = bench.main(["--quick", "--brains", "2", "--entry-length", "4"])
    for mode in ("beam", "beam_unpacked", "beam_hf", "greedy"):
        assert results[mode]["identical"] == 2, mode
        assert results[mode]["mean_tokens"] == 4  # random weights: no "." before the limit
        assert results[mode]["speedup"] > 0
    assert results["fast_vs_hf"]["identical"] == 2  # the fast beam search and transformers' agree


def test_clipcap_beam_keeps_a_stopped_beam_in_its_slot():
    """The reimplemented generate_beam: a beam that emitted the stop token keeps its normalised score and length."""
    import torch

    bench = _load("bench_decoding")

    class Uniform(torch.nn.Module):  # a language model that always prefers token 3, then 2, then 1
        def __init__(self):
            super().__init__()
            self.transformer = type("T", (), {"wte": torch.nn.Embedding(5, 2)})()

        def forward(self, inputs_embeds):
            logits = torch.tensor([0.0, 1.0, 2.0, 3.0, -9.0]).expand(*inputs_embeds.shape[:2], 5)
            return type("O", (), {"logits": logits})()

    out = bench.clipcap_generate_beam(Uniform(), torch.zeros(1, 2, 2), beam_size=2, entry_length=4, stop_token=3)
    # step 1: beams [3] (stopped at once, score log p(3)) and [2]; the stopped one never grows
    assert out[0][0] == [3]
    assert out[1][0] == [2, 3]
    logp = torch.tensor([0.0, 1.0, 2.0, 3.0, -9.0]).log_softmax(-1)
    assert out[0][1] == pytest.approx(float(logp[3]))
    assert out[1][1] == pytest.approx(float(logp[2] + logp[3]) / 2)


def test_train_step_benchmark_counts_flops_of_frozen_and_trained_language_models():
    bench = _load("bench_train_step")
    small = ["--quick", "--steps", "1", "--warmup", "0", "--batch", "4", "--caption-tokens", "8"]
    frozen = bench.main(small)
    trained = bench.main(small + ["--train-lm"])
    assert 1.9 < frozen["step_flops"] / frozen["forward_flops"] < 2.3
    assert 2.9 < trained["step_flops"] / trained["forward_flops"] < 3.1
    assert frozen["trainable_params"] < trained["trainable_params"] == trained["total_params"]
    assert 0 < frozen["mfu"] and frozen["samples_per_s"] > 0
