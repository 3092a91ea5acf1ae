"""Object precision/recall/F1 with CHAIR matching: known answers and bad input."""

import pytest

from fgb2i_hf.metrics import object_metrics

PREDICTIONS = ["A dog chases a cat near a car.", "Two people ride bikes.", "An empty room."]
OBJECTS = [["dog", "car", "person"], ["people", "bike"], ["chair"]]  # synonyms map to categories


def test_object_metrics_known_answer():
    # Caption 1 names {dog, cat, car} of {dog, car, person}: 2 hits, 3 named, 3 present.
    # Caption 2 names {person, bicycle} of {person, bicycle}: 2, 2, 2.
    # Caption 3 names nothing of {chair}: 0, 0, 1 (per-caption P = 1 by convention, R = 0, F1 = 0).
    out = object_metrics(PREDICTIONS, OBJECTS)
    assert out["precision"] == pytest.approx(4 / 5)
    assert out["recall"] == pytest.approx(4 / 6)
    assert out["f1"] == pytest.approx(2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6))
    assert out["f1_macro"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_perfect_and_empty_conventions():
    assert object_metrics(["a dog on a couch"], [["couch", "dog"]]) == {
        "precision": 1.0, "recall": 1.0, "f1": 1.0, "f1_macro": 1.0}
    # Nothing named and nothing to name is perfect; naming objects of an empty image is precision 0.
    assert object_metrics(["a quiet street"], [[]])["f1"] == 1.0
    out = object_metrics(["a dog"], [[]])
    assert out["precision"] == 0.0 and out["recall"] == 1.0 and out["f1"] == 0.0


@pytest.mark.parametrize("predictions, objects, message", [
    (["a dog"], [["dog"], ["cat"]], "1 predictions but 2 object lists"),
    (["a dog"], [["unicorn"]], r"objects\[0\]: object 'unicorn' is not a COCO category"),
    (["a dog"], ["dog"], r"objects\[0\] must be a list"),
    ([], [], "at least one prediction"),
    ([None], [["dog"]], r"predictions\[0\] must be a str"),
])
def test_bad_object_input(predictions, objects, message):
    with pytest.raises(ValueError, match=message):
        object_metrics(predictions, objects)
