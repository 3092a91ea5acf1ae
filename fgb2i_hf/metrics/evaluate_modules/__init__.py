"""Paths of the ``evaluate`` modules that wrap :mod:`fgb2i_hf.metrics` (load them by path, offline).

    >>> import evaluate
    >>> from fgb2i_hf.metrics import evaluate_module_path
    >>> bleu_and_co = evaluate.load(evaluate_module_path("caption_metrics"))       # doctest: +SKIP
"""

from __future__ import annotations

import os

EVALUATE_MODULES = ("caption_metrics", "object_metrics", "clip_score", "sentence_similarity", "reconstruction_metrics")


def evaluate_module_path(name: str) -> str:
    """Path of the script of evaluate module ``name`` (one of :data:`EVALUATE_MODULES`)."""
    if name not in EVALUATE_MODULES:
        raise ValueError(f"unknown evaluate module {name!r}; choose from {list(EVALUATE_MODULES)}")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name, f"{name}.py")


def evaluate_module_paths() -> dict[str, str]:
    """``{name: script path}`` of all our evaluate modules."""
    return {name: evaluate_module_path(name) for name in EVALUATE_MODULES}
