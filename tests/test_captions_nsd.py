"""Fine captions on SimNSD: the ids captioned, the builder reading them back, the recipes, the audit's known answers."""

import importlib.util
import json
import os

import numpy as np
import pandas as pd
import pytest

from fgb2i_hf.captions.cache import CaptionCacheError, read_cache, write_records_atomic
from fgb2i_hf.drivers.captions import (AuditCaptionsConfig, EnhanceCaptionsConfig, audit_nsd, coco_truth, enhance_nsd,
                                   subject_nsd_ids)
from fgb2i_hf.data import NSDDataError, load_nsd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recipe(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "recipes", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def records_of(path):
    scan = read_cache(str(path))
    assert not scan.bad_lines
    return scan.records


def test_subject_ids_are_the_images_the_builder_gives_the_subject(simnsd_root, simnsd_dataset):
    for subject in ("subj01", "subj07"):
        built = {r for split in ("train", "validation", "test") for r, s in
                 zip(simnsd_dataset[split]["nsd_id"], simnsd_dataset[split]["subject"]) if s == subject}
        assert subject_nsd_ids(simnsd_root, [subject]) == sorted(built)
    both = subject_nsd_ids(simnsd_root, ["subj01", "subj07"])
    assert set(both) == set(subject_nsd_ids(simnsd_root, "subj01")) | set(subject_nsd_ids(simnsd_root, "7"))


def test_sessions_restrict_to_the_images_of_those_sessions(simnsd_root):
    every = subject_nsd_ids(simnsd_root, ["subj01"])
    first = subject_nsd_ids(simnsd_root, ["subj01"], sessions=1)
    assert set(first) < set(every)
    assert subject_nsd_ids(simnsd_root, ["subj01"], sessions=3) == every  # the design agrees with the stimulus table
    with pytest.raises(ValueError, match="sessions must be a positive int"):
        subject_nsd_ids(simnsd_root, ["subj01"], sessions=0)
    with pytest.raises(ValueError, match="unknown subject 'subj09'"):
        subject_nsd_ids(simnsd_root, ["subj09"])


def test_stimulus_table_without_the_subject_column_is_named(tmp_path, simnsd_root):
    folder = tmp_path / "nsddata" / "experiments" / "nsd"
    folder.mkdir(parents=True)
    table = pd.read_csv(os.path.join(simnsd_root, "nsddata/experiments/nsd/nsd_stim_info_merged.csv"))
    table.drop(columns=["subject1"]).to_csv(folder / "nsd_stim_info_merged.csv", index=False)
    with pytest.raises(NSDDataError, match=r"nsd_stim_info_merged.csv: missing column\(s\) \['subject1'\]"):
        subject_nsd_ids(str(tmp_path), ["subj01"])


def test_enhance_recipe_writes_the_cache_the_builder_reads_as_fine_captions(simnsd_root, nsd_cache_dir, tmp_path,
                                                                            capsys):
    out = tmp_path / "fine.jsonl"
    argv = ["--nsd_root", simnsd_root, "--output", str(out), "--model_name_or_path", "tiny-random",
            "--subjects", "subj01", "--max_images", "10", "--max_new_tokens", "8", "--batch_size", "4",
            "--device", "cpu", "--progress", "false"]
    assert recipe("enhance_captions")(argv) == 0
    assert "requested 10: done 10, skipped 0" in capsys.readouterr().out
    wanted = subject_nsd_ids(simnsd_root, ["subj01"])[:10]
    records = records_of(out)
    assert [r["nsd_id"] for r in records] == wanted and all(r["model"] == "tiny-random" for r in records)
    assert recipe("enhance_captions")(argv) == 0  # resumed: nothing left to do
    assert "done 0, skipped 10" in capsys.readouterr().out

    dataset = load_nsd(simnsd_root, subjects=["subj01"], fine_captions=str(out), cache_dir=nsd_cache_dir)
    caption = {r["nsd_id"]: r["caption"] for r in records}
    rows = [row for split in ("train", "validation", "test")
            for row in dataset[split].select_columns(["nsd_id", "fine_captions"])]
    assert {row["nsd_id"] for row in rows if row["fine_captions"]} == set(wanted)
    for row in rows:
        assert row["fine_captions"] == ([caption[row["nsd_id"]]] if row["nsd_id"] in caption else [])


def test_enhance_refuses_ids_outside_imgbrick_and_the_oracle_cache(simnsd_root, tmp_path):
    config = EnhanceCaptionsConfig(nsd_root=simnsd_root, output=str(tmp_path / "f.jsonl"), nsd_ids=[3, 99999],
                                   model_name_or_path="tiny-random", max_new_tokens=4, progress=False)
    with pytest.raises(ValueError, match=r"nsd_stimuli.hdf5: nsd_id \[99999\] not in imgBrick"):
        enhance_nsd(config)
    oracle = os.path.join(simnsd_root, "fine_captions.jsonl")  # written by SimNSD with other settings
    with pytest.raises(CaptionCacheError, match="simnsd/oracle"):
        enhance_nsd(EnhanceCaptionsConfig(nsd_root=simnsd_root, output=oracle, nsd_ids=[3],
                                          model_name_or_path="tiny-random", max_new_tokens=4, progress=False))
    with pytest.raises(ValueError, match="generation_kwargs must be a JSON object"):
        EnhanceCaptionsConfig(nsd_root=simnsd_root, output="x", generation_kwargs="{bad").generation_settings()


def test_simnsd_oracle_captions_audit_clean_and_planted_hallucinations_are_found(simnsd_root, nsd_cache_dir, tmp_path):
    oracle = records_of(os.path.join(simnsd_root, "fine_captions.jsonl"))
    clean = audit_nsd(AuditCaptionsConfig(nsd_root=simnsd_root, captions=os.path.join(simnsd_root, "fine_captions.jsonl"),
                                          output_dir=str(tmp_path / "clean"), clip_model="none", grid=False))
    fine, coco = clean.summaries["fine captions"], clean.summaries["COCO captions"]
    assert fine["captions"] == len(oracle) and fine["CHAIR_i"] == 0.0 and fine["CHAIR_s"] == 0.0
    assert fine["recall"] == 1.0  # the oracle names every object of its scene
    assert coco["captions"] == 5 * len(oracle) and coco["CHAIR_i"] == 0.0 and 0.5 < coco["recall"] < 1.0

    # Plant one object the image does not hold into every 7th caption of subj01's images.
    subj01 = set(subject_nsd_ids(simnsd_root, ["subj01"]))
    objects, _ = coco_truth(simnsd_root, sorted(subj01))
    planted, records = set(), []
    for k, r in enumerate(oracle):
        r = dict(r)
        if r["nsd_id"] in subj01 and k % 7 == 0:
            extra = next(o for o in ("giraffe", "pizza", "toaster") if o not in objects[r["nsd_id"]])
            r["caption"] += f", next to a {extra}"
            planted.add(r["nsd_id"])
        records.append(r)
    path = tmp_path / "planted.jsonl"
    write_records_atomic(str(path), records)
    outcome = audit_nsd(AuditCaptionsConfig(nsd_root=simnsd_root, captions=str(path), subjects=["subj01"],
                                            output_dir=str(tmp_path / "audit"), clip_model="none", worst=len(planted),
                                            filter="flag", max_hallucinated=0))
    s = outcome.summaries["fine captions"]
    assert s["captions"] == len(subj01) and s["hallucinated_mentions"] == len(planted)
    assert s["CHAIR_s"] == pytest.approx(len(planted) / len(subj01))
    assert outcome.flagged == len(planted)
    report = open(outcome.paths["report"]).read()
    worst_ids = [int(line.split("|")[2]) for line in report.splitlines() if line.startswith("| ") and
                 line.split("|")[1].strip().isdigit()]
    assert set(worst_ids) == planted  # the worst list is exactly the planted captions
    flagged = records_of(outcome.filtered_path)
    assert len(flagged) == len(records)  # flag keeps every record, other subjects' untouched
    assert {r["nsd_id"] for r in flagged if r.get("flagged")} == planted
    dataset = load_nsd(simnsd_root, subjects=["subj01"], fine_captions=outcome.filtered_path,
                       skip_flagged_fine_captions=True, cache_dir=nsd_cache_dir)
    rows = [r for split in ("train", "validation", "test")
            for r in dataset[split].select_columns(["nsd_id", "fine_captions"]).to_list()]
    assert {r["nsd_id"] for r in rows if not r["fine_captions"]} == planted

    dropped = audit_nsd(AuditCaptionsConfig(nsd_root=simnsd_root, captions=str(path), subjects=["subj01"],
                                            output_dir=str(tmp_path / "audit2"), clip_model="none", grid=False,
                                            filter="drop", max_chair_i=0.2, filter_output=str(tmp_path / "kept.jsonl")))
    kept = records_of(tmp_path / "kept.jsonl")
    assert len(kept) == len(records) - dropped.flagged and not planted & {r["nsd_id"] for r in kept}


def test_audit_with_an_injected_clip_scorer_scores_and_filters_by_agreement(simnsd_root, tmp_path):
    from fgb2i_hf.clip import CLIPScorer
    from fgb2i_hf.data import NSDStimuli

    scorer = CLIPScorer.from_config(dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=1, width=32,
                                    patch_size=8, head_width=16), text_cfg=dict(context_length=77, vocab_size=49408,
                                    width=32, heads=2, layers=1)))
    oracle = records_of(os.path.join(simnsd_root, "fine_captions.jsonl"))[:40]
    path = tmp_path / "some.jsonl"
    write_records_atomic(str(path), oracle)
    config = AuditCaptionsConfig(nsd_root=simnsd_root, captions=str(path), output_dir=str(tmp_path / "a"),
                                 coco_captions=False)
    outcome = audit_nsd(config, scorer=scorer)
    rows = [json.loads(line) for line in open(outcome.paths["per_caption"])]
    assert len(rows) == 40 and all(r["source"] == "fine" for r in rows)
    with NSDStimuli(simnsd_root) as stim:
        i = rows[5]["nsd_id"]
        expected = float(scorer.encode_text([rows[5]["caption"]])[0] @ scorer.encode_images(stim.get([i]))[0])
    assert rows[5]["clip"] == pytest.approx(expected, abs=1e-5)
    threshold = float(np.median([r["clip"] for r in rows]))
    below = {r["nsd_id"] for r in rows if r["clip"] < threshold}
    config.min_clip, config.filter = threshold, "drop"
    filtered = audit_nsd(config, scorer=scorer)
    assert filtered.flagged == len(below) == 20
    assert {r["nsd_id"] for r in records_of(filtered.filtered_path)} == {r["nsd_id"] for r in oracle} - below
    assert outcome.summaries["fine captions"]["clip"] == pytest.approx(np.mean([r["clip"] for r in rows]))
    assert "COCO captions" not in outcome.summaries
    assert os.path.exists(outcome.paths["grid"])


def test_audit_bad_inputs_are_named(simnsd_root, tmp_path):
    base = dict(nsd_root=simnsd_root, output_dir=str(tmp_path / "a"), clip_model="none", grid=False)
    with pytest.raises(FileNotFoundError, match="no fine-captions file at"):
        audit_nsd(AuditCaptionsConfig(captions=str(tmp_path / "missing.jsonl"), **base))
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"nsd_id": 1, "caption": "a dog"}\n{"nsd_id": 2, "capt')
    with pytest.raises(CaptionCacheError, match=r"torn.jsonl:2: torn last line"):
        audit_nsd(AuditCaptionsConfig(captions=str(torn), **base))
    good = tmp_path / "good.jsonl"
    good.write_text('{"nsd_id": 1, "caption": "a dog"}\n')
    with pytest.raises(ValueError, match="filter needs at least one threshold"):
        audit_nsd(AuditCaptionsConfig(captions=str(good), filter="flag", **base))
    with pytest.raises(ValueError, match="min_clip needs CLIP"):
        audit_nsd(AuditCaptionsConfig(captions=str(good), min_clip=0.1, **base))
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"nsd_id": 99999, "caption": "a dog"}\n')
    with pytest.raises(NSDDataError, match=r"no row for nsdId \[99999\]"):
        audit_nsd(AuditCaptionsConfig(captions=str(outside), **base))
    only_subj01 = min(set(subject_nsd_ids(simnsd_root, ["subj01"])) - set(subject_nsd_ids(simnsd_root, ["subj02"])))
    good.write_text(json.dumps({"nsd_id": only_subj01, "caption": "a dog"}) + "\n")
    with pytest.raises(ValueError, match=r"no fine captions to audit for subjects \['subj02'\]"):
        audit_nsd(AuditCaptionsConfig(captions=str(good), subjects=["subj02"], **base))


def test_audit_recipe_prints_the_table(simnsd_root, tmp_path, capsys):
    out = tmp_path / "audit"
    argv = ["--nsd_root", simnsd_root, "--output_dir", str(out), "--clip_model", "none", "--subjects", "subj05",
            "--no_grid"]
    assert recipe("audit_captions")(argv) == 0
    text = capsys.readouterr().out
    assert "fine captions" in text and "COCO captions" in text and "0.0000" in text
    assert (out / "report.md").exists() and (out / "summary.json").exists() and not (out / "worst.png").exists()
