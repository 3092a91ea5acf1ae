"""BrainCaptionCollator and the decoding helpers of fgb2i_hf.evaluation on SimNSD rows."""

import json

import numpy as np
import pytest
import torch

from fgb2i_hf.drivers.caption_eval import write_predictions
from fgb2i_hf.data.collate import BrainCaptionCollator, check_captions
from fgb2i_hf.evaluation import (CONTROL_ROW, MODEL_ROW, brainhub_predictions, decode_dataset, evaluate_with_control,
                                 shuffled_row_order)
from fgb2i_hf.testing import tiny_brain_prefix_gpt2, tiny_caption_tokenizer
from greedy_helpers import decisive_rows


@pytest.fixture(scope="module")
def rows(simnsd_dataset):
    """12 test rows of subj01 and 12 of subj02 (different voxel counts)."""
    test = simnsd_dataset["test"]
    subjects = np.asarray(test["subject"])
    idx = np.concatenate([np.flatnonzero(subjects == "subj01")[:12], np.flatnonzero(subjects == "subj02")[:12]])
    return test.select(idx)


@pytest.fixture(scope="module")
def model_and_tokenizer(rows):
    counts = {"subj01": len(rows[0]["betas"]), "subj02": len(rows[12]["betas"])}
    return tiny_brain_prefix_gpt2(counts, max_caption_tokens=8)


def test_numpy_rows_collate_like_python_rows(rows):
    collate = BrainCaptionCollator(tiny_caption_tokenizer(), caption_column="captions")
    python_batch = collate([rows[i] for i in range(len(rows))])
    numpy_rows = rows.with_format("numpy", columns=["betas"], output_all_columns=True)
    numpy_batch = collate([numpy_rows[i] for i in range(len(rows))])
    assert python_batch["subject"] == numpy_batch["subject"] == rows["subject"]
    for key in ("betas", "input_ids", "attention_mask", "labels"):
        assert torch.equal(python_batch[key], numpy_batch[key]), key  # exact: the same stored values, only cast
    betas = python_batch["betas"]
    n01, n02 = len(rows[0]["betas"]), len(rows[12]["betas"])
    assert betas.shape == (24, max(n01, n02)) and betas.dtype == torch.float32
    # subj02 rows are zero-padded on the right to subj01's width, and keep their own values
    assert torch.all(betas[12:, n02:] == 0)
    assert np.allclose(betas[12, :n02].numpy(), np.asarray(rows[12]["betas"], dtype=np.float32))


def test_targets_are_caption_plus_eos_masked_by_position(rows):
    tok = tiny_caption_tokenizer()
    collate = BrainCaptionCollator(tok, caption_column="fine_captions", max_length=9)
    batch = collate([rows[i] for i in range(4)])
    eos = tok.eos_token_id
    for i in range(4):
        n = int(batch["attention_mask"][i].sum())
        ids = batch["input_ids"][i, :n].tolist()
        assert ids[-1] == eos and n <= 9
        full = tok(rows[i]["fine_captions"][0], add_special_tokens=False)["input_ids"]
        assert ids[:-1] == full[: n - 1]  # truncated to max_length - 1 tokens, then eos
        assert (batch["labels"][i, n:] == -100).all() and (batch["labels"][i, :n] == batch["input_ids"][i, :n]).all()


def test_caption_choice_is_a_function_of_row_and_epoch(rows):
    collate = BrainCaptionCollator(tiny_caption_tokenizer(), caption_column="captions", seed=3)
    batch_rows = [rows[i] for i in range(len(rows))]
    by_epoch = []
    for epoch in (0, 1, 0):
        collate.epoch = epoch
        by_epoch.append([collate.choose_caption(r) for r in batch_rows])
    assert by_epoch[0] == by_epoch[2]  # same epoch, same targets (what exact resume relies on)
    assert sum(a != b for a, b in zip(by_epoch[0], by_epoch[1])) >= 8  # another epoch, mostly other captions
    assert all(c in r["captions"] for c, r in zip(by_epoch[1], batch_rows))
    again = BrainCaptionCollator(tiny_caption_tokenizer(), caption_column="captions", seed=3)
    again.epoch = 1
    assert [again.choose_caption(r) for r in batch_rows] == by_epoch[1]  # a fresh collator (a resumed run) agrees


def test_empty_captions_are_named(rows):
    blank = rows.map(lambda r, i: {"captions": [] if i == 5 else r["captions"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"1 of 24 rows have an empty 'captions'.*subject='subj01'"):
        check_captions(blank, "captions", "train split")
    no_fine = rows.map(lambda r: {"fine_captions": []})
    with pytest.raises(ValueError, match="fine captions were asked for but are absent"):
        check_captions(no_fine, "fine_captions", "train split")
    with pytest.raises(ValueError, match="no column 'nonsense'"):
        check_captions(rows, "nonsense")


def test_shuffled_order_is_a_derangement_within_each_subject():
    subjects = ["a"] * 5 + ["b"] * 7 + ["c"]
    order = shuffled_row_order(subjects, seed=1)
    assert sorted(order.tolist()) == list(range(13))
    for i, j in enumerate(order):
        assert subjects[i] == subjects[j]
        if subjects[i] != "c":  # a subject with one row keeps it
            assert i != j
    assert np.array_equal(order, shuffled_row_order(subjects, seed=1))
    assert not np.array_equal(order, shuffled_row_order(subjects, seed=2))


def test_decoding_a_subset_and_the_shuffled_control(rows, model_and_tokenizer):
    model, tok = model_and_tokenizer
    full = decode_dataset(model, tok, rows, batch_size=5, progress=False)
    assert len(full) == 24 and len(set(full)) > 1  # the random model's captions depend on the brain
    subset = decode_dataset(model, tok, rows, rows=[3, 17, 0], batch_size=2, progress=False)
    # other batches, other kernels: the same captions because no greedy step of these rows is a near-tie
    assert all(decisive_rows(model, rows, [3, 17, 0], tok.eos_token_id))
    assert subset == [full[3], full[17], full[0]]
    control = decode_dataset(model, tok, rows, shuffle_betas=True, seed=4, progress=False)
    order = shuffled_row_order(rows["subject"], seed=4)
    # the control is the model run on the permuted betas, subjects unchanged
    permuted = rows.select(order.tolist()).remove_columns("subject").add_column("subject", rows["subject"])
    assert control == decode_dataset(model, tok, permuted, progress=False)  # exact: the same batches, same kernels
    assert control != full


def test_controlled_evaluation_table_and_brainhub_files(rows, model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    result = evaluate_with_control(model, tok, rows, references="captions", metrics=["BLEU-4", "CIDEr"],
                                   per_subject=True, progress=False, seed=4)
    assert set(result.rows) == {MODEL_ROW, CONTROL_ROW} and set(result.subject_rows) == {"subj01", "subj02"}
    for key, value in result.deltas.items():
        assert value == pytest.approx(result.rows[MODEL_ROW][key] - result.rows[CONTROL_ROW][key])
    assert {"BLEU-4", "CIDEr", "object F1"} <= set(result.rows[MODEL_ROW])
    md_path, json_path = result.write(str(tmp_path / "metrics"))
    text = open(md_path).read()
    assert "| brain |" in text and f"| {CONTROL_ROW} |" in text and "| subj02 brain |" in text
    saved = json.load(open(json_path))
    assert saved["baseline"] == CONTROL_ROW
    assert saved["subjects"]["subj01"]["deltas"]["CIDEr"] == pytest.approx(
        saved["subjects"]["subj01"][MODEL_ROW]["CIDEr"] - saved["subjects"]["subj01"][CONTROL_ROW]["CIDEr"])

    per = brainhub_predictions(rows, result.predictions)
    assert list(per) == ["subj01", "subj02"]
    assert list(per["subj02"]) == [str(i) for i in range(12)] and per["subj02"]["0"] == result.predictions[12]
    write_predictions(str(tmp_path), rows, result.predictions, result.control_predictions, "captions")
    assert json.load(open(tmp_path / "predictions_subj01.json")) == per["subj01"]
    assert json.load(open(tmp_path / "control_subj02.json"))["11"] == result.control_predictions[23]
    lines = [json.loads(x) for x in open(tmp_path / "predictions.jsonl")]
    assert [x["nsd_id"] for x in lines] == rows["nsd_id"] and lines[7]["prediction"] == result.predictions[7]


def test_report_rejects_mismatched_lengths(rows):
    from fgb2i_hf.evaluation import caption_report

    with pytest.raises(ValueError, match="3 predictions for 24 rows"):
        caption_report(["a dog"] * 3, rows)
    with pytest.raises(ValueError, match="2 predictions for 24 rows"):
        brainhub_predictions(rows, ["x", "y"])
