"""COCO annotations (captions and instance categories) and the fine-captions JSONL, read for NSD images.

NSD images are COCO 2017 images: a stimulus' ``cocoId`` and ``cocoSplit`` (``nsd_stim_info_merged.csv``) name
its captions in ``captions_{cocoSplit}.json`` and its objects in ``instances_{cocoSplit}.json`` (nsd_access'
``read_image_coco_info`` convention). Captions do not depend on NSD's crop; instance boxes would, but only
the category names are kept here.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Iterable

from .jsonstream import iter_json_object
from .layout import NSDDataError, NSDPaths, require_file

# The 80 COCO 2017 instance categories: (id, name, supercategory). Ids are COCO's (with its gaps).
COCO_CATEGORIES = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"), (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"),
    (9, "boat", "vehicle"), (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"),
    (20, "sheep", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"), (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"),
    (36, "snowboard", "sports"), (37, "sports ball", "sports"), (38, "kite", "sports"),
    (39, "baseball bat", "sports"), (40, "baseball glove", "sports"), (41, "skateboard", "sports"),
    (42, "surfboard", "sports"), (43, "tennis racket", "sports"), (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"), (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"), (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"),
    (54, "sandwich", "food"), (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"),
    (58, "hot dog", "food"), (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"),
    (62, "chair", "furniture"), (63, "couch", "furniture"), (64, "potted plant", "furniture"),
    (65, "bed", "furniture"), (67, "dining table", "furniture"), (70, "toilet", "furniture"),
    (72, "tv", "electronic"), (73, "laptop", "electronic"), (74, "mouse", "electronic"),
    (75, "remote", "electronic"), (76, "keyboard", "electronic"), (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"), (79, "oven", "appliance"), (80, "toaster", "appliance"),
    (81, "sink", "appliance"), (82, "refrigerator", "appliance"), (84, "book", "indoor"),
    (85, "clock", "indoor"), (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
)
COCO_CATEGORY_ID = {name: cid for cid, name, _ in COCO_CATEGORIES}
COCO_CATEGORY_NAME = {cid: name for cid, name, _ in COCO_CATEGORIES}


def _annotations(path: str, what: str):
    """``(annotations, top-level values)`` of a COCO file; annotations are streamed one at a time."""
    values: dict = {}

    def items():
        seen = False
        try:
            for kind, key, value in iter_json_object(path):
                if kind == "item" and key == "annotations":
                    seen = True
                    yield value
                elif kind == "value":
                    values[key] = value
                    seen = seen or (key == "annotations" and isinstance(value, list) and not value)
        except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
            raise NSDDataError(f"{path}: not valid JSON ({e}); expected COCO {what} annotations") from None
        if not seen:
            raise NSDDataError(f"{path}: expected a COCO {what} file (a JSON object with an 'annotations' list)")

    return items(), values


def read_coco_annotations(paths: NSDPaths, wanted: dict[str, set[int]], on_missing_captions: str = "error"):
    """Captions and instance category names of the wanted COCO ids.

    Args:
        paths: the NSD root's paths (annotations folder).
        wanted: ``{coco_split: {coco_id, ...}}`` for the images a build needs.
        on_missing_captions: ``"error"`` (default) raises when a wanted id has no caption; ``"warn"`` keeps the
            image with an empty caption list and warns once with the count.
    Returns:
        ``(captions, objects)``: ``{coco_id: [caption, ...]}`` in file order and ``{coco_id: [name, ...]}``
        (distinct COCO category names, ordered by category id; empty when the image has no instances).
    """
    if on_missing_captions not in ("error", "warn"):
        raise ValueError(f"on_missing_captions must be 'error' or 'warn', got {on_missing_captions!r}")
    captions: dict[int, list[str]] = {}
    objects: dict[int, list[str]] = {}
    for split, ids in sorted(wanted.items()):
        if not ids:
            continue
        cap_path = require_file(paths.captions(split), "annotations", f"COCO captions for cocoSplit={split}")
        inst_path = require_file(paths.instances(split), "annotations", f"COCO instances for cocoSplit={split}")
        anns, _ = _annotations(cap_path, "captions")
        for ann in anns:
            image_id = ann.get("image_id")
            if image_id in ids:
                captions.setdefault(int(image_id), []).append(str(ann["caption"]).strip())
        anns, top = _annotations(inst_path, "instances")
        found: dict[int, set[int]] = {}
        for ann in anns:  # categories come after annotations in COCO's files: check ids at the end
            image_id = ann.get("image_id")
            if image_id in ids:
                found.setdefault(int(image_id), set()).add(int(ann["category_id"]))
        names = {int(c["id"]): str(c["name"]) for c in top.get("categories", [])}
        unknown = sorted({c for cs in found.values() for c in cs} - set(names))
        if unknown:
            raise NSDDataError(f"{inst_path}: category_id {unknown} used by annotations but not in the file's 'categories'")
        for image_id in ids:
            objects[int(image_id)] = [names[c] for c in sorted(found.get(image_id, ()))]
        missing = sorted(i for i in ids if i not in captions)
        if missing:
            msg = (f"{len(missing)} COCO id(s) of cocoSplit={split} have no caption in {cap_path} "
                   f"(first: {missing[:5]}); every NSD image is a COCO 2017 image with captions, so the "
                   "annotations folder is probably incomplete or from another COCO release")
            if on_missing_captions == "error":
                raise NSDDataError(msg + ". Pass on_missing_captions='warn' to keep them with empty captions.")
            warnings.warn(msg + "; kept with empty captions.", stacklevel=2)
            for i in missing:
                captions[int(i)] = []
    return captions, objects


def check_fine_caption_record(record, where: str, error: type[Exception] = NSDDataError) -> dict:
    """Check the two required keys of a fine-caption record (``nsd_id``: a non-negative int, ``caption``: a str);
    raise ``error`` naming ``where`` (a file and line, or the record's origin). Returns the record."""
    if not isinstance(record, dict):
        raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
    nsd_id, caption = record.get("nsd_id"), record.get("caption")
    if isinstance(nsd_id, bool) or not isinstance(nsd_id, int) or nsd_id < 0:
        raise error(f"{where}: 'nsd_id' must be a non-negative int (0-based 73k id), got {nsd_id!r}")
    if not isinstance(caption, str):
        raise error(f"{where}: 'caption' must be a string, got {caption!r}")
    return record


def read_fine_captions(path: str, nsd_ids: Iterable[int] | None = None, skip_flagged: bool = False) -> dict[int, list[str]]:
    """``{nsd_id: [caption, ...]}`` from a fine-captions JSONL (one JSON object per line).

    Required keys are ``nsd_id`` (int) and ``caption`` (str); others (model, revision, settings_hash,
    truncated, flagged, ...) are allowed. All captions of an id are kept in file order. With
    ``skip_flagged`` records with ``"flagged": true`` are left out.
    """
    wanted = None if nsd_ids is None else set(int(i) for i in nsd_ids)
    out: dict[int, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise NSDDataError(f"{path}:{lineno}: not a JSON object ({e}); expected one fine-caption "
                                   'record per line, e.g. {"nsd_id": 123, "caption": "..."}') from None
            check_fine_caption_record(record, f"{path}:{lineno}")
            nsd_id, caption = record["nsd_id"], record["caption"]
            if skip_flagged and record.get("flagged") is True:
                continue
            if wanted is None or nsd_id in wanted:
                out.setdefault(nsd_id, []).append(caption)
    return out


def default_fine_captions(paths: NSDPaths) -> str | None:
    """The default fine-captions file of a root (``<root>/fine_captions.jsonl``) when it exists."""
    return paths.fine_captions if os.path.isfile(paths.fine_captions) else None
