"""Hallucination audit of image captions: CHAIR against COCO objects, object recall, CLIP agreement.

For each caption, the COCO objects it names (CHAIR matching, :mod:`fgb2i_hf.captions.objects`) are compared
with the image's objects (its COCO instance categories; optionally, as CHAIR did, also the objects named in
its COCO captions). Definitions (Rohrbach et al. 2018, "Object Hallucination in Image Captioning"):

* a *mention* is one occurrence of a COCO object in a caption (repeats count, as in CHAIR's code);
  a mention is *hallucinated* when its object is not among the image's objects;
* CHAIR_i = hallucinated mentions / all mentions (pooled over captions; per caption: its own ratio);
* CHAIR_s = captions with at least one hallucinated mention / captions;
* object recall (ours, as "coverage" in later LVLM work) = the fraction of the image's objects that the
  caption names, averaged over captions whose image has at least one object;
* CLIP agreement = cosine of the CLIP embeddings of the caption and its image (a second, model-based score).

The fine captions and the COCO captions of the same images are audited side by side; ``filter_records``
drops or flags (``"flagged": true``) fine captions past thresholds; ``write_report`` writes a markdown report
with the numbers and the worst captions.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..core import atomic_write_json, atomic_write_text, save_png_atomic
from .cache import write_records_atomic
from .objects import CocoVocabulary, caption_object_mentions, caption_objects, canonical_objects, load_coco_vocabulary

TRUTH_CHOICES = ("instances", "instances+captions")


@dataclass
class CaptionAudit:
    """The audit of one caption."""

    nsd_id: int
    source: str  # "fine" or "coco"
    caption: str
    mentions: list[str]  # COCO categories named, every occurrence, in order
    truth: list[str]  # the image's objects
    record_index: int | None = None  # position in the fine-caption records (None for COCO captions)
    clip: float | None = None  # cosine(CLIP text, CLIP image)
    flags: list[str] = field(default_factory=list)  # thresholds this caption failed (set by flag_audits)

    @property
    def hallucinated(self) -> list[str]:
        """Mentions whose object is not in the image (repeats kept)."""
        truth = set(self.truth)
        return [m for m in self.mentions if m not in truth]

    @property
    def named(self) -> list[str]:
        return list(dict.fromkeys(self.mentions))

    @property
    def chair_i(self) -> float | None:
        """Hallucinated mentions / mentions; None when the caption names no COCO object."""
        return len(self.hallucinated) / len(self.mentions) if self.mentions else None

    @property
    def recall(self) -> float | None:
        """Fraction of the image's objects named; None when the image has no COCO object."""
        if not self.truth:
            return None
        return len(set(self.mentions) & set(self.truth)) / len(set(self.truth))

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(hallucinated=self.hallucinated, chair_i=self.chair_i, recall=self.recall)
        return out


def image_truth(nsd_ids: Sequence[int], objects: Mapping[int, Sequence[str]],
                coco_captions: Mapping[int, Sequence[str]] | None = None, truth: str = "instances",
                vocab: CocoVocabulary | None = None) -> dict[int, list[str]]:
    """``{nsd_id: objects}``: COCO instance categories, plus (``truth="instances+captions"``) COCO-caption objects."""
    if truth not in TRUTH_CHOICES:
        raise ValueError(f"truth must be one of {TRUTH_CHOICES}, got {truth!r}")
    if truth == "instances+captions" and coco_captions is None:
        raise ValueError("truth='instances+captions' needs the COCO captions of the images")
    vocab = vocab or load_coco_vocabulary()
    out: dict[int, list[str]] = {}
    for nsd_id in dict.fromkeys(int(i) for i in nsd_ids):
        if nsd_id not in objects:
            raise KeyError(f"no COCO instance categories for nsd_id {nsd_id}: the audit needs the objects of every "
                           "captioned image (instances_{train,val}2017.json through nsd_stim_info_merged.csv)")
        names = canonical_objects(objects[nsd_id], vocab)
        if truth == "instances+captions":
            for cap in coco_captions.get(nsd_id, ()):
                names += [o for o in caption_objects(cap, vocab) if o not in names]
        out[nsd_id] = names
    return out


def audit_captions(captions: Sequence[tuple[int, str]], truth: Mapping[int, Sequence[str]], source: str = "fine",
                   vocab: CocoVocabulary | None = None) -> list[CaptionAudit]:
    """Audit ``[(nsd_id, caption), ...]`` against ``truth`` (``{nsd_id: objects}``, see :func:`image_truth`).

    ``record_index`` of the i-th audit is i for ``source="fine"`` (the position in the records given).
    """
    vocab = vocab or load_coco_vocabulary()
    audits = []
    for i, (nsd_id, caption) in enumerate(captions):
        if int(nsd_id) not in truth:
            raise KeyError(f"no objects for nsd_id {nsd_id} (caption {caption[:40]!r}...)")
        audits.append(CaptionAudit(int(nsd_id), source, caption, caption_object_mentions(caption, vocab),
                                   list(truth[int(nsd_id)]), record_index=i if source == "fine" else None))
    return audits


def summarize(audits: Sequence[CaptionAudit]) -> dict:
    """Overall numbers of a set of audited captions (see the module docstring for the definitions)."""
    mentions = sum(len(a.mentions) for a in audits)
    hallucinated = sum(len(a.hallucinated) for a in audits)
    recalls = [a.recall for a in audits if a.recall is not None]
    clips = [a.clip for a in audits if a.clip is not None]
    n = len(audits)
    return {
        "captions": n,
        "images": len({a.nsd_id for a in audits}),
        "mentions": mentions,
        "hallucinated_mentions": hallucinated,
        "CHAIR_i": hallucinated / mentions if mentions else 0.0,
        "CHAIR_s": sum(bool(a.hallucinated) for a in audits) / n if n else 0.0,
        "recall": float(np.mean(recalls)) if recalls else None,
        "recall_captions": len(recalls),
        "objects_per_caption": sum(len(a.named) for a in audits) / n if n else 0.0,
        "words_per_caption": sum(len(a.caption.split()) for a in audits) / n if n else 0.0,
        "clip": float(np.mean(clips)) if clips else None,
        "flagged": sum(bool(a.flags) for a in audits),
    }


def clip_agreement(audits: Sequence[CaptionAudit], scorer, stimuli, batch_size: int = 64) -> None:
    """Set ``audit.clip`` = cosine(CLIP text embedding of the caption, CLIP image embedding of its image).

    ``scorer``: a :class:`fgb2i_hf.clip.CLIPScorer` (or anything with ``encode_text``/``encode_images`` returning
    unit vectors); ``stimuli``: images by id (``stimuli.get(ids) -> uint8 (N, H, W, 3)``).
    """
    if not audits:
        return
    ids = sorted({a.nsd_id for a in audits})
    image_emb = {}
    for i in range(0, len(ids), batch_size):
        chunk = ids[i : i + batch_size]
        emb = scorer.encode_images(np.asarray(stimuli.get(chunk))).float().cpu()
        image_emb.update(zip(chunk, emb))
    for i in range(0, len(audits), batch_size):
        chunk = audits[i : i + batch_size]
        text = scorer.encode_text([a.caption for a in chunk]).float().cpu()
        for a, t in zip(chunk, text):
            a.clip = float(t @ image_emb[a.nsd_id])


@dataclass
class AuditThresholds:
    """A fine caption fails when it is past any threshold that is set (None: not checked)."""

    max_hallucinated: int | None = None  # more than this many hallucinated mentions
    max_chair_i: float | None = None  # per-caption CHAIR_i above this
    min_clip: float | None = None  # CLIP cosine below this

    def any_set(self) -> bool:
        return any(v is not None for v in (self.max_hallucinated, self.max_chair_i, self.min_clip))


def flag_audits(audits: Sequence[CaptionAudit], thresholds: AuditThresholds) -> int:
    """Fill ``audit.flags`` with the thresholds each caption fails; returns how many failed any."""
    if thresholds.min_clip is not None and any(a.clip is None for a in audits):
        raise ValueError("min_clip needs CLIP agreement scores: run clip_agreement first (give a CLIP model)")
    for a in audits:
        a.flags = []
        if thresholds.max_hallucinated is not None and len(a.hallucinated) > thresholds.max_hallucinated:
            a.flags.append(f"hallucinated {len(a.hallucinated)} > {thresholds.max_hallucinated}")
        if thresholds.max_chair_i is not None and (a.chair_i or 0.0) > thresholds.max_chair_i:
            a.flags.append(f"CHAIR_i {a.chair_i:.2f} > {thresholds.max_chair_i}")
        if thresholds.min_clip is not None and a.clip < thresholds.min_clip:
            a.flags.append(f"CLIP {a.clip:.3f} < {thresholds.min_clip}")
    return sum(bool(a.flags) for a in audits)


def filter_records(records: Sequence[dict], audits: Sequence[CaptionAudit], action: str = "flag") -> list[dict]:
    """Fine-caption records after the audit: failing ones dropped (``action="drop"``) or marked
    ``"flagged": true`` with their ``"flag_reasons"`` (``action="flag"``).

    ``audits[k].record_index`` is the position of its record in ``records``. An audited record that passes loses
    an earlier flag (re-filtering with new thresholds is consistent); records without an audit are kept as they
    are. The input records are not modified.
    """
    if action not in ("flag", "drop"):
        raise ValueError(f"filter action must be 'flag' or 'drop', got {action!r}")
    fine = [a for a in audits if a.source == "fine" and a.record_index is not None]
    failing = {a.record_index: a.flags for a in fine if a.flags}
    audited = {a.record_index for a in fine}
    out = []
    for i, record in enumerate(records):
        if i in audited:
            record = {k: v for k, v in record.items() if k not in ("flagged", "flag_reasons")}
        if i in failing:
            if action == "drop":
                continue
            record = {**record, "flagged": True, "flag_reasons": failing[i]}
        out.append(record)
    return out


def worst_captions(audits: Sequence[CaptionAudit], n: int = 20) -> list[CaptionAudit]:
    """The ``n`` worst: most hallucinated mentions, then highest CHAIR_i, lowest recall, lowest CLIP agreement."""
    def key(a):
        return (-len(a.hallucinated), -(a.chair_i or 0.0), a.recall if a.recall is not None else 1.0,
                a.clip if a.clip is not None else float("inf"), a.nsd_id)

    return sorted(audits, key=key)[:n]


# -- report ----------------------------------------------------------------------------------------------------

_ROWS = (("captions", "captions", "{:d}"), ("images", "images", "{:d}"),
         ("objects named per caption", "objects_per_caption", "{:.2f}"), ("words per caption", "words_per_caption", "{:.1f}"),
         ("object mentions", "mentions", "{:d}"), ("hallucinated mentions", "hallucinated_mentions", "{:d}"),
         ("**CHAIR_i** (hallucinated / mentions)", "CHAIR_i", "{:.4f}"),
         ("**CHAIR_s** (captions with >= 1 hallucination)", "CHAIR_s", "{:.4f}"),
         ("**object recall** (mean over captions)", "recall", "{:.4f}"),
         ("**CLIP agreement** (mean cosine)", "clip", "{:.4f}"), ("flagged by the filter", "flagged", "{:d}"))


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else spec.format(value)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_report(summaries: Mapping[str, dict], worst: Sequence[CaptionAudit], settings: Mapping[str, object],
                  grid_file: str | None = None) -> str:
    """Markdown: a table of the numbers per caption source (columns), then the worst fine captions."""
    names = list(summaries)
    lines = ["# Fine-caption hallucination audit", ""]
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    lines += ["", "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, key, spec in _ROWS:
        if all(summaries[s].get(key) is None for s in names) and key in ("clip",):
            continue
        lines.append(f"| {label} | " + " | ".join(_fmt(summaries[s].get(key), spec) for s in names) + " |")
    lines += ["", "CHAIR_i pools mentions over captions (repeats count); CHAIR_s counts captions; recall averages, over",
              "captions whose image has at least one COCO object, the fraction of the image's objects the caption names.",
              "", f"## The {len(worst)} worst fine captions", "",
              "| # | nsd_id | caption | hallucinated | named | image's objects | CHAIR_i | CLIP |",
              "|---|---|---|---|---|---|---|---|"]
    for rank, a in enumerate(worst, 1):
        lines.append(f"| {rank} | {a.nsd_id} | {_md(a.caption)} | {', '.join(dict.fromkeys(a.hallucinated)) or '-'} | "
                     f"{', '.join(a.named) or '-'} | {', '.join(a.truth) or '-'} | {_fmt(a.chair_i, '{:.2f}')} | "
                     f"{_fmt(a.clip, '{:.3f}')} |")
    if grid_file:
        lines += ["", f"![the worst captions' images]({os.path.basename(grid_file)})"]
    return "\n".join(lines) + "\n"


def image_grid(images: np.ndarray, labels: Sequence[str], columns: int = 5, size: int = 160):
    """A PIL grid of uint8 images (N, H, W, 3), each with a short label underneath."""
    from PIL import Image, ImageDraw

    columns = max(1, min(columns, len(images)))
    rows = max(1, -(-len(images) // columns))
    label_h = 28
    grid = Image.new("RGB", (columns * size, rows * (size + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for k, (img, label) in enumerate(zip(images, labels)):
        x, y = (k % columns) * size, (k // columns) * (size + label_h)
        grid.paste(Image.fromarray(np.asarray(img, np.uint8)).resize((size, size)), (x, y))
        for j, line in enumerate((label[:28], label[28:56])):
            draw.text((x + 3, y + size + 1 + 13 * j), line, fill="black")
    return grid


def write_report(out_dir: str, fine: Sequence[CaptionAudit], coco: Sequence[CaptionAudit] | None = None,
                 settings: Mapping[str, object] | None = None, stimuli=None, worst: int = 20) -> dict[str, str]:
    """Write ``report.md``, ``summary.json`` and ``per_caption.jsonl`` (and ``worst.png`` when ``stimuli`` is given).

    Returns ``{name: path}`` of the files written. Every file is written atomically.
    """
    os.makedirs(out_dir, exist_ok=True)
    summaries = {"fine captions": summarize(fine)}
    if coco:
        summaries["COCO captions"] = summarize(coco)
    worst_list = worst_captions(fine, worst)
    paths = {"summary": os.path.join(out_dir, "summary.json"), "per_caption": os.path.join(out_dir, "per_caption.jsonl"),
             "report": os.path.join(out_dir, "report.md")}
    if stimuli is not None and worst_list:
        paths["grid"] = os.path.join(out_dir, "worst.png")
        labels = [f"{a.nsd_id}: {', '.join(dict.fromkeys(a.hallucinated)) or '-'}" for a in worst_list]
        grid = image_grid(np.asarray(stimuli.get([a.nsd_id for a in worst_list])), labels)
        save_png_atomic(grid, paths["grid"])
    atomic_write_json(paths["summary"], {"settings": dict(settings or {}), **summaries}, default=str)
    write_records_atomic(paths["per_caption"], [a.to_dict() for a in list(fine) + list(coco or [])])
    atomic_write_text(paths["report"], render_report(summaries, worst_list, dict(settings or {}), paths.get("grid")))
    return paths
