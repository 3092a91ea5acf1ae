"""Caption metrics: agreement with pycocoevalcap, known answers, PTB tokenisation, bad input.

The agreement tests need Java (the PTB tokenizer and METEOR jars); one module-scoped run of each
side is shared by all of them (each METEOR jar takes ~10 s to start).
"""

import math

import pytest

from fgb2i_hf.metrics import caption_metrics, cider_d_scores, corpus_bleu, ptb_tokenize, rouge_l_scores
from fgb2i_hf.metrics.meteor import MeteorScorer
from fgb2i_hf.metrics.ptb import python_ptb_tokenize

# A fixed, hand-written caption set: exact hits, paraphrases, short and long candidates, repeated
# words, punctuation, brackets, contractions, a candidate with no 3-gram match, 2-4 references each.
PREDICTIONS = [
    "a dog runs on the grass.",
    "Two cats sleeping on a red couch",
    "a man riding a wave on top of a surfboard",
    "A plate of food with broccoli and rice!",
    "a bus",
    "an elephant",
    "People standing near a stop sign, in the rain.",
    "a kitchen with a stove and a refrigerator and a refrigerator",
    "A woman's umbrella (blue) isn't open",
    "a giraffe standing next to a tall tree in a zoo enclosure with rocks",
]
REFERENCES = [
    ["A brown dog is running across a grassy field.", "A dog runs on the grass", "The dog is playing outside."],
    ["Two cats are asleep on a red sofa.", "A pair of cats sleeping on a couch.",
     "Cats napping on the red couch in a living room."],
    ["A surfer rides a large wave.", "A man riding a wave on top of a surfboard.", "Someone surfing in the ocean",
     "A person on a surfboard riding a wave."],
    ["A plate with broccoli, rice and chicken.", "Rice and broccoli on a white plate."],
    ["A red double-decker bus drives down the street.", "A bus on a city road."],
    ["A large elephant stands in the dirt.", "An elephant walking near trees."],
    ["A group of people wait at a stop sign while it's raining.", "People with umbrellas near a stop sign."],
    ["A kitchen with white cabinets and a stove.", "A small kitchen has a refrigerator and a stove.",
     "Kitchen appliances in a clean kitchen."],
    ["A woman holds a closed blue umbrella.", "The umbrella isn't open; it's blue."],
    ["A giraffe next to a tree.", "A tall giraffe standing in an enclosure at the zoo.",
     "Giraffe eating leaves from a tree."],
]


@pytest.fixture(scope="module")
def runs():
    """One shared run of each side (each METEOR jar takes 10+ s to start on 2 busy cores): pycocoevalcap's
    COCOEvalCap pipeline (PTBTokenizer, then each scorer) and our caption_metrics with one MeteorScorer
    reused for a second call."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with MeteorScorer() as reused:
        ours = caption_metrics(PREDICTIONS, REFERENCES, tokenizer="java", meteor=reused)
        ours_reused = caption_metrics(PREDICTIONS, REFERENCES, metrics=["METEOR"], tokenizer="java", meteor=reused)
        identical = reused.score(["a dog runs on the grass"], [["a dog runs on the grass"]])

    coco_meteor = Meteor()
    gts = {i: [{"caption": r} for r in refs] for i, refs in enumerate(REFERENCES)}
    res = {i: [{"caption": p}] for i, p in enumerate(PREDICTIONS)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    coco = {f"BLEU-{n}": b for n, b in enumerate(bleu, 1)}
    coco["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    coco["CIDEr"] = Cider().compute_score(gts, res)[0]
    coco["METEOR"] = coco_meteor.compute_score(gts, res)[0]
    coco_tokens = [res[i][0] for i in range(len(PREDICTIONS))] + [r for i in range(len(REFERENCES)) for r in gts[i]]
    return dict(coco=coco, coco_tokens=coco_tokens, ours=ours, ours_reused=ours_reused, identical=identical)


def test_caption_metrics_agree_with_pycocoevalcap(runs):
    ours, reference = runs["ours"], runs["coco"]
    assert list(ours) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
    for name, value in ours.items():
        assert value == pytest.approx(reference[name], abs=1e-6), name
    # The set is not degenerate: every metric is well inside its range.
    assert 0.2 < ours["BLEU-4"] < ours["BLEU-1"] < 1 and 0.1 < ours["METEOR"] < 1 and 1 < ours["CIDEr"] < 10


def test_java_tokenizer_matches_pycocoevalcap(runs):
    tokenised = runs["coco_tokens"]
    ours = ptb_tokenize(PREDICTIONS + [r for refs in REFERENCES for r in refs], backend="java")
    assert ours == tokenised
    assert "woman 's umbrella -lrb- blue -rrb- is n't open" in ours[8]  # lowercased brackets stay, as in COCO


def test_python_tokenizer_matches_java_on_captions():
    sentences = PREDICTIONS + [r for refs in REFERENCES for r in refs] + [
        "I cannot believe we're gonna win, you'd think they'll see it. I'm ok.",
        "A dog's toys: balls, ropes, etc. are on the floor.",
        "Two people stand near a \"stop\" sign... It's 10am.",
        "There's a cat -- on the mat - near the t.v. and the T-shirt",
        "What is this? A picture of a bus/train station at 7:00 p.m.",
        "The zebra's stripes (black & white) are visible [really] {yes}.",
        "A man with a cell-phone is standing in front of Mr. Smith's store.",
        "Several giraffes' heads above the trees!!!",
        "Three kids wanna play; a 2-year-old boy 'stands' by the wall",
        "\u201cCurly quotes\u201d and \u2018single\u2019 and an em\u2014dash and ellipsis\u2026 done",
        "A 1950's style car, a 3D tv, $1,000.50, 50% off, 4x4 truck, co-op",
        "a woman holding an umbrella.A man walks",
    ]
    assert [python_ptb_tokenize(s) for s in sentences] == ptb_tokenize(sentences, backend="java")


def test_python_tokenizer_known_answers():
    assert python_ptb_tokenize("A man's dog can't run (fast)!") == "a man 's dog ca n't run -lrb- fast -rrb-"
    assert python_ptb_tokenize("Dogs, cats; and U.S. birds...") == "dogs cats and u.s. birds"
    assert python_ptb_tokenize("line one\nline two") == "line one line two"


def test_line_breaks_inside_captions_keep_alignment():
    out = ptb_tokenize(["a\rb", "c\u2028d", "e"], backend="java")
    assert out == ["a b", "c d", "e"]


def test_bleu_known_answer():
    cand = "the cat sat on the mat".split()
    ref = "the cat is on the mat".split()
    b1, b2, b3, b4 = corpus_bleu([cand], [[ref]])
    # p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0/3 (COCO's 1e-15 smoothing), equal lengths: no brevity penalty.
    assert b1 == pytest.approx(5 / 6, abs=1e-9)
    assert b2 == pytest.approx(math.sqrt(5 / 6 * 3 / 5), abs=1e-9)
    assert b3 == pytest.approx(0.5, abs=1e-9)
    assert b4 == pytest.approx((5 / 6 * 3 / 5 * 1 / 4 * 1e-15 / 3) ** 0.25, rel=1e-6)
    # Brevity penalty with the closest reference length (4 beats 9 for a 3-word candidate).
    short = corpus_bleu([["the", "cat", "sat"]], [[["the", "cat", "sat", "down"], ["x"] * 9]], max_n=1)[0]
    assert short == pytest.approx(math.exp(1 - 4 / 3), abs=1e-9)


def test_rouge_l_known_answer():
    assert rouge_l_scores([["the", "cat", "sat", "on", "the", "mat"]],
                          [[["the", "cat", "is", "on", "the", "mat"]]])[0] == pytest.approx(5 / 6)
    # Precision and recall maximised separately over references (COCO's rule): P from ref 2, R from ref 1.
    p, r, b2 = 3 / 4, 1.0, 1.2**2
    score = rouge_l_scores([list("abcd")], [[list("ab"), list("abcxyzw")]])[0]
    assert score == pytest.approx((1 + b2) * p * r / (r + b2 * p))


def test_cider_known_answer():
    # Image 1 matches its reference exactly (cosine 1 for 1- and 2-grams, no 3/4-grams): (1+1+0+0)/4*10 = 5;
    # image 2 shares nothing with its reference: 0.
    scores = cider_d_scores([["a", "b"], ["c", "d"]], [[["a", "b"]], [["e", "f"]]])
    assert scores == pytest.approx([5.0, 0.0])
    # Length penalty: 3 extra words cost exp(-9 / 72).
    longer = cider_d_scores([["a", "b", "x", "y", "z"], ["c"]], [[["a", "b"]], [["e"]]])[0]
    assert 0 < longer < 5.0
    # A single image: idf is log(1) - log(1) = 0 everywhere, so CIDEr is 0 (as in COCO's code).
    assert cider_d_scores([["a", "b"]], [[["a", "b"]]]) == [0.0]


def test_identical_captions_score_top_marks():
    refs = [["a small dog runs across the green grass"], ["two red cars parked near a tall building"]]
    out = caption_metrics([r[0] for r in refs], refs, metrics=["BLEU", "ROUGE-L"], tokenizer="python")
    assert out["BLEU-4"] == pytest.approx(1.0, abs=1e-9) and out["ROUGE-L"] == pytest.approx(1.0)


def test_metric_subset_skips_meteor_and_keeps_order():
    out = caption_metrics(PREDICTIONS[:3], REFERENCES[:3], metrics=["CIDEr", "BLEU-4"], tokenizer="python")
    assert list(out) == ["BLEU-4", "CIDEr"]
    assert caption_metrics(PREDICTIONS[:3], REFERENCES[:3], metrics="BLEU", tokenizer="python").keys() == {
        "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"}


def test_meteor_scorer_reused_across_calls(runs):
    assert runs["ours_reused"]["METEOR"] == pytest.approx(runs["ours"]["METEOR"], abs=1e-12)
    corpus, per_caption = runs["identical"]
    assert corpus == pytest.approx(1.0, abs=1e-3) and len(per_caption) == 1


def test_default_meteor_process_is_started_once_and_closed(monkeypatch):
    import fgb2i_hf.metrics.captions as captions

    events = []

    class FakeMeteor:
        def __init__(self):
            events.append("start")

        def score(self, candidates, references):
            events.append(("score", tuple(candidates)))
            return 0.5, [0.5] * len(candidates)

        def close(self):
            events.append("close")

    monkeypatch.setattr(captions, "MeteorScorer", FakeMeteor)
    out = caption_metrics(["A dog, running."], [["a dog"]], tokenizer="python")
    assert out["METEOR"] == 0.5
    assert events == ["start", ("score", ("a dog running",)), "close"]  # scored on tokenised text
    events.clear()
    with pytest.raises(ValueError):
        caption_metrics(["a"], [["a"]], metrics=["METEOR"], tokenizer="no-such-backend")
    assert events == []  # bad arguments are caught before the jar starts
    events.clear()
    caption_metrics(["a"], [["a"]], metrics=["BLEU", "CIDEr"], tokenizer="python")
    assert events == []  # no METEOR asked, no process


@pytest.mark.parametrize("predictions, references, message", [
    (["a", "b"], [["a"]], "2 predictions but 1 reference"),
    ("a dog", [["a dog"]], "predictions must be a list"),
    (["a dog"], ["a dog"], r"references\[0\] must be a list of strings"),
    (["a dog"], [[]], r"references\[0\] is empty"),
    ([3], [["a"]], r"predictions\[0\] must be a str"),
    ([], [], "at least one prediction"),
])
def test_bad_caption_input(predictions, references, message):
    with pytest.raises(ValueError, match=message):
        caption_metrics(predictions, references, tokenizer="python")


def test_unknown_metric_and_tokenizer_names():
    with pytest.raises(ValueError, match="unknown caption metric 'SPICE'"):
        caption_metrics(["a"], [["a"]], metrics=["SPICE"], tokenizer="python")
    with pytest.raises(ValueError, match="tokenizer backend"):
        caption_metrics(["a"], [["a"]], metrics=["BLEU"], tokenizer="nltk")
