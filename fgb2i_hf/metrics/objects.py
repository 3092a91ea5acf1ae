"""``object_metrics``: precision, recall and F1 of the COCO objects a caption names.

Objects are found in each caption with CHAIR's matching rules (Rohrbach et al. 2018;
:func:`fgb2i_hf.captions.objects.caption_objects`) and compared, as sets, with the image's ground-truth
objects (COCO instance categories; synonyms are mapped to their category). This is our construction —
the brain-captioning literature has no standard object metric (docs/metrics.md).

Aggregation:

* ``precision``, ``recall``, ``f1`` — micro-averaged over the corpus: P = sum of hits / sum of named
  objects, R = sum of hits / sum of ground-truth objects, F1 = 2PR / (P + R). Every mention counts
  once, so images with many objects weigh more. Empty sums follow :func:`object_prf`'s convention
  (naming nothing is precision 1; nothing to name is recall 1).
* ``f1_macro`` — the mean of the per-caption F1 (:func:`object_prf`), each image weighing the same;
  this is the per-sample quantity the ``object_accuracy`` reward uses.
"""

from __future__ import annotations

from typing import Sequence

from ..captions.objects import CocoVocabulary, canonical_objects, caption_objects, load_coco_vocabulary, object_prf


def object_metrics(predictions: list[str], objects: list[list[str]],
                   vocabulary: CocoVocabulary | None = None) -> dict[str, float]:
    """Object precision/recall/F1 (micro) and mean per-caption F1 (``f1_macro``) of ``predictions``.

    ``objects[i]`` lists the ground-truth object names of image i (COCO categories or CHAIR synonyms;
    an unknown name raises ValueError).
    """
    if isinstance(predictions, str) or not isinstance(predictions, Sequence):
        raise ValueError(f"predictions must be a list of strings, got {type(predictions).__name__}")
    if isinstance(objects, str) or not isinstance(objects, Sequence):
        raise ValueError(f"objects must be a list of lists of object names, got {type(objects).__name__}")
    if len(predictions) != len(objects):
        raise ValueError(f"got {len(predictions)} predictions but {len(objects)} object lists; they must be parallel")
    if not predictions:
        raise ValueError("object metrics need at least one prediction")
    vocabulary = vocabulary or load_coco_vocabulary()
    hits = named = present = 0
    f1s = []
    for i, (caption, names) in enumerate(zip(predictions, objects)):
        if not isinstance(caption, str):
            raise ValueError(f"predictions[{i}] must be a str, got {type(caption).__name__}")
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise ValueError(f"objects[{i}] must be a list of object names, got {type(names).__name__}")
        try:
            truth = set(canonical_objects(names, vocabulary))
        except ValueError as err:
            raise ValueError(f"objects[{i}]: {err}") from None
        mentioned = set(caption_objects(caption, vocabulary))
        hits += len(mentioned & truth)
        named += len(mentioned)
        present += len(truth)
        f1s.append(object_prf(mentioned, truth)[2])
    precision = hits / named if named else 1.0
    recall = hits / present if present else 1.0
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "f1_macro": sum(f1s) / len(f1s)}
