"""Figures of a run, drawn with matplotlib (no pyplot state) and written as PNG, atomically.

* :func:`training_curves` — stage 1's training and validation losses and validation caption metrics (the
  ``log_history`` of transformers' Trainer), stage 2's losses and each reward (the REINFORCE trainer's
  ``log.jsonl``), against the optimiser step;
* :func:`metric_sweep` — one panel per metric, one line per method, against a swept setting (FgB2I's fusion weight);
* :func:`paired_bars` — one panel per metric, a pair of bars per method (its base and base + FgB2I), with one dot
  per subject when given.

Each takes plain dicts (what the tables' JSON hold) and returns the path it wrote.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

from .core import atomic_path

_LABELS = {"loss": "loss (train)", "eval_loss": "loss (validation)"}
_NOT_METRICS = {"eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch", "step"}


def _figure(panels: int, columns: int = 4, size: tuple[float, float] = (3.4, 2.7)):
    # imported here: matplotlib is a heavy import, needed only on this path
    from matplotlib.figure import Figure

    columns = max(1, min(columns, panels))
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(size[0] * columns, size[1] * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return figure, axes[:panels]


def _save(figure, path: str, dpi: int = 110) -> str:
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return path


def _series(records: Iterable[Mapping], key: str) -> tuple[list[float], list[float]]:
    points = [(float(r["step"]), float(r[key])) for r in records
              if key in r and "step" in r and r[key] is not None and math.isfinite(float(r[key]))]
    return [p[0] for p in points], [p[1] for p in points]


def training_curves(ce_history: Sequence[Mapping], rl_history: Sequence[Mapping], path: str,
                    title: str | None = None) -> str:
    """Four panels: stage 1's losses (train ``loss``, validation ``eval_loss``), its validation caption metrics
    (every other ``eval_*`` number), stage 2's losses (``loss``, ``ce``, ``rl``) and its rewards (``reward/<name>``,
    the sampled captions' mean). ``*_history``: lists of logged dicts, each with a ``step``."""
    figure, axes = _figure(4, columns=2, size=(5.0, 3.2))
    panels = [
        (axes[0], "stage 1 (cross-entropy): loss", ce_history, ["loss", "eval_loss"]),
        (axes[1], "stage 1: validation caption metrics", ce_history,
         sorted({k for r in ce_history for k in r if k.startswith("eval_") and k not in _NOT_METRICS})),
        (axes[2], "stage 2 (REINFORCE): loss", rl_history, ["loss", "ce", "rl"]),
        (axes[3], "stage 2: rewards of the sampled captions", rl_history,
         sorted({k for r in rl_history for k in r if k.startswith("reward/") and not k.endswith("/greedy")})),
    ]
    for ax, name, records, keys in panels:
        drawn = 0
        for key in keys:
            x, y = _series(records, key)
            if x:
                ax.plot(x, y, marker="o" if len(x) < 20 else None, markersize=3, label=_LABELS.get(
                    key, key.removeprefix("eval_").removeprefix("reward/")))
                drawn += 1
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("optimiser step", fontsize=8)
        ax.tick_params(labelsize=7)
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "nothing logged", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def metric_sweep(sweeps: Mapping[str, Mapping[float, Mapping[str, float]]], metrics: Sequence[str], path: str,
                 setting: str = "w", lower_is_better: Iterable[str] = (), title: str | None = None) -> str:
    """``sweeps``: {method: {setting value: {metric: value}}}; one panel per metric, one line per method."""
    lower = set(lower_is_better)
    figure, axes = _figure(len(metrics))
    for ax, metric in zip(axes, metrics):
        for method, points in sweeps.items():
            xs = sorted(points)
            ys = [points[x].get(metric, math.nan) for x in xs]
            ax.plot(xs, ys, marker="o", markersize=3, label=method)
        ax.set_title(metric + (" (lower is better)" if metric in lower else ""), fontsize=9)
        ax.set_xlabel(setting, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def paired_bars(pairs: Mapping[str, tuple[Mapping[str, float], Mapping[str, float]]], metrics: Sequence[str],
                path: str, per_subject: Mapping[str, Sequence[tuple[Mapping[str, float], Mapping[str, float]]]]
                | None = None, labels: tuple[str, str] = ("base", "+ FgB2I"), lower_is_better: Iterable[str] = (),
                title: str | None = None) -> str:
    """``pairs``: {method: (base row, FgB2I row)}; one panel per metric, two bars per method, and the subjects'
    values as dots (``per_subject``: {method: [(base row, FgB2I row) per subject]})."""
    lower = set(lower_is_better)
    methods = list(pairs)
    figure, axes = _figure(len(metrics))
    width = 0.38
    for ax, metric in zip(axes, metrics):
        for side, (offset, label) in enumerate(zip((-width / 2, width / 2), labels)):
            xs = [i + offset for i in range(len(methods))]
            ax.bar(xs, [pairs[m][side].get(metric, math.nan) for m in methods], width, label=label,
                   color=("#9aa7b8", "#d95f02")[side])
            for x, method in zip(xs, methods):
                dots = [row[side].get(metric, math.nan) for row in (per_subject or {}).get(method, ())]
                ax.plot([x] * len(dots), dots, "k.", markersize=3)
        ax.set_xticks(range(len(methods)), methods, fontsize=7)
        ax.set_title(metric + (" (lower is better)" if metric in lower else ""), fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


__all__ = ["metric_sweep", "paired_bars", "training_curves"]
