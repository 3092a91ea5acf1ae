"""examples/demo.py's stage-2 report: the CE vs CE+RL table from the two runs' files."""

import importlib.util
import json
import pathlib
import sys

import pytest

DEMO = pathlib.Path(__file__).resolve().parents[1] / "examples" / "demo.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("fgb2i_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fgb2i_demo"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("fgb2i_demo", None)


def test_rl_report_compares_the_shared_columns_and_adds_the_object_reward(demo, tmp_path, capsys):
    ce, rl = tmp_path / "ce", tmp_path / "rl"
    ce.mkdir(), rl.mkdir()
    (ce / "eval_test.json").write_text(json.dumps({"rows": {
        "brain": {"BLEU-4": 0.20, "METEOR": 0.25, "object F1": 0.30},
        "shuffled-brain control": {"BLEU-4": 0.1, "METEOR": 0.1, "object F1": 0.1}}}))
    predictions = [{"prediction": "a dog next to a car", "objects": ["dog", "car"]},  # F1 1
                   {"prediction": "a cat", "objects": ["dog"]}]                      # F1 0
    (ce / "eval_test_predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    (rl / "result.json").write_text(json.dumps({"eval": {"BLEU-4": 0.18, "CIDEr": 0.9, "object F1": 0.36,
                                                         "reward object_accuracy": 0.7}}))
    rows = demo.print_rl_report(str(ce), str(rl))
    assert rows["CE (stage 1)"]["reward object_accuracy"] == pytest.approx(0.5)
    table = (rl / "ce_vs_rl.md").read_text()
    header = table.splitlines()[0]
    assert header == "| | BLEU-4 | object F1 | reward object_accuracy |"  # METEOR and CIDEr are not in both runs
    assert "| CE + RL (stage 2) | 0.1800 (-0.0200) | 0.3600 (+0.0600) | 0.7000 (+0.2000) |" in table
    assert table.strip() in capsys.readouterr().out
