"""Metric tables: markdown with deltas against a baseline, JSON, atomic files."""

import json

import pytest

from fgb2i_hf.metrics import format_table, table_json, write_table

ROWS = {"shuffled": {"BLEU-4": 0.05, "CLIP": 0.5, "SwAV": 0.61},
        "FgB2I": {"BLEU-4": 0.125, "CLIP": 0.9369, "SwAV": 0.336}}


def test_markdown_table_with_deltas():
    assert format_table(ROWS, baseline="shuffled") == "\n".join([
        "| | BLEU-4 | CLIP | SwAV ↓ |",
        "|---|---|---|---|",
        "| shuffled | 0.0500 | 50.00% | 0.6100 |",
        "| FgB2I | 0.1250 (+0.0750) | 93.69% (+43.69) | 0.3360 (-0.2740) |",
    ])


def test_plain_table_missing_cells_and_column_choice():
    rows = {"a": {"x": 1.0}, "b": {"y": float("nan")}}
    assert format_table(rows, digits=2) == "| | x | y |\n|---|---|---|\n| a | 1.00 | – |\n| b | – | – |"
    assert format_table(ROWS, columns=["SwAV"], lower_is_better=()).splitlines()[0] == "| | SwAV |"


def test_json_and_files(tmp_path):
    data = table_json(ROWS, baseline="shuffled")
    assert data["rows"] == ROWS and data["deltas"]["FgB2I"]["BLEU-4"] == pytest.approx(0.075)
    md, js = write_table(ROWS, str(tmp_path / "out" / "captions"), baseline="shuffled")
    assert open(md).read() == format_table(ROWS, baseline="shuffled") + "\n"
    assert json.load(open(js)) == json.loads(json.dumps(data))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["captions.json", "captions.md"]


def test_bad_table_input():
    with pytest.raises(ValueError, match="baseline row 'none' not among"):
        format_table(ROWS, baseline="none")
    with pytest.raises(ValueError, match="at least one row"):
        format_table({})
