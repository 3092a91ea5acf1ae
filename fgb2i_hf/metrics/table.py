"""Metric tables for recipes and reports: markdown (with deltas against a baseline row) and JSON.

``rows`` maps a row name (a method, a checkpoint, a control) to ``{column: value}``::

    >>> print(format_table({"control": {"BLEU-4": 0.05, "SwAV": 0.6},
    ...                     "model": {"BLEU-4": 0.12, "SwAV": 0.5}}, baseline="control"))
    | | BLEU-4 | SwAV ↓ |
    |---|---|---|
    | control | 0.0500 | 0.6000 |
    | model | 0.1200 (+0.0700) | 0.5000 (-0.1000) |

Columns where lower is better (EffNet-B, SwAV by default) carry a ↓. Two-way identification columns
are printed as percentages, as in MindEye's tables (values stay fractions in the JSON).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from ..core import atomic_write_json, atomic_write_text
from .reconstruction import FEATURE_COLUMNS, LOWER_IS_BETTER

PERCENT_COLUMNS = frozenset(c for c, (_, _, score) in FEATURE_COLUMNS.items() if score == "two_way")


def _columns(rows: Mapping[str, Mapping[str, float]], columns: Iterable[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    seen: dict[str, None] = {}
    for values in rows.values():
        for c in values:
            seen.setdefault(c, None)
    return list(seen)


def table_deltas(rows: Mapping[str, Mapping[str, float]], baseline: str) -> dict[str, dict[str, float]]:
    """``{row: {column: value - baseline value}}`` for every row other than ``baseline``."""
    if baseline not in rows:
        raise ValueError(f"baseline row {baseline!r} not among the rows {list(rows)}")
    base = rows[baseline]
    return {name: {c: float(v) - float(base[c]) for c, v in values.items() if c in base}
            for name, values in rows.items() if name != baseline}


def format_table(rows: Mapping[str, Mapping[str, float]], baseline: str | None = None,
                 columns: Iterable[str] | None = None, digits: int = 4,
                 percent: Iterable[str] = PERCENT_COLUMNS, lower_is_better: Iterable[str] = LOWER_IS_BETTER) -> str:
    """A markdown table of ``rows``; with ``baseline``, other rows show ``value (+delta)`` against it."""
    if not rows:
        raise ValueError("format_table needs at least one row")
    columns = _columns(rows, columns)
    percent, lower = set(percent), set(lower_is_better)
    deltas = table_deltas(rows, baseline) if baseline is not None else {}

    def cell(column: str, value, delta=None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        scale, unit, places = (100.0, "%", max(digits - 2, 0)) if column in percent else (1.0, "", digits)
        text = f"{float(value) * scale:.{places}f}{unit}"
        if delta is not None:
            text += f" ({delta * scale:+.{places}f})"
        return text

    header = "| | " + " | ".join(c + (" ↓" if c in lower else "") for c in columns) + " |"
    lines = [header, "|---|" + "---|" * len(columns)]
    for name, values in rows.items():
        cells = [cell(c, values.get(c), deltas.get(name, {}).get(c)) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_json(rows: Mapping[str, Mapping[str, float]], baseline: str | None = None) -> dict:
    """The same table as a JSON-ready dict: ``{"rows": ..., "baseline": ..., "deltas": ...}``."""
    out = {"rows": {n: {c: float(v) for c, v in values.items()} for n, values in rows.items()}, "baseline": baseline}
    if baseline is not None:
        out["deltas"] = table_deltas(rows, baseline)
    return out


def write_table(rows: Mapping[str, Mapping[str, float]], path_stem: str, baseline: str | None = None, **kwargs) -> tuple[str, str]:
    """Write ``<path_stem>.md`` and ``<path_stem>.json`` (each atomically); return both paths."""
    paths = (path_stem + ".md", path_stem + ".json")
    atomic_write_text(paths[0], format_table(rows, baseline, **kwargs) + "\n")
    atomic_write_json(paths[1], table_json(rows, baseline))
    return paths
