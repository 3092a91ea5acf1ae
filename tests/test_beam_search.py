"""The fast beam search (beam_search.py) against transformers' own, on tiny random models.

Bit-exactness does not hold by construction: the two paths run GPT-2 through different kernels (the prefix once per
brain rather than once per beam, so matrix products of another shape; keys and values read from strided views of one
buffer; the tanh GELU as one fused kernel), so logits agree to ~1e-6, not bitwise. Tokens are compared exactly (a
difference that large never reorders these models' candidates), scores with ``assert_close`` (SCORE_TOL); a row whose
tokens differ is accepted only as a tie: both hypotheses, re-scored by one full forward pass, within that tolerance.
"""

import pytest
import torch

from fgb2i_hf.models.brain_prefix_gpt2.beam_search import (
    BeamKVCache,
    _inherit_rows,
    beam_search,
    greedy_search,
    resolve_generation_config,
)
from fgb2i_hf.testing import random_betas, tiny_brain_prefix_gpt2

COUNTS = {"subj01": 40, "subj02": 56}
# float32 through two kernel paths: measured differences up to 1.4e-5 on log-probs of magnitude ~10 (4 x 128 model)
# and 2e-7 relative on sequence scores of magnitude ~200 (length_penalty=-1)
SCORE_TOL = dict(atol=1e-4, rtol=1e-5)


def _model(seed=0, eos_scale=3.0, **gpt2_overrides):
    """Tiny model whose eos embedding is scaled, so that eos competes in the beams (some hypotheses end early)."""
    model, tok = tiny_brain_prefix_gpt2(COUNTS, seed=seed, gpt2_overrides=gpt2_overrides or None)
    with torch.no_grad():
        model.gpt2.transformer.wte.weight[tok.eos_token_id] *= eos_scale
    return model, tok


def _cut(row, eos_ids, limit):
    ends = [i for i, t in enumerate(row) if t in eos_ids]
    return row[: ends[0] + 1] if ends else row[:limit]


@torch.no_grad()
def _rescore(model, prefix, tokens, length_penalty):
    """sum log p(tokens | prefix) / len(tokens) ** length_penalty by one full forward pass (HF's beam score)."""
    ids = torch.tensor([tokens])
    logits = model(prefix_embeds=prefix[None], input_ids=ids).logits[0, prefix.shape[0] - 1 : -1]
    return float(logits.log_softmax(-1).gather(1, ids[0][:, None]).sum()) / len(tokens) ** length_penalty


def _assert_same_beams(model, prefix, hf, fast, eos_ids, limit, length_penalty, nrs):
    torch.testing.assert_close(fast.sequences_scores, hf.sequences_scores, **SCORE_TOL)
    assert len(fast.scores) == len(hf.scores)
    for a, b in zip(fast.scores, hf.scores):  # per-step log-probs (B * num_beams, V), in HF's beam order
        torch.testing.assert_close(a, b, **SCORE_TOL)
    hf_rows = [_cut(r, eos_ids, limit) for r in hf.sequences.tolist()]
    fast_rows = [_cut(r, eos_ids, limit) for r in fast.sequences.tolist()]
    close = dict(abs=SCORE_TOL["atol"], rel=SCORE_TOL["rtol"])
    for i, (a, b) in enumerate(zip(fast_rows, hf_rows)):
        score = _rescore(model, prefix[i // nrs], a, length_penalty)
        # every returned score is the hypothesis' own: an independent check of the bookkeeping
        assert score == pytest.approx(float(fast.sequences_scores[i]), **close)
        if a != b:  # only a tie may reorder hypotheses
            assert score == pytest.approx(_rescore(model, prefix[i // nrs], b, length_penalty), **close)
    same = sum(a == b for a, b in zip(fast_rows, hf_rows))
    assert same >= len(hf_rows) - 1  # a tie is rare (none in these tests as written: all rows equal)
    if same == len(hf_rows):
        assert torch.equal(fast.sequences, hf.sequences) and torch.equal(fast.beam_indices, hf.beam_indices)


CASES = {  # batch, subjects, generate kwargs
    "beam3": (3, dict(num_beams=3)),
    "one_brain_beam2": (1, dict(num_beams=2)),
    "beam4_return2": (5, dict(num_beams=4, num_return_sequences=2)),
    "beam5_return5_lp2_never": (4, dict(num_beams=5, num_return_sequences=5, length_penalty=2.0,
                                        early_stopping="never")),
    "beam3_lp0.5_early": (6, dict(num_beams=3, length_penalty=0.5, early_stopping=True)),
    "beam4_lp-1": (3, dict(num_beams=4, num_return_sequences=3, length_penalty=-1.0)),
    "beam3_never_lp0": (3, dict(num_beams=3, early_stopping="never", length_penalty=0.0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_beam_search_equals_transformers(case):
    batch, kwargs = CASES[case]
    model, tok = _model(seed=len(case))
    subjects = (["subj01", "subj02"] * batch)[:batch]  # mixed subjects in one batch
    betas = random_betas(COUNTS, subjects, seed=batch)
    prefix = model.encode_brain(betas, subjects)
    common = dict(betas=betas, subject=subjects, max_new_tokens=14, return_dict_in_generate=True, output_scores=True,
                  **kwargs)
    hf = model.generate(beam_impl="hf", **common)
    fast = model.generate(beam_impl="fast", **common)
    _assert_same_beams(model, prefix, hf, fast, {tok.eos_token_id}, 14, kwargs.get("length_penalty", 1.0),
                              kwargs.get("num_return_sequences", 1))
    # control: eos competed (it was among the num_beams best continuations of a running beam at some step)
    beams = kwargs["num_beams"]
    assert any((step.topk(beams).indices == tok.eos_token_id).any() for step in hf.scores), case


def test_two_stop_tokens_and_plain_tensor_output():
    """A list of eos ids (beams_to_keep = 3 * num_beams) and the default output; pad 0 = eos 0 makes transformers
    pad with the first eos id, and the fast path does the same."""
    model, tok = _model(seed=3)
    subjects = ["subj02", "subj01", "subj02", "subj01"]
    betas = random_betas(COUNTS, subjects, seed=4)
    greedy = model.generate(betas=betas, subject=subjects, max_new_tokens=10)[0].tolist()
    stops = [greedy[2], tok.eos_token_id]
    kwargs = dict(betas=betas, subject=subjects, num_beams=4, num_return_sequences=2, max_new_tokens=12,
                  eos_token_id=stops)
    hf, fast = model.generate(beam_impl="hf", **kwargs), model.generate(beam_impl="fast", **kwargs)
    assert torch.equal(fast, hf)
    assert any(stops[0] in r for r in fast.tolist())  # control: the extra stop token ends some hypotheses
    assert model.generate(**kwargs).data_ptr() != hf.data_ptr() and torch.equal(model.generate(**kwargs), hf)  # auto


def test_wider_model_and_captions():
    """4 layers x 128 (several heads, a longer search), through generate_captions."""
    model, tok = _model(seed=5, eos_scale=2.0, n_layer=4, n_embd=128, n_head=4)
    subjects = ["subj01", "subj02", "subj02", "subj01"]
    betas = random_betas(COUNTS, subjects, seed=9)
    kwargs = dict(num_beams=5, max_new_tokens=16, return_dict_in_generate=True, output_scores=True)
    hf = model.generate(betas=betas, subject=subjects, beam_impl="hf", **kwargs)
    fast = model.generate(betas=betas, subject=subjects, beam_impl="fast", **kwargs)
    prefix = model.encode_brain(betas, subjects)
    _assert_same_beams(model, prefix, hf, fast, {tok.eos_token_id}, 16, 1.0, 1)
    # torch's default matrix product instead of oneDNN-packed weights: same beams
    config, _ = resolve_generation_config(model.gpt2, dict(kwargs, pad_token_id=tok.eos_token_id))
    unpacked = beam_search(model.gpt2, prefix, config, pack_weights=False)
    _assert_same_beams(model, prefix, hf, unpacked, {tok.eos_token_id}, 16, 1.0, 1)
    assert model.generate_captions(betas, subjects, tok, num_beams=5, max_new_tokens=16) == \
        model.generate_captions(betas, subjects, tok, num_beams=5, max_new_tokens=16, beam_impl="hf")


def test_fast_beam_search_runs_lora_layers():
    """The fast path calls GPT-2's modules, so peft's LoRA wrappers apply."""
    model, tok = _model(seed=6)
    subjects = ["subj01", "subj02"]
    betas = random_betas(COUNTS, subjects, seed=2)
    kwargs = dict(betas=betas, subject=subjects, num_beams=3, max_new_tokens=10)
    plain = model.generate(**kwargs)
    model.add_lora(r=4, lora_alpha=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.gpt2.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    hf, fast = model.generate(beam_impl="hf", **kwargs), model.generate(beam_impl="fast", **kwargs)
    assert torch.equal(fast, hf)
    assert not torch.equal(fast, plain)  # control: the adapter changes the captions


def test_routing_and_unsupported_settings():
    model, tok = _model(seed=1)
    subjects = ["subj01", "subj02"]
    betas = random_betas(COUNTS, subjects, seed=1)
    base = dict(betas=betas, subject=subjects, max_new_tokens=5)
    for extra, reason in [
        (dict(num_beams=3, no_repeat_ngram_size=2), "no_repeat_ngram_size"),
        (dict(num_beams=3, repetition_penalty=1.3), "repetition_penalty"),
        (dict(num_beams=3, do_sample=True), "do_sample"),
        (dict(do_sample=True), "do_sample"),
        (dict(num_beams=1, repetition_penalty=1.3), "repetition_penalty"),
        (dict(num_beams=3, output_attentions=True), "output_attentions"),
    ]:
        with pytest.raises(ValueError, match=reason):
            model.generate(beam_impl="fast", **base, **extra)
        torch.manual_seed(0)
        auto = model.generate(**base, **extra)  # falls back to transformers
        torch.manual_seed(0)
        assert torch.equal(auto if isinstance(auto, torch.Tensor) else auto.sequences,
                           _seq(model.generate(beam_impl="hf", **base, **extra)))
    # max_length (HF counts the prompt differently for embeddings) and non-generation arguments go to transformers
    assert resolve_generation_config(model.gpt2, dict(num_beams=3, max_length=8))[0] is None
    assert "stopping_criteria" in resolve_generation_config(model.gpt2, dict(num_beams=3, max_new_tokens=4,
                                                                              stopping_criteria=[]))[1]
    assert resolve_generation_config(model.gpt2, dict(num_beams=3, max_new_tokens=4))[1] is None
    # a GPT-2 in training mode with dropout: transformers' path (dropout applies there)
    dropout_model, _ = tiny_brain_prefix_gpt2(COUNTS, gpt2_overrides=dict(resid_pdrop=0.1))
    dropout_model.gpt2.train()
    assert "dropout" in resolve_generation_config(dropout_model.gpt2, dict(num_beams=3, max_new_tokens=4))[1]
    with pytest.raises(ValueError, match="beam_impl must be"):
        model.generate(beam_impl="fastest", **base)


def _seq(out):
    return out if isinstance(out, torch.Tensor) else out.sequences


def _assert_same_greedy(hf, fast):
    """Per-step scores within SCORE_TOL; tokens equal, except a row whose first difference is at a step where the two
    best logits are a tie within that tolerance (the two paths run other kernels: see the module docstring)."""
    torch.testing.assert_close(torch.stack(fast.scores), torch.stack(hf.scores[: len(fast.scores)]), **SCORE_TOL)
    same = 0
    for i, (a, b) in enumerate(zip(fast.sequences.tolist(), hf.sequences.tolist())):
        if a == b:
            same += 1
            continue
        step = next(t for t, (x, y) in enumerate(zip(a, b)) if x != y)
        top2 = hf.scores[step][i].topk(2).values
        assert float(top2[0] - top2[1]) <= SCORE_TOL["atol"], (i, step)
    assert same >= len(hf.sequences) - 1  # a tie is rare (none in these tests as written: all rows equal)


@pytest.mark.parametrize("seed, kwargs", [
    (2, dict()),
    (3, dict(eos_scale=3.0)),  # eos competes: rows end early and are padded
    (4, dict(eos_scale=3.0, pad=5)),  # padded with another id than eos
    (5, dict(eos_scale=2.0, n_layer=4, n_embd=128, n_head=4)),
])
def test_fast_greedy_equals_transformers(seed, kwargs):
    kwargs = dict(kwargs)
    pad = kwargs.pop("pad", None)
    eos_scale = kwargs.pop("eos_scale", 1.0)
    model, tok = _model(seed=seed, eos_scale=eos_scale, **kwargs)
    subjects = ["subj02", "subj01", "subj01", "subj02", "subj01"]
    betas = random_betas(COUNTS, subjects, seed=seed)
    common = dict(betas=betas, subject=subjects, max_new_tokens=14, return_dict_in_generate=True, output_scores=True,
                  output_logits=True, **({} if pad is None else {"pad_token_id": pad}))
    hf = model.generate(beam_impl="hf", **common)
    fast = model.generate(beam_impl="fast", **common)
    _assert_same_greedy(hf, fast)
    assert len(fast.logits) == len(fast.scores) == fast.sequences.shape[1]
    # beam_impl="auto" runs the same fast path in this process, on the same tensors: bitwise by construction
    assert torch.equal(model.generate(betas=betas, subject=subjects, max_new_tokens=14,
                                      **({} if pad is None else {"pad_token_id": pad})), fast.sequences)
    # torch's default matrix product instead of oneDNN-packed weights: same tokens
    config, _ = resolve_generation_config(model.gpt2, dict(max_new_tokens=14, return_dict_in_generate=True,
                                                           output_scores=True, pad_token_id=pad or tok.eos_token_id))
    _assert_same_greedy(hf, greedy_search(model.gpt2, model.encode_brain(betas, subjects), config, pack_weights=False))
    ended = [r.index(tok.eos_token_id) for r in fast.sequences.tolist() if tok.eos_token_id in r]
    if eos_scale == 3.0:  # control: eos competed, some rows ended early and the others ran on
        assert ended and min(ended) < fast.sequences.shape[1] - 1
        fill = tok.eos_token_id if pad is None else pad
        for row in fast.sequences.tolist():
            if tok.eos_token_id in row:
                assert set(row[row.index(tok.eos_token_id) + 1:]) <= {fill}


def test_fast_greedy_two_stop_tokens_and_transformers_own_greedy():
    model, tok = _model(seed=7)
    subjects = ["subj01", "subj02", "subj01"]
    betas = random_betas(COUNTS, subjects, seed=8)
    first = model.generate(betas=betas, subject=subjects, max_new_tokens=10, beam_impl="hf")[0].tolist()
    kwargs = dict(betas=betas, subject=subjects, max_new_tokens=10, eos_token_id=[first[3], tok.eos_token_id],
                  return_dict_in_generate=True, output_scores=True)
    hf, fast = model.generate(beam_impl="hf", **kwargs), model.generate(beam_impl="fast", **kwargs)
    _assert_same_greedy(hf, fast)
    row = fast.sequences[0].tolist()
    assert first[3] in row and row.index(first[3]) <= 3  # control: the extra stop token ends row 0
    # beam_impl="hf" is transformers' own greedy decoding: same process, same kernels, so bitwise
    mask = torch.ones(3, model.config.prefix_length, dtype=torch.long)
    direct = model.gpt2.generate(inputs_embeds=model.encode_brain(betas, subjects), attention_mask=mask,
                                 max_new_tokens=10, pad_token_id=model.eos_token_id)
    assert torch.equal(model.generate(betas=betas, subject=subjects, max_new_tokens=10, beam_impl="hf"), direct)


def test_inherit_rows_known_answer():
    """First child of a parent keeps its row; further children take rows whose beam has no child, in order."""
    rows, source, target = _inherit_rows(torch.tensor([[0, 0, 1], [2, 2, 2], [1, 2, 0]]))
    assert rows.tolist() == [[0, 2, 1], [2, 0, 1], [1, 2, 0]]
    assert source.tolist() == [0, 5, 5] and target.tolist() == [2, 3, 4]  # flat rows: brain b's rows are 3b..3b+2


def test_cache_copies_only_the_positions_where_histories_differ():
    cache = BeamKVCache(rows=3, n_layer=2, heads=2, max_length=6, head_dim=4, dtype=torch.float32, device="cpu")
    cache.length = 5
    cache.storage.copy_(torch.arange(cache.storage.numel(), dtype=torch.float32).view_as(cache.storage))
    cache.history[:] = torch.tensor([[0, 0, 1, 2, 3, 9], [0, 0, 1, 4, 5, 9], [0, 0, 6, 7, 8, 9]])
    before = cache.storage.clone()
    cache.copy_rows(torch.tensor([0]), torch.tensor([1]))
    # row 1 shares positions 0-2 with row 0 (same ids): those keep row 1's own values, positions 3-4 are row 0's
    assert torch.equal(cache.storage[1, :, :, :3], before[1, :, :, :3])
    assert torch.equal(cache.storage[1, :, :, 3:5], before[0, :, :, 3:5])
    assert torch.equal(cache.storage[1, :, :, 5:], before[1, :, :, 5:])  # beyond length: untouched
    assert cache.history[1].tolist() == [0, 0, 1, 2, 3, 9]
    assert torch.equal(cache.storage[[0, 2]], before[[0, 2]])
