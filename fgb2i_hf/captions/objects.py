"""COCO object vocabulary and CHAIR-style object matching.

Reimplements the matching rules of CHAIR (Rohrbach et al. 2018, "Object Hallucination in Image
Captioning", LisaAnne/Hallucination:utils/chair.py) from their published description:

1. lowercase, split into words;
2. merge the multi-word names of the synonym list ("traffic light", "hot dog", "teddy bear", ...) and
   the special phrases CHAIR rewrites ("baby dog" -> dog, "passenger jet" -> jet, "bow tie" -> tie,
   "toilet seat" -> toilet);
3. singularise words that are not themselves in the vocabulary (``inflect``; CHAIR used pattern.en);
4. keep the words in the synonym vocabulary and map each to its canonical COCO category.

The synonym list is ``fgb2i_hf/captions/data/coco_synonyms.txt`` (CHAIR's ``synonyms.txt``): one line per
COCO category, canonical name first.

Shared by the caption metrics (object precision/recall/F1), the ``object_accuracy`` reward and the
hallucination audit of fine captions, so that all three count objects the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Iterable, Sequence

_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class CocoVocabulary:
    """Synonym -> canonical COCO category, plus the multi-word phrases to merge before matching."""

    categories: tuple[str, ...]
    synonym_to_category: dict[str, str]
    phrases: tuple[str, ...]  # multi-word synonyms, longest first


def _parse_synonyms(text: str, source: str) -> CocoVocabulary:
    categories: list[str] = []
    mapping: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        names = [n.strip().lower() for n in line.split(",") if n.strip()]
        if not names:
            raise ValueError(f"{source}:{lineno}: expected 'category, synonym, ...', got {line!r}")
        canonical = names[0]
        categories.append(canonical)
        for name in names:
            # First category wins for a synonym listed twice (CHAIR's behaviour: dict built in file order).
            mapping.setdefault(" ".join(name.split()), canonical)
    phrases = tuple(sorted((s for s in mapping if " " in s), key=lambda s: -len(s.split())))
    return CocoVocabulary(tuple(categories), mapping, phrases)


@lru_cache(maxsize=None)
def load_coco_vocabulary(path: str | None = None) -> CocoVocabulary:
    """Load the CHAIR synonym list (the packaged copy by default, or a file with the same format)."""
    if path is None:
        text = resources.files("fgb2i_hf.captions").joinpath("data/coco_synonyms.txt").read_text()
        return _parse_synonyms(text, "coco_synonyms.txt")
    with open(path, encoding="utf-8") as f:
        return _parse_synonyms(f.read(), path)


@lru_cache(maxsize=1)
def _inflect_engine():
    # imported here: inflect is a heavy import, needed only on this path
    import inflect

    return inflect.engine()


@lru_cache(maxsize=65536)
def _singular(word: str) -> str:
    singular = _inflect_engine().singular_noun(word)
    return singular if singular else word


def _normalise_words(words: list[str], vocab: CocoVocabulary) -> list[str]:
    """Singularise the words that are not vocabulary words as they stand."""
    out = []
    for w in words:
        if w in vocab.synonym_to_category:
            out.append(w)
        else:
            s = _singular(w)
            out.append(s if s in vocab.synonym_to_category else w)
    return out


def _merge_phrases(words: list[str], vocab: CocoVocabulary) -> list[str]:
    """Join CHAIR's multi-word names into single tokens and apply its special rewrites."""
    merged: list[str] = []
    i = 0
    phrase_lengths = sorted({len(p.split()) for p in vocab.phrases}, reverse=True)
    while i < len(words):
        w = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else None
        if nxt is not None:
            if w in ("baby", "adult") and nxt in _ANIMALS:
                merged.append(nxt)
                i += 2
                continue
            if w == "passenger" and nxt in ("jet", "train"):
                merged.append(nxt)
                i += 2
                continue
            if w == "bow" and nxt == "tie":
                merged.append("tie")
                i += 2
                continue
            if w == "toilet" and nxt == "seat":
                merged.append("toilet")
                i += 2
                continue
        for n in phrase_lengths:
            candidate = " ".join(words[i : i + n])
            if i + n <= len(words) and candidate in vocab.synonym_to_category:
                merged.append(candidate)
                i += n
                break
        else:
            merged.append(w)
            i += 1
    return merged


def caption_object_mentions(caption: str, vocab: CocoVocabulary | None = None) -> list[str]:
    """Every mention of a COCO category in ``caption``, in order, repeats kept (what CHAIR_i counts).

    >>> caption_object_mentions("A man walks a dog; the man holds a leash and the puppy runs.")
    ['person', 'dog', 'person', 'dog']
    """
    vocab = vocab or load_coco_vocabulary()
    words = _normalise_words(_WORD.findall(caption.lower()), vocab)
    return [vocab.synonym_to_category[t] for t in _merge_phrases(words, vocab) if t in vocab.synonym_to_category]


def caption_objects(caption: str, vocab: CocoVocabulary | None = None) -> list[str]:
    """COCO categories named in ``caption``, in order of first mention, without repeats.

    >>> caption_objects("Two dogs chase a frisbee near a parked motor bike.")
    ['dog', 'frisbee', 'motorcycle']
    """
    return list(dict.fromkeys(caption_object_mentions(caption, vocab)))


def canonical_objects(names: Iterable[str], vocab: CocoVocabulary | None = None) -> list[str]:
    """Map object names (COCO categories or their synonyms) to canonical categories; unknown names raise."""
    vocab = vocab or load_coco_vocabulary()
    out: dict[str, None] = {}
    for name in names:
        key = " ".join(name.lower().split())
        if key not in vocab.synonym_to_category:
            raise ValueError(f"object {name!r} is not a COCO category or synonym in the CHAIR vocabulary")
        out.setdefault(vocab.synonym_to_category[key], None)
    return list(out)


def object_prf(predicted: Sequence[str], reference: Sequence[str]) -> tuple[float, float, float]:
    """Precision, recall and F1 of one caption's objects against the reference set.

    Conventions for empty sets: nothing named and nothing to name is perfect (1, 1, 1); naming
    nothing when there is something to name gives precision 1 (no false mention) and recall 0.
    """
    pred, ref = set(predicted), set(reference)
    hits = len(pred & ref)
    precision = hits / len(pred) if pred else 1.0
    recall = hits / len(ref) if ref else 1.0
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, f1
