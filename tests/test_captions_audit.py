import json

import numpy as np
import pytest
import torch

from captions_helpers import ArrayStimuli, random_images
from fgb2i_hf.captions.audit import (AuditThresholds, audit_captions, clip_agreement, filter_records, flag_audits,
                                     image_truth, render_report, summarize, worst_captions, write_report)
from fgb2i_hf.captions.objects import caption_object_mentions

# Three images with known objects, and captions whose hallucinations are counted by hand.
OBJECTS = {10: ["person", "dog", "frisbee"], 11: ["cat", "couch"], 12: []}
FINE = [
    (10, "A man throws a frisbee to his dog on the grass."),  # person, frisbee, dog: 0 of 3 hallucinated
    (11, "A cat sleeps on a couch next to a dog and a remote; the dog is brown."),  # cat, couch, dog, remote, dog: 3 of 5
    (12, "An empty street at night."),  # nothing named
    (10, "A woman with a kite."),  # person, kite: 1 of 2
]
COCO = {10: ["A person playing frisbee with a dog.", "A guy and his puppy."],
        11: ["A cat on a sofa.", "A kitten lying on a couch near a television."],
        12: ["A quiet road."]}


def test_mentions_keep_repeats_for_chair_i():
    assert caption_object_mentions(FINE[1][1]) == ["cat", "couch", "dog", "remote", "dog"]


def test_chair_numbers_on_hand_made_captions():
    truth = image_truth([10, 11, 12], OBJECTS)
    audits = audit_captions(FINE, truth)
    assert [a.hallucinated for a in audits] == [[], ["dog", "remote", "dog"], [], ["kite"]]
    assert [a.chair_i for a in audits] == [0.0, 3 / 5, None, 1 / 2]
    assert [a.recall for a in audits] == [1.0, 1.0, None, 1 / 3]
    s = summarize(audits)
    assert s["mentions"] == 3 + 5 + 0 + 2 and s["hallucinated_mentions"] == 4
    assert s["CHAIR_i"] == pytest.approx(4 / 10)
    assert s["CHAIR_s"] == pytest.approx(2 / 4)
    assert s["recall"] == pytest.approx((1 + 1 + 1 / 3) / 3) and s["recall_captions"] == 3
    assert s["captions"] == 4 and s["images"] == 3
    assert s["objects_per_caption"] == pytest.approx((3 + 4 + 0 + 2) / 4)


def test_coco_captions_side_by_side_and_chair_truth_with_caption_objects():
    truth = image_truth([10, 11, 12], OBJECTS)
    coco = audit_captions([(i, c) for i, caps in COCO.items() for c in caps], truth, source="coco")
    # "television" -> tv is not an instance of image 11: the COCO captions hallucinate once in 3+2+2+3 mentions
    s = summarize(coco)
    assert (s["mentions"], s["hallucinated_mentions"], s["captions"]) == (10, 1, 5)
    assert s["CHAIR_s"] == pytest.approx(1 / 5)
    assert all(a.record_index is None for a in coco)
    # CHAIR's own truth adds the objects the COCO captions name: tv becomes true for image 11
    chair_truth = image_truth([10, 11, 12], OBJECTS, COCO, truth="instances+captions")
    assert chair_truth[11] == ["cat", "couch", "tv"] and chair_truth[12] == []
    assert summarize(audit_captions([(i, c) for i, caps in COCO.items() for c in caps], chair_truth))["CHAIR_i"] == 0.0
    with pytest.raises(ValueError, match="truth must be one of"):
        image_truth([10], OBJECTS, truth="captions")


def test_missing_objects_for_a_captioned_image_are_named():
    with pytest.raises(KeyError, match="nsd_id 99"):
        image_truth([10, 99], OBJECTS)
    with pytest.raises(ValueError, match="unicorn"):
        image_truth([1], {1: ["unicorn"]})


class FakeCLIP:
    """Text and images embed to one-hot vectors: a caption agrees with image i iff it contains 'img{i}'."""

    def encode_text(self, texts):
        return torch.stack([torch.eye(4)[next((i for i in range(4) if f"img{i}" in t), 3)] for t in texts])

    def encode_images(self, images):
        return torch.eye(4)[[int(im[0, 0, 0]) for im in images]]


def test_clip_agreement_pairs_each_caption_with_its_own_image():
    images = np.zeros((3, 8, 8, 3), np.uint8)
    images[:, 0, 0, 0] = [0, 1, 2]
    audits = audit_captions([(0, "img0 a dog"), (1, "img2 a cat"), (2, "img2")], {0: [], 1: [], 2: []})
    clip_agreement(audits, FakeCLIP(), ArrayStimuli(images), batch_size=2)
    assert [a.clip for a in audits] == [1.0, 0.0, 1.0]
    assert summarize(audits)["clip"] == pytest.approx(2 / 3)


def test_clip_agreement_with_a_real_clip_scorer_is_a_cosine():
    from fgb2i_hf.clip import CLIPScorer

    scorer = CLIPScorer.from_config(dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8,
                                    head_width=16), text_cfg=dict(context_length=77, vocab_size=49408, width=32,
                                    heads=2, layers=1)))
    audits = audit_captions([(0, "a dog"), (1, "a cat")], {0: ["dog"], 1: ["cat"]})
    images = random_images(2)
    clip_agreement(audits, scorer, ArrayStimuli(images))
    expected = (scorer.encode_text(["a dog", "a cat"]) * scorer.encode_images(images)).sum(-1)
    assert [a.clip for a in audits] == pytest.approx(expected.tolist(), abs=1e-6)


def test_filter_flags_or_drops_records_past_thresholds():
    records = [{"nsd_id": i, "caption": c, "model": "m", "settings_hash": "h"} for i, c in FINE]
    records[0]["flagged"] = True  # a stale flag from an earlier filter is cleared
    audits = audit_captions(FINE, image_truth([10, 11, 12], OBJECTS))
    for a, clip in zip(audits, [0.30, 0.25, 0.10, 0.28]):
        a.clip = clip
    assert flag_audits(audits, AuditThresholds(max_hallucinated=1)) == 1  # only the 3-hallucination caption
    assert flag_audits(audits, AuditThresholds(max_chair_i=0.5)) == 1
    assert flag_audits(audits, AuditThresholds(max_chair_i=0.4)) == 2
    n = flag_audits(audits, AuditThresholds(max_hallucinated=2, min_clip=0.2))
    assert n == 2 and audits[1].flags == ["hallucinated 3 > 2"] and audits[2].flags == ["CLIP 0.100 < 0.2"]
    flagged = filter_records(records, audits, "flag")
    assert [r.get("flagged", False) for r in flagged] == [False, True, True, False]
    assert flagged[1]["flag_reasons"] == ["hallucinated 3 > 2"] and flagged[1]["caption"] == FINE[1][1]
    assert "flagged" not in flagged[0] and records[0]["flagged"] is True  # inputs are not modified
    dropped = filter_records(records, audits, "drop")
    assert [r["nsd_id"] for r in dropped] == [10, 10] and all("flagged" not in r for r in dropped)
    with pytest.raises(ValueError, match="'flag' or 'drop'"):
        filter_records(records, audits, "delete")
    no_clip = audit_captions(FINE, image_truth([10, 11, 12], OBJECTS))
    with pytest.raises(ValueError, match="min_clip needs CLIP"):
        flag_audits(no_clip, AuditThresholds(min_clip=0.2))


def test_worst_captions_rank_by_hallucinations_then_chair_i_then_clip():
    audits = audit_captions(FINE, image_truth([10, 11, 12], OBJECTS))
    assert [a.caption for a in worst_captions(audits, 2)] == [FINE[1][1], FINE[3][1]]


def test_report_has_the_numbers_the_worst_captions_and_the_grid(tmp_path):
    truth = image_truth([10, 11, 12], OBJECTS)
    fine = audit_captions(FINE, truth)
    coco = audit_captions([(i, c) for i, caps in COCO.items() for c in caps], truth, source="coco")
    paths = write_report(str(tmp_path), fine, coco, {"cache": "f.jsonl", "truth": "instances"},
                         stimuli=ArrayStimuli(random_images(13)), worst=2)
    report = open(paths["report"]).read()
    assert "| **CHAIR_i** (hallucinated / mentions) | 0.4000 | 0.1000 |" in report
    assert "| **CHAIR_s** (captions with >= 1 hallucination) | 0.5000 | 0.2000 |" in report
    assert "| fine captions | COCO captions |" in report
    assert f"| 1 | 11 | {FINE[1][1]} | dog, remote | cat, couch, dog, remote | cat, couch |" in report
    assert "## The 2 worst fine captions" in report and "worst.png" in report
    summary = json.load(open(paths["summary"]))
    assert summary["fine captions"]["CHAIR_i"] == pytest.approx(0.4) and summary["settings"]["truth"] == "instances"
    rows = [json.loads(line) for line in open(paths["per_caption"])]
    assert len(rows) == 4 + 5 and rows[1]["hallucinated"] == ["dog", "remote", "dog"] and rows[1]["chair_i"] == 0.6
    from PIL import Image

    assert Image.open(paths["grid"]).size == (2 * 160, 160 + 28)  # the two worst, one row
    assert not list(tmp_path.glob("*.tmp*"))


def test_report_without_coco_or_clip_leaves_those_out():
    audits = audit_captions(FINE[:1], image_truth([10], OBJECTS))
    text = render_report({"fine captions": summarize(audits)}, audits, {})
    assert "CLIP agreement" not in text and "COCO captions" not in text and "| 0.0000 |" in text


def test_worst_captions_break_ties_by_recall():
    truth = {1: ["dog", "cat"], 2: ["dog", "cat"], 3: ["dog"]}
    audits = audit_captions([(1, "a dog and a cat"), (2, "a dog"), (3, "a dog")], truth)
    assert [a.nsd_id for a in worst_captions(audits, 3)] == [2, 1, 3]
