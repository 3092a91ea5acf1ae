"""``caption_metrics``: the COCO caption evaluation (BLEU-1..4, METEOR, ROUGE-L, CIDEr) on lists.

Same pipeline as pycocoevalcap's ``COCOEvalCap`` (which BrainHub's tables use): PTB-tokenise candidates
and references (:mod:`.ptb`), then score. BLEU, ROUGE-L and CIDEr(-D) are reimplemented in
:mod:`.coco_caption`; METEOR runs pycocoevalcap's METEOR 1.5 jar (:mod:`.meteor`). SPICE is left out:
it needs Stanford CoreNLP 3.6.0, which pycocoevalcap downloads on first use.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from .coco_caption import cider_d_scores, corpus_bleu, rouge_l_scores
from .meteor import MeteorScorer
from .ptb import ptb_tokenize

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def check_captions(predictions, references) -> None:
    """Raise ValueError unless ``predictions`` is a list of str and ``references`` a parallel list of lists of str."""
    if isinstance(predictions, str) or not isinstance(predictions, Sequence):
        raise ValueError(f"predictions must be a list of strings, got {type(predictions).__name__}")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise ValueError(f"references must be a list of lists of strings, got {type(references).__name__}")
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} reference lists; "
                         "they must be parallel (references[i] are the references of predictions[i])")
    if not predictions:
        raise ValueError("caption metrics need at least one prediction")
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if not isinstance(pred, str):
            raise ValueError(f"predictions[{i}] must be a str, got {type(pred).__name__}")
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise ValueError(f"references[{i}] must be a list of strings (all references of one image), "
                             f"got {type(refs).__name__}")
        if not refs:
            raise ValueError(f"references[{i}] is empty: every prediction needs at least one reference")
        for j, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise ValueError(f"references[{i}][{j}] must be a str, got {type(ref).__name__}")


def _selected(metrics: Iterable[str] | None) -> list[str]:
    if metrics is None:
        return list(CAPTION_METRICS)
    if isinstance(metrics, str):
        metrics = [metrics]
    requested: set[str] = set()
    for name in metrics:
        names = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"] if name == "BLEU" else [name]
        for n in names:
            if n not in CAPTION_METRICS:
                raise ValueError(f"unknown caption metric {name!r}; choose from {list(CAPTION_METRICS)} or 'BLEU'")
            requested.add(n)
    if not requested:
        raise ValueError("metrics is empty: name at least one caption metric")
    return [n for n in CAPTION_METRICS if n in requested]  # always in the canonical order


def caption_metrics(predictions: list[str], references: list[list[str]], metrics: Iterable[str] | None = None,
                    tokenizer: str = "auto", meteor: MeteorScorer | None = None) -> dict[str, float]:
    """COCO caption metrics of ``predictions`` against all their ``references``, on COCO's scale.

    Args:
        predictions: one caption per image.
        references: ``references[i]`` is the list of reference captions of image i (at least one).
        metrics: subset of ``BLEU-1``..``BLEU-4``, ``METEOR``, ``ROUGE-L``, ``CIDEr`` (``"BLEU"`` = all four);
            default all. Leave out ``METEOR`` in fast loops: its jar takes ~10 s to start.
        tokenizer: ``"java"`` (Stanford PTBTokenizer, as pycocoevalcap), ``"python"`` (pure-Python
            approximation, not bit-identical) or ``"auto"`` (Java when present).
        meteor: an open :class:`MeteorScorer` to reuse; by default one is started and closed per call.

    Returns:
        ``{name: score}`` for the chosen metrics; all in [0, 1] except CIDEr (0 to 10).
    """
    check_captions(predictions, references)
    chosen = _selected(metrics)
    if tokenizer not in ("auto", "java", "python"):
        raise ValueError(f"tokenizer backend must be 'auto', 'java' or 'python', got {tokenizer!r}")
    # Start METEOR's jar first: it loads its paraphrase table (~10 s) while we tokenise and score the rest.
    own_meteor = MeteorScorer() if "METEOR" in chosen and meteor is None else None
    try:
        return _caption_metrics(predictions, references, chosen, tokenizer, meteor or own_meteor)
    finally:
        if own_meteor is not None:
            own_meteor.close()


def _caption_metrics(predictions, references, chosen, tokenizer, meteor) -> dict[str, float]:
    # One tokenizer process for candidates and references together.
    flat_refs = [r for refs in references for r in refs]
    tokenised = ptb_tokenize(list(predictions) + flat_refs, backend=tokenizer)
    cand_strings = tokenised[: len(predictions)]
    ref_strings: list[list[str]] = []
    offset = len(predictions)
    for refs in references:
        ref_strings.append(tokenised[offset : offset + len(refs)])
        offset += len(refs)
    cands = [c.split() for c in cand_strings]
    refs_tok = [[r.split() for r in refs] for refs in ref_strings]

    out: dict[str, float] = {}
    if any(name.startswith("BLEU") for name in chosen):
        for n, score in enumerate(corpus_bleu(cands, refs_tok, 4), 1):
            out[f"BLEU-{n}"] = score
    if "ROUGE-L" in chosen:
        scores = rouge_l_scores(cands, refs_tok)
        out["ROUGE-L"] = sum(scores) / len(scores)
    if "CIDEr" in chosen:
        scores = cider_d_scores(cands, refs_tok)
        out["CIDEr"] = sum(scores) / len(scores)
    if "METEOR" in chosen:  # last, so that the jar had the most time to start
        out["METEOR"] = meteor.score(cand_strings, ref_strings)[0]
    return {name: float(out[name]) for name in chosen}
