"""BrainPrefixGPT2: shapes, the mapper, loss masking, mixed subjects, generation, bad inputs."""

import pytest
import torch
import torch.nn.functional as F

import fgb2i_hf
from fgb2i_hf import BrainPrefixGPT2, BrainPrefixGPT2Config
from fgb2i_hf.testing import caption_batch, random_betas, tiny_brain_prefix_gpt2
from greedy_helpers import assert_greedy_is_decisive, greedy_with_logits

COUNTS = {"subj01": 40, "subj02": 56}
CAPTIONS = ["a cat sleeping on a laptop keyboard!", "a dog.", "two giraffes standing next to a tall tree."]


@pytest.fixture(scope="module")
def tiny():
    return tiny_brain_prefix_gpt2(COUNTS)


def test_shapes_through_every_path(tiny):
    model, tok = tiny
    l, d, vocab = model.config.prefix_length, model.config.hidden_size, model.config.gpt2_config.vocab_size
    batch = caption_batch(tok, CAPTIONS)
    T = batch["input_ids"].shape[1]
    betas = random_betas(COUNTS, ["subj02"] * 3)
    prefix = model.encode_brain(betas, "subj02")
    assert prefix.shape == (3, l, d)
    assert model(betas=betas, subject="subj02", **batch).logits.shape == (3, l + T, vocab)
    assert model(betas=betas, subject="subj02").logits.shape == (3, l, vocab)  # the prefix alone
    assert model(prefix_embeds=prefix, **batch).logits.shape == (3, l + T, vocab)
    no_labels = {k: v for k, v in batch.items() if k != "labels"}
    assert model(betas=betas, subject="subj02", logits_to_keep=1, **no_labels).logits.shape == (3, 1, vocab)
    mixed = random_betas(COUNTS, ["subj01", "subj02", "subj01"])
    assert mixed.shape == (3, 56)
    assert model(betas=mixed, subject=["subj01", "subj02", "subj01"], **batch).logits.shape == (3, l + T, vocab)
    assert model.generate(betas=betas, subject="subj02", max_new_tokens=5).shape == (3, 5)
    # float16 betas (as datasets stores them) and numpy arrays are accepted and cast to the model's dtype
    torch.testing.assert_close(model.encode_brain(betas.half(), "subj02"), model.encode_brain(betas.half().float(), "subj02"))
    torch.testing.assert_close(model.encode_brain(betas.numpy(), "subj02"), prefix)
    assert len(model.generate_captions(betas, "subj02", tok, max_new_tokens=5)) == 3


def test_subject_layers_direct_and_factorised():
    model, _ = tiny_brain_prefix_gpt2(COUNTS)
    l, d = model.config.prefix_length, model.config.hidden_size
    assert model.subject_proj["subj01"].weight.shape == (l * d, 40)  # voxels -> l*d, as in the paper
    assert model.subject_proj["subj02"].weight.shape == (l * d, 56)
    assert model.shared_proj is None
    factorised, _ = tiny_brain_prefix_gpt2(COUNTS, subject_hidden_size=16)
    assert factorised.subject_proj["subj01"].weight.shape == (16, 40)  # voxels -> h per subject
    assert factorised.shared_proj.weight.shape == (l * d, 16)  # h -> l*d shared
    assert factorised.encode_brain(random_betas(COUNTS, ["subj01"]), "subj01").shape == (1, l, d)


def test_mapper_has_no_positional_information_on_z(tiny):
    """No positional embeddings and no mask: the prefix (the outputs at Z' positions) cannot depend on the order of
    the l tokens of Z, but it does depend on Z."""
    model, _ = tiny
    torch.manual_seed(1)
    z = torch.randn(2, model.config.prefix_length, model.config.hidden_size)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        out = model.mapper(z)
        assert out.shape == z.shape
        torch.testing.assert_close(model.mapper(z[:, perm]), out, atol=1e-5, rtol=1e-5)
        assert (model.mapper(z + torch.randn_like(z)) - out).abs().max() > 1e-3  # control: it does read Z


def test_prefix_is_the_mapper_output_of_projected_betas(tiny):
    model, _ = tiny
    betas = random_betas(COUNTS, ["subj01", "subj01"])
    with torch.no_grad():
        z = model.subject_proj["subj01"](betas).view(2, model.config.prefix_length, -1)
        expected = model.mapper(z)
        torch.testing.assert_close(model.encode_brain(betas, "subj01"), expected)


def _manual_token_losses(model, betas, subject, batch):
    """Per-caption-token CE from the logits, position by position (label i predicted at position l + i - 1)."""
    with torch.no_grad():
        logits = model(betas=betas, subject=subject, input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits
    l = model.config.prefix_length
    losses, tokens = [], []
    for b in range(batch["input_ids"].shape[0]):
        for i in range(batch["input_ids"].shape[1]):
            if batch["attention_mask"][b, i]:
                target = batch["input_ids"][b, i]
                losses.append(F.cross_entropy(logits[b, l + i - 1][None], target[None]))
                tokens.append(int(target))
    return torch.stack(losses), tokens


def test_loss_counts_every_caption_token_and_never_padding(tiny):
    model, tok = tiny
    batch = caption_batch(tok, CAPTIONS)
    betas = random_betas(COUNTS, ["subj01"] * 3)
    token_losses, tokens = _manual_token_losses(model, betas, "subj01", batch)
    bang, eos = tok.convert_tokens_to_ids("!"), tok.eos_token_id
    assert bang in tokens  # "!" (GPT-2's id 0, which ClipCap's padding silently ignores) is a counted target
    assert tokens.count(eos) == 3  # each caption's own eos is counted although padding uses the same id
    assert len(tokens) == int(batch["attention_mask"].sum())
    with torch.no_grad():
        loss = model(betas=betas, subject="subj01", **batch).loss
    torch.testing.assert_close(loss, token_losses.mean())

    # Padding is never counted: garbage ids and even real labels at padded positions change nothing.
    garbage = dict(batch)
    pad = batch["attention_mask"] == 0
    assert pad.any()
    garbage["input_ids"] = batch["input_ids"].masked_fill(pad, bang)
    garbage["labels"] = garbage["input_ids"].clone()  # labels not -100 at padding: the attention mask still rules
    with torch.no_grad():
        # exact by construction: same model, same shapes, so the same kernels; only masked positions differ, and a
        # masked position gets an attention weight of exactly 0 and is left out of the loss
        assert torch.equal(model(betas=betas, subject="subj01", **garbage).loss, loss)
        # control: changing a real token does change the loss
        changed = dict(batch)
        changed["labels"] = batch["labels"].clone()
        changed["labels"][0, 0] = (batch["labels"][0, 0] + 1) % model.config.gpt2_config.vocab_size
        assert model(betas=betas, subject="subj01", **changed).loss != loss


def test_num_items_in_batch_gives_the_token_mean_over_micro_batches(tiny):
    model, tok = tiny
    batch = caption_batch(tok, CAPTIONS)
    betas = random_betas(COUNTS, ["subj01", "subj02", "subj01"])
    subjects = ["subj01", "subj02", "subj01"]
    with torch.no_grad():
        full = model(betas=betas, subject=subjects, **batch).loss  # mean over all caption tokens
        n = batch["attention_mask"].sum()
        total = model(betas=betas, subject=subjects, num_items_in_batch=n, **batch).loss
        torch.testing.assert_close(total, full)
        summed = model(betas=betas, subject=subjects, num_items_in_batch=1, **batch).loss
        torch.testing.assert_close(summed, full * n)
        # two micro-batches of unequal token counts, each divided by the total: their sum is the full mean
        parts = []
        for rows in ([0], [1, 2]):
            micro = {k: v[rows] for k, v in batch.items()}
            parts.append(model(betas=betas[rows], subject=[subjects[r] for r in rows], num_items_in_batch=n,
                               **micro).loss)
            assert torch.isfinite(parts[-1])
        torch.testing.assert_close(parts[0] + parts[1], full)
        # control: the mean of micro-batch means is not the token mean (unequal token counts)
        means = [model(betas=betas[r], subject=[subjects[i] for i in r], **{k: v[r] for k, v in batch.items()}).loss
                 for r in ([0], [1, 2])]
        assert abs(float(sum(means) / 2 - full)) > 1e-4


def test_mixed_subject_batch_equals_per_subject_runs(tiny):
    model, tok = tiny
    subjects = ["subj02", "subj01", "subj02", "subj02", "subj01"]
    betas = random_betas(COUNTS, subjects, seed=3)
    batch = caption_batch(tok, CAPTIONS + CAPTIONS[:2])
    with torch.no_grad():
        mixed = model(betas=betas, subject=subjects, **batch).logits
        mixed_prefix = model.encode_brain(betas, subjects)
        for s in COUNTS:
            rows = [i for i, x in enumerate(subjects) if x == s]
            alone = model(betas=betas[rows, : COUNTS[s]], subject=s, **{k: v[rows] for k, v in batch.items()})
            torch.testing.assert_close(mixed[rows], alone.logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(mixed_prefix[rows], model.encode_brain(betas[rows, : COUNTS[s]], s),
                                       atol=1e-6, rtol=1e-5)
        # one row at a time, in the str form, gives the same prefixes again
        for i, s in enumerate(subjects):
            torch.testing.assert_close(mixed_prefix[i:i + 1], model.encode_brain(betas[i:i + 1, : COUNTS[s]], s),
                                       atol=1e-6, rtol=1e-5)
        # control: the subject layer matters (the same betas under the other subject give another prefix)
        swapped = model.encode_brain(betas[[1], :40], "subj01") - model.encode_brain(
            torch.nn.functional.pad(betas[[1], :40], (0, 16)), "subj02")
        assert swapped.abs().max() > 1e-3


def test_mixed_subject_gradients_reach_each_subject_layer_once():
    model, tok = tiny_brain_prefix_gpt2(COUNTS)
    subjects = ["subj02", "subj01", "subj02"]
    betas = random_betas(COUNTS, subjects)
    model(betas=betas, subject=subjects, **caption_batch(tok, CAPTIONS)).loss.backward()
    mixed = {s: model.subject_proj[s].weight.grad.clone() for s in COUNTS}
    model.zero_grad()
    batch = caption_batch(tok, CAPTIONS)
    n = batch["attention_mask"].sum()
    for s in COUNTS:  # the same loss split by subject, each part divided by the total token count
        rows = [i for i, x in enumerate(subjects) if x == s]
        model(betas=betas[rows, : COUNTS[s]], subject=s, num_items_in_batch=n,
              **{k: v[rows] for k, v in batch.items()}).loss.backward()
    for s in COUNTS:
        torch.testing.assert_close(mixed[s], model.subject_proj[s].weight.grad, atol=1e-6, rtol=1e-4)


def _naive_greedy(model, prefix, max_new_tokens, eos):
    """Reference: re-run GPT-2 over the whole prefix + text each step, argmax of the last position.
    Returns the tokens (B, T) and each step's logits (B, T, vocab)."""
    embeds, done = prefix, torch.zeros(prefix.shape[0], dtype=torch.bool)
    tokens, step_logits = [], []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model.gpt2(inputs_embeds=embeds).logits[:, -1]
            step_logits.append(logits)
            nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            tokens.append(nxt)
            done |= nxt == eos
            embeds = torch.cat([embeds, model.gpt2.transformer.wte(nxt)[:, None]], 1)
            if done.all():
                break
    return torch.stack(tokens, 1), torch.stack(step_logits, 1)


def _varied_model(seed=2):
    """A 3x eos embedding makes some (not all) rows end early."""
    model, tok = tiny_brain_prefix_gpt2(COUNTS, seed=seed)
    with torch.no_grad():
        model.gpt2.transformer.wte.weight[tok.eos_token_id] *= 3
    return model, tok


def test_greedy_generate_equals_naive_reference_loop():
    model, tok = _varied_model()
    subjects = ["subj01", "subj02", "subj01", "subj02", "subj01", "subj02"]
    betas = random_betas(COUNTS, subjects, seed=5)
    prefix = model.encode_brain(betas, subjects)
    eos = tok.eos_token_id
    expected, expected_logits = _naive_greedy(model, prefix, 20, eos)
    # The KV cache and the full recompute are different kernels: logits agree to rounding (~1e-6), so compare them
    # with a tolerance, and the tokens exactly only because no step of these betas is a near-tie.
    got, logits = greedy_with_logits(model, betas, subjects, max_new_tokens=20)
    assert_greedy_is_decisive(model, betas, subjects, eos, max_new_tokens=20)
    assert torch.equal(got, expected)
    torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)
    assert len({tuple(r) for r in got.tolist()}) == 6  # control: each brain leads to its own caption
    ended = [eos in r for r in got.tolist()]
    assert any(ended) and not all(ended)  # some rows stop early (and are padded), some run to the limit
    # the helper returns the same tokens as text, cut at the first eos
    captions = model.generate_captions(betas, subjects, tok, max_new_tokens=20)
    for row, caption in zip(got.tolist(), captions):
        cut = row[: row.index(eos)] if eos in row else row
        assert caption == tok.decode(cut).strip()


def test_beam_search_and_sampling_shapes_and_stopping(tiny):
    model, tok = tiny
    betas = random_betas(COUNTS, ["subj01", "subj02"])
    subjects = ["subj01", "subj02"]
    beams = model.generate(betas=betas, subject=subjects, num_beams=3, num_return_sequences=2, max_new_tokens=7)
    assert beams.shape == (4, 7)
    out = model.generate(betas=betas, subject=subjects, num_beams=3, num_return_sequences=3, max_new_tokens=6,
                         return_dict_in_generate=True, output_scores=True)
    assert out.sequences.shape == (6, 6) and out.sequences_scores.shape == (6,)
    assert (out.sequences_scores.view(2, 3).diff(dim=1) <= 1e-6).all()  # best first
    torch.manual_seed(0)
    sampled = model.generate(betas=betas, subject=subjects, do_sample=True, top_p=0.9, num_return_sequences=3,
                             max_new_tokens=9)
    assert sampled.shape == (6, 9)
    torch.manual_seed(0)  # exact by construction: the same model, inputs and kernels, the same random draws
    assert torch.equal(model.generate(betas=betas, subject=subjects, do_sample=True, top_p=0.9,
                                      num_return_sequences=3, max_new_tokens=9), sampled)  # seeded
    assert len(model.generate_captions(betas, subjects, tok, num_beams=3, num_return_sequences=3,
                                       max_new_tokens=5)) == 6
    # num_beams=1 is greedy
    greedy = model.generate(betas=betas, subject=subjects, max_new_tokens=8)
    # exact by construction: num_beams=1 takes the very code path of the default call
    assert torch.equal(model.generate(betas=betas, subject=subjects, max_new_tokens=8, num_beams=1), greedy)
    # default length: config.max_caption_tokens
    assert model.generate(betas=betas, subject=subjects).shape[1] <= model.config.max_caption_tokens


def test_generation_stops_at_stop_tokens():
    model, tok = _varied_model()
    subjects = ["subj01", "subj02"]
    betas = random_betas(COUNTS, subjects, seed=5)
    greedy = model.generate(betas=betas, subject=subjects, max_new_tokens=12)[0].tolist()
    stop = greedy[3]
    assert stop != tok.eos_token_id
    k = greedy.index(stop)  # the first time row 0 produces the stop token
    stopped = model.generate(betas=betas, subject=subjects, max_new_tokens=12, eos_token_id=[stop, tok.eos_token_id])
    assert stopped[0, : k + 1].tolist() == greedy[: k + 1]  # exact by construction: same batch, only the stop differs
    assert (stopped[0, k + 1 :] == tok.eos_token_id).all()  # padded after the stop, pad = eos
    for row in stopped.tolist():  # every row ends at its first stop token or runs to the limit
        ends = [i for i, t in enumerate(row) if t in (stop, tok.eos_token_id)]
        assert not ends or all(t == tok.eos_token_id for t in row[ends[0] + 1 :])


def test_greedy_generate_mixed_subjects_equals_per_subject():
    model, _ = _varied_model(seed=1)
    subjects = ["subj02", "subj01", "subj02", "subj01"]
    betas = random_betas(COUNTS, subjects, seed=7)
    mixed, mixed_logits = greedy_with_logits(model, betas, subjects, max_new_tokens=10)
    # Batches of 4 and of 2 rows run other kernels: logits agree to rounding, so they are compared with a tolerance,
    # and the tokens exactly only because no greedy step of these betas is a near-tie.
    assert_greedy_is_decisive(model, betas, subjects, model.eos_token_id, max_new_tokens=10)
    for s in COUNTS:
        rows = [i for i, x in enumerate(subjects) if x == s]
        alone, alone_logits = greedy_with_logits(model, betas[rows, : COUNTS[s]], s, max_new_tokens=10)
        assert torch.equal(mixed[rows, : alone.shape[1]], alone)
        torch.testing.assert_close(mixed_logits[rows, : alone.shape[1]], alone_logits, atol=1e-4, rtol=1e-4)


# -- bad input -----------------------------------------------------------------------------------------------------


def test_unknown_subject(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match=r"unknown subject.*subj09.*knows \['subj01', 'subj02'\]"):
        model.encode_brain(torch.zeros(1, 40), "subj09")
    with pytest.raises(ValueError, match=r"unknown subject.*subj09"):
        model.encode_brain(torch.zeros(2, 56), ["subj01", "subj09"])


def test_betas_length_differs_from_voxel_count(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match=r"subj01 have 41 voxels per row, expected 40"):
        model.encode_brain(torch.zeros(2, 41), "subj01")
    with pytest.raises(ValueError, match=r"50 columns but subj02 needs 56"):
        model.encode_brain(torch.zeros(2, 50), ["subj01", "subj02"])
    betas = random_betas(COUNTS, ["subj01", "subj02"])
    betas[0, 45] = 1.0  # a subj01 row with more than 40 voxels
    with pytest.raises(ValueError, match=r"row 0 \(subj01\) has non-zero values after its 40 voxels"):
        model.encode_brain(betas, ["subj01", "subj02"])
    with pytest.raises(ValueError, match=r"2-D tensor"):
        model.encode_brain(torch.zeros(40), "subj01")
    with pytest.raises(ValueError, match=r"no rows"):
        model.encode_brain(torch.zeros(0, 40), "subj01")
    with pytest.raises(ValueError, match=r"floating point"):
        model.encode_brain(torch.zeros(1, 40, dtype=torch.long), "subj01")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_in_betas(tiny, bad):
    model, tok = tiny
    betas = random_betas(COUNTS, ["subj01", "subj02", "subj01"])
    betas[2, 3] = bad
    with pytest.raises(ValueError, match=r"NaN or inf in rows \[2\] \(subject\(s\) \['subj01'\]\)"):
        model.encode_brain(betas, ["subj01", "subj02", "subj01"])
    with pytest.raises(ValueError, match=r"NaN or inf"):
        model.generate(betas=betas[[2], :40], subject="subj01", max_new_tokens=2)


def test_betas_beyond_the_models_dtype_fail_instead_of_an_empty_caption(tiny):
    """Finite float64 betas beyond float32's range become inf in the model's dtype; a half-precision model can
    overflow inside the subject layer. Either way the prefix would be NaN/inf and the caption empty: an error."""
    model, tok = tiny
    huge = random_betas(COUNTS, ["subj01"], seed=3)[:, :40].double() * 1e39
    assert torch.isfinite(huge).all()
    with pytest.raises(ValueError, match=r"NaN or inf in rows \[0\].*after the cast to the model's dtype "
                                         r"torch\.float32"):
        model.encode_brain(huge, "subj01")
    with pytest.raises(ValueError, match=r"model's dtype torch\.float32"):
        model.generate_captions(huge, "subj01", tok, max_new_tokens=2)
    half, _ = tiny_brain_prefix_gpt2(COUNTS)
    half = half.to(torch.float16)
    loud = random_betas(COUNTS, ["subj01"], seed=3)[:, :40] * 6e4  # |x| < 65504 for most voxels, so finite in fp16
    loud = loud.clamp(-6e4, 6e4)
    with pytest.raises(ValueError, match=r"prefix of rows \[0\] is not finite in the model's dtype torch\.float16"):
        half.encode_brain(loud, "subj01")
    # control: ordinary betas pass through the half-precision model
    assert torch.isfinite(half.encode_brain(random_betas(COUNTS, ["subj01"], seed=3)[:, :40], "subj01")).all()


def test_batch_sizes_that_disagree(tiny):
    model, tok = tiny
    betas = random_betas(COUNTS, ["subj01"] * 3)
    batch = caption_batch(tok, CAPTIONS)
    with pytest.raises(ValueError, match=r"2 names for 3 rows"):
        model.encode_brain(betas, ["subj01", "subj01"])
    with pytest.raises(ValueError, match=r"input_ids must be \(B, T\) with B = 3.*\(2, "):
        model(betas=betas, subject="subj01", input_ids=batch["input_ids"][:2])
    with pytest.raises(ValueError, match=r"attention_mask must have input_ids' shape"):
        model(betas=betas, subject="subj01", input_ids=batch["input_ids"], attention_mask=batch["attention_mask"][:2])
    with pytest.raises(ValueError, match=r"labels must have input_ids' shape"):
        model(betas=betas, subject="subj01", input_ids=batch["input_ids"], labels=batch["labels"][:, :2])
    with pytest.raises(ValueError, match=r"prefix_embeds must be \(B, 4, 32\)"):
        model(prefix_embeds=torch.zeros(3, 5, 32))
    with pytest.raises(ValueError, match=r"either betas .* or prefix_embeds"):
        model(betas=betas, subject="subj01", prefix_embeds=torch.zeros(3, 4, 32))


def test_config_rejects_bad_fields():
    with pytest.raises(ValueError, match=r"voxel_counts\['subj01'\] must be a positive int"):
        BrainPrefixGPT2Config(voxel_counts={"subj01": 0})
    with pytest.raises(ValueError, match=r"subject names"):
        BrainPrefixGPT2Config(voxel_counts={"subj.01": 10})
    with pytest.raises(ValueError, match=r"mapper_heads \(5\) must divide the language model's n_embd \(768\)"):
        BrainPrefixGPT2Config(voxel_counts={"subj01": 10}, mapper_heads=5)


def test_public_names():
    assert fgb2i_hf.BrainPrefixGPT2 is BrainPrefixGPT2
    assert BrainPrefixGPT2Config().mapper_layers == 8 and BrainPrefixGPT2Config().mapper_heads == 8
    assert BrainPrefixGPT2Config().mlp_ratio == 2.0 and BrainPrefixGPT2Config().prefix_length == 10
    assert BrainPrefixGPT2Config().freeze_language_model is True
    assert BrainPrefixGPT2Config().max_caption_tokens == 77


def test_decode_captions_cuts_at_the_first_eos(tiny):
    """The one decode of generated ids (generate_captions and the RL trainer): known answers."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    from fgb2i_hf.models.brain_prefix_gpt2 import decode_captions

    _, tok = tiny
    eos, ids = tok.eos_token_id, tok.encode("a red cube")
    rows = torch.tensor([ids + [eos] + ids, ids + ids + [eos]])
    assert decode_captions(rows, tok) == ["a red cube", "a red cubea red cube"]  # ids twice, no space between
    assert decode_captions(GenerateDecoderOnlyOutput(sequences=rows), tok) == decode_captions(rows, tok)
    assert decode_captions(rows[:, :-1], tok, eos_token_id=ids[-1]) == [tok.decode(ids[:-1]).strip()] * 2
