import pytest

from fgb2i_hf.captions.objects import caption_objects, canonical_objects, load_coco_vocabulary, object_prf


def test_vocabulary_has_the_80_coco_categories():
    vocab = load_coco_vocabulary()
    assert len(vocab.categories) == 80
    assert vocab.synonym_to_category["puppy"] == "dog"
    assert vocab.synonym_to_category["motor bike"] == "motorcycle"


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("Two dogs chase a frisbee near a parked motor bike.", ["dog", "frisbee", "motorcycle"]),
        ("A hot dog on a plate", ["hot dog"]),  # the phrase, not the animal
        ("a teddy bear", ["teddy bear"]),
        ("a baby elephant walks", ["elephant"]),
        ("a passenger train at a station", ["train"]),
        ("a man in a bow tie", ["person", "tie"]),
        ("a toilet seat", ["toilet"]),
        ("buses and knives and people", ["bus", "knife", "person"]),  # plural -> singular; 'bus' kept
        ("A puppy, a DOG and a kitten", ["dog", "cat"]),  # synonyms, case, no repeats
        ("a grey street with nothing on it", []),
    ],
)
def test_caption_objects_known_answers(caption, expected):
    assert caption_objects(caption) == expected


def test_canonical_objects_maps_synonyms_and_rejects_unknown():
    assert canonical_objects(["puppy", "Dining Table", "dog"]) == ["dog", "dining table"]
    with pytest.raises(ValueError, match="unicorn"):
        canonical_objects(["unicorn"])


@pytest.mark.parametrize(
    "pred, ref, prf",
    [
        (["dog"], ["dog", "car"], (1.0, 0.5, 2 / 3)),
        (["dog", "cat"], ["dog"], (0.5, 1.0, 2 / 3)),
        ([], ["dog"], (1.0, 0.0, 0.0)),
        ([], [], (1.0, 1.0, 1.0)),
        (["cat"], ["dog"], (0.0, 0.0, 0.0)),
    ],
)
def test_object_prf(pred, ref, prf):
    assert object_prf(pred, ref) == pytest.approx(prf)
