"""``recipes/evaluate_captions.py``: decode a split with a checkpoint and score it beside the shuffled-brain control.

Writes to ``output_dir``:

* ``metrics.md`` / ``metrics.json``: the caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr), object P/R/F1 and,
  with a CLIP model, CLIP-S/RefCLIP-S, for the brain and for the control (the same model given another brain of the
  same subject), with the deltas; per subject too;
* ``predictions_<subject>.json`` and ``control_<subject>.json``: BrainHub's candidate format ``{"0": caption, ...}``
  (ids in the subject's test order, which is BrainHub's for NSD's shared images);
* ``predictions.jsonl``: one line per row (subject, nsd_id, prediction, control, references, objects).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from ..core import atomic_write_json, atomic_write_text
from ..data.collate import CAPTION_COLUMNS, check_captions
from ..evaluation import CONTROL_ROW, MODEL_ROW, brainhub_predictions, evaluate_with_control

ALL_CAPTION_METRICS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]


@dataclass
class EvaluateCaptionsArguments:
    """Settings of ``recipes/evaluate_captions.py``."""

    model_name_or_path: str = field(default=None, metadata={
        "help": "A BrainPrefixGPT2 folder with its tokenizer: <train output_dir>/final or a checkpoint-N."})
    nsd_root: str = field(default=None, metadata={"help": "NSD (or SimNSD) root in NSD's raw layout."})
    subjects: list[str] | None = field(default=None, metadata={"help": "Subjects to decode (default: the model's)."})
    sessions: int | None = field(default=None, metadata={"help": "Use the first N sessions (37: 982 test images)."})
    fine_captions: str | None = field(default=None, metadata={"help": "Fine-captions JSONL (default: the builder's)."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder."})
    split: str = field(default="test", metadata={"help": "Split to decode."})
    max_rows: int | None = field(default=None, metadata={"help": "Decode only the first N rows of each subject."})
    references: str = field(default="fine_captions", metadata={"help": f"References, one of {CAPTION_COLUMNS}."})
    metrics: list[str] = field(default_factory=lambda: list(ALL_CAPTION_METRICS), metadata={
        "help": "Caption metrics (METEOR runs pycocoevalcap's jar; 'none' for object P/R/F1 only)."})
    num_beams: int = field(default=1, metadata={"help": "Beam width (1: greedy)."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Caption length cap (default: the model's)."})
    batch_size: int = field(default=64, metadata={"help": "Brains per generate() call."})
    control_seed: int = field(default=0, metadata={"help": "Seed of the shuffled-brain permutation."})
    clip_model: str | None = field(default=None, metadata={
        "help": "CLIP for CLIP-S/RefCLIP-S against the stimuli (BrainHub: ViT-B-32-quickgelu; a folder or "
                "simnsd/clip works too); none by default."})
    clip_pretrained: str | None = field(default="openai", metadata={"help": "open_clip pretrained tag of clip_model."})
    device: str | None = field(default=None, metadata={"help": "cuda / cpu (default: cuda when available)."})
    output_dir: str = field(default="caption_eval", metadata={"help": "Where the predictions and tables go."})

    def __post_init__(self):
        if self.subjects is not None:
            from ..data.layout import subject_list

            self.subjects = subject_list(self.subjects)
        if self.references not in CAPTION_COLUMNS:
            raise ValueError(f"references must be one of {CAPTION_COLUMNS}, got {self.references!r}")
        if isinstance(self.metrics, str):
            self.metrics = [self.metrics]
        if [m.lower() for m in self.metrics] == ["none"]:
            self.metrics = []


def write_predictions(output_dir: str, dataset, predictions: list[str], control: list[str], references: str,
                      prefix: str = "") -> list[str]:
    """BrainHub files ``<prefix>predictions_<subject>.json`` / ``<prefix>control_<subject>.json`` and
    ``<prefix>predictions.jsonl``, each written atomically; returns the paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for name, captions in (("predictions", predictions), ("control", control)):
        for subject, per in brainhub_predictions(dataset, captions).items():
            path = os.path.join(output_dir, f"{prefix}{name}_{subject}.json")
            atomic_write_json(path, per, indent=1, ensure_ascii=False)
            paths.append(path)
    rows = dataset.select_columns(["subject", "nsd_id", references, "objects"])
    lines = [json.dumps({"subject": r["subject"], "nsd_id": r["nsd_id"], "prediction": p, "control": c,
                         "references": r[references], "objects": r["objects"]}, ensure_ascii=False)
             for r, p, c in zip(rows, predictions, control)]
    path = os.path.join(output_dir, f"{prefix}predictions.jsonl")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return paths + [path]


def add_clip_scores(result, dataset, stimuli, scorer, references: str) -> None:
    """CLIP-S and RefCLIP-S (Hessel et al. 2021) of the brain's and the control's captions, against the stimuli."""
    import numpy as np

    from ..metrics import clip_score

    images = stimuli.get(dataset["nsd_id"])
    refs = dataset[references]
    result.rows[MODEL_ROW].update(clip_score(result.predictions, images, refs, scorer=scorer))
    result.rows[CONTROL_ROW].update(clip_score(result.control_predictions, images, refs, scorer=scorer))
    subjects = np.asarray(dataset["subject"])
    for s, pair in result.subject_rows.items():
        idx = np.flatnonzero(subjects == s)
        sub_refs = [refs[i] for i in idx]
        pair[MODEL_ROW].update(clip_score([result.predictions[i] for i in idx], images[idx], sub_refs, scorer=scorer))
        pair[CONTROL_ROW].update(clip_score([result.control_predictions[i] for i in idx], images[idx], sub_refs,
                                            scorer=scorer))


def evaluate_captions(args: EvaluateCaptionsArguments, data=None, model=None, tokenizer=None, clip_scorer=None):
    """Run the evaluation; returns the :class:`~fgb2i_hf.evaluation.ControlledEvaluation`.

    ``data`` (a ``DatasetDict``), ``model``/``tokenizer`` and ``clip_scorer`` may be given instead of being loaded.
    """
    import torch
    from transformers import AutoTokenizer

    from ..data import NSDStimuli, load_nsd
    from ..models import BrainPrefixGPT2
    from ..data.rows import first_rows_per_subject
    from ..core import loading_config_field

    if model is None:
        if not args.model_name_or_path:
            raise ValueError("model_name_or_path is required: a BrainPrefixGPT2 folder saved with its tokenizer")
        with loading_config_field("model_name_or_path", args.model_name_or_path):
            model = BrainPrefixGPT2.from_pretrained(args.model_name_or_path)
    if tokenizer is None:
        with loading_config_field("model_name_or_path", args.model_name_or_path):
            tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    subjects = list(args.subjects or model.config.voxel_counts)
    unknown = sorted(set(subjects) - set(model.config.voxel_counts))
    if unknown:
        raise ValueError(f"the model has no layer for subject(s) {unknown} (it knows "
                         f"{sorted(model.config.voxel_counts)})")
    if data is None:
        if not args.nsd_root:
            raise ValueError("nsd_root is required")
        options = {k: v for k, v in dict(sessions=args.sessions, fine_captions=args.fine_captions).items()
                   if v is not None}
        data = load_nsd(args.nsd_root, subjects=subjects, cache_dir=args.cache_dir, **options)
    if args.split not in data:
        raise ValueError(f"split {args.split!r} not in the data (splits: {list(data)})")
    split = data[args.split]
    split = split.filter(lambda s: s in subjects, input_columns="subject") if set(split["subject"]) - set(subjects) \
        else split
    split = first_rows_per_subject(split, args.max_rows)
    missing = sorted(set(subjects) - set(split["subject"]))
    if missing:
        raise ValueError(f"subject(s) {missing} have no rows in the {args.split!r} split")
    check_captions(split, args.references, f"{args.split} split")

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    generation = {"num_beams": args.num_beams}
    if args.max_new_tokens:
        generation["max_new_tokens"] = args.max_new_tokens
    result = evaluate_with_control(model, tokenizer, split, references=args.references, metrics=args.metrics,
                                   batch_size=args.batch_size, seed=args.control_seed, per_subject=len(subjects) > 1,
                                   **generation)
    if args.clip_model or clip_scorer is not None:
        from ..clip import CLIPScorer

        with loading_config_field("clip_model", args.clip_model):
            scorer = clip_scorer or CLIPScorer.from_pretrained(args.clip_model, pretrained=args.clip_pretrained,
                                                               device=device)
        add_clip_scores(result, split, NSDStimuli(args.nsd_root), scorer, args.references)
    os.makedirs(args.output_dir, exist_ok=True)
    write_predictions(args.output_dir, split, result.predictions, result.control_predictions, args.references)
    result.write(os.path.join(args.output_dir, "metrics"))
    atomic_write_json(os.path.join(args.output_dir, "evaluate_captions_config.json"), asdict(args), default=str)
    return result
