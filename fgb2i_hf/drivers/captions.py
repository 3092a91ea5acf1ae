"""Fine captions for NSD: which stimuli to caption, their COCO truth, and the two runs behind the recipes.

* :func:`subject_nsd_ids` — the 73k ids a subject saw (``nsd_stim_info_merged.csv``'s ``subjectN`` column, or
  the trials of the first N sessions through ``nsd_expdesign.mat``);
* :func:`coco_truth` — each image's COCO instance categories and COCO captions (``cocoId``/``cocoSplit`` from
  the stimulus table, then ``instances_*``/``captions_*`` of NSD's annotations folder);
* :func:`enhance_nsd` (``recipes/enhance_captions.py``) and :func:`audit_nsd` (``recipes/audit_captions.py``),
  each driven by a config dataclass whose fields are the recipe's YAML keys and CLI flags.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..captions.audit import (
    TRUTH_CHOICES,
    AuditThresholds,
    audit_captions,
    clip_agreement,
    filter_records,
    flag_audits,
    image_truth,
    summarize,
    write_report,
)
from ..captions.cache import CaptionCacheError, read_cache, write_records_atomic
from ..captions.enhance import DEFAULT_MODEL, DEFAULT_PROMPT, EnhanceSummary, ImageCaptioner, enhance_captions
from ..clip import CLIPScorer
from ..core import TINY_RANDOM  # smoke runs: fgb2i_hf.tiny.tiny_llava, random weights
from ..core import loading_config_field
from ..data import NSDStimuli
from ..data.coco import read_coco_annotations
from ..data.design import read_expdesign, read_stim_info, trial_table
from ..data.layout import NSDDataError, NSDPaths, require_file, subject_id, subject_index
from ..tiny import tiny_llava

logger = logging.getLogger(__name__)



# -- NSD look-ups ------------------------------------------------------------------------------------------------

def subject_nsd_ids(nsd_root: str, subjects, sessions: int | None = None) -> list[int]:
    """Sorted 0-based 73k ids that any of ``subjects`` saw.

    ``sessions=None``: every image the subject saw (``subjectN == 1`` in ``nsd_stim_info_merged.csv``);
    ``sessions=N``: the images of the subject's trials in sessions 1..N (``nsd_expdesign.mat``).
    """
    paths = NSDPaths(nsd_root)
    subjects = [subject_id(s) for s in ([subjects] if isinstance(subjects, str) else subjects)]
    if not subjects:
        raise ValueError("no subjects given; expected e.g. ['subj01']")
    ids: set[int] = set()
    if sessions is None:
        # imported here: pandas is a heavy import, needed only on this path
        import pandas as pd

        path = require_file(paths.stim_info, "nsddata", "the NSD stimulus table")
        columns = ["nsdId"] + [f"subject{subject_index(s)}" for s in subjects]
        header = list(pd.read_csv(path, nrows=0).columns)
        missing = [c for c in columns if c not in header]
        if missing:
            raise NSDDataError(f"{path}: missing column(s) {missing}; NSD's stimulus table has nsdId and "
                               "subject1..subject8 (1 where the subject saw the image)")
        table = pd.read_csv(path, usecols=columns)
        for s, col in zip(subjects, columns[1:]):
            seen = table.loc[table[col].astype(bool), "nsdId"].to_numpy(np.int64)
            if seen.size == 0:
                raise NSDDataError(f"{path}: column {col} marks no image as seen by {s}")
            ids.update(int(i) for i in seen)
    else:
        if isinstance(sessions, bool) or not isinstance(sessions, int) or sessions < 1:
            raise ValueError(f"sessions must be a positive int or None, got {sessions!r}")
        design = read_expdesign(paths)
        for s in subjects:
            ids.update(int(i) for i in np.unique(trial_table(design, s, sessions).nsd_ids))
    return sorted(ids)


def coco_truth(nsd_root: str, nsd_ids) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """``({nsd_id: COCO instance category names}, {nsd_id: COCO captions})`` for the given images."""
    paths = NSDPaths(nsd_root)
    info = read_stim_info(paths, sorted({int(i) for i in nsd_ids}))
    wanted: dict[str, set[int]] = {}
    for coco_id, split in info.values():
        wanted.setdefault(split, set()).add(coco_id)
    captions, objects = read_coco_annotations(paths, wanted, on_missing_captions="warn")
    return ({i: list(objects[c]) for i, (c, _) in info.items()},
            {i: list(captions.get(c, [])) for i, (c, _) in info.items()})


# -- enhance ---------------------------------------------------------------------------------------------------

@dataclass
class EnhanceCaptionsConfig:
    """What ``recipes/enhance_captions.py`` reads from ``--config`` YAML and the command line."""

    nsd_root: str = field(metadata={"help": "NSD root, real or SimNSD (raw layout): images from imgBrick."})
    output: str = field(metadata={"help": "The fine-captions JSONL to write or resume (the NSD builder's "
                                          "fine_captions file; <nsd_root>/fine_captions.jsonl is its default)."})
    subjects: list[str] = field(default_factory=lambda: ["subj01", "subj02", "subj05", "subj07"],
                                metadata={"help": "Caption the images these subjects saw."})
    sessions: int | None = field(default=None, metadata={
        "help": "Only the images of sessions 1..N (default: every image the subjects saw)."})
    nsd_ids: list[int] | None = field(default=None, metadata={
        "help": "Caption these 0-based 73k ids instead of the subjects' images."})
    max_images: int | None = field(default=None, metadata={"help": "Caption only the first N ids (smoke runs)."})
    model_name_or_path: str = field(default=DEFAULT_MODEL, metadata={
        "help": "Any transformers image-text-to-text model (Hub id, folder, simnsd/<name>), or 'tiny-random' "
                "(a random tiny LLaVA: mechanics only)."})
    revision: str = field(default="main", metadata={"help": "Model revision on the Hub (recorded per caption)."})
    prompt: str = field(default=DEFAULT_PROMPT, metadata={"help": "The instruction given with each image."})
    use_chat_template: bool = field(default=True, metadata={
        "help": "Wrap the prompt with the processor's chat template when it has one (else LLaVA-1.5's "
                "'USER: <image>\\n{prompt} ASSISTANT:')."})
    max_new_tokens: int = field(default=96, metadata={"help": "Generated tokens per caption at most."})
    num_beams: int = field(default=1, metadata={"help": "Beam search width (1: greedy)."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy/beam decoding."})
    generation_kwargs: str | None = field(default=None, metadata={
        "help": "More generate() settings as JSON, e.g. '{\"repetition_penalty\": 1.1}'."})
    max_clip_tokens: int | None = field(default=77, metadata={
        "help": "Cut captions to this many CLIP tokens at a sentence end (0 or null: no limit)."})
    batch_size: int = field(default=16, metadata={"help": "Images per generate() call (a kill loses at most one batch)."})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})
    dtype: str = field(default="auto", metadata={
        "help": "Model dtype: auto (float16 on GPU, float32 on CPU), float16, bfloat16 or float32."})
    allow_mixed_settings: bool = field(default=False, metadata={
        "help": "Add to a cache holding captions of other settings instead of refusing."})
    prefetch: bool = field(default=True, metadata={"help": "Read and preprocess the next batch while generating."})
    seed: int = field(default=0, metadata={"help": "Seed (sampling; the weights of 'tiny-random')."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def generation_settings(self) -> dict:
        extra = self.generation_kwargs
        if isinstance(extra, str):
            try:
                extra = json.loads(extra)
            except json.JSONDecodeError as e:
                raise ValueError(f"generation_kwargs must be a JSON object, got {self.generation_kwargs!r} ({e})") from None
        if extra is not None and not isinstance(extra, dict):
            raise ValueError(f"generation_kwargs must be a JSON object (a mapping), got {extra!r}")
        return {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams, "do_sample": self.do_sample,
                **(extra or {})}


def build_captioner(config: EnhanceCaptionsConfig) -> ImageCaptioner:
    """The captioner a config asks for (``tiny-random`` builds the random tiny LLaVA of ``fgb2i_hf.tiny``)."""
    kwargs = dict(prompt=config.prompt, generation_kwargs=config.generation_settings(),
                  max_clip_tokens=config.max_clip_tokens or None, use_chat_template=config.use_chat_template)
    if config.model_name_or_path == TINY_RANDOM:
        model, processor = tiny_llava(seed=config.seed)
        return ImageCaptioner(model, processor, model_id=TINY_RANDOM, revision=f"seed{config.seed}", **kwargs)

    with loading_config_field("model_name_or_path", config.model_name_or_path):
        return ImageCaptioner.from_pretrained(config.model_name_or_path, revision=config.revision,
                                              device=config.device, dtype=config.dtype, **kwargs)


def enhance_nsd(config: EnhanceCaptionsConfig, captioner: ImageCaptioner | None = None) -> EnhanceSummary:
    """Caption the subjects' stimuli (or ``nsd_ids``) into ``config.output``, resuming a previous run."""
    torch.manual_seed(config.seed)
    stimuli = NSDStimuli(config.nsd_root)
    if config.nsd_ids:
        ids = sorted({int(i) for i in config.nsd_ids})
    else:
        ids = subject_nsd_ids(config.nsd_root, config.subjects, config.sessions)
    if config.max_images is not None:
        ids = ids[: config.max_images]
    captioner = captioner or build_captioner(config)
    logger.info("captioning %d images with %s (settings %s) into %s", len(ids), captioner.model_id,
                captioner.settings_hash, config.output)
    try:
        return enhance_captions(captioner, stimuli, ids, config.output, batch_size=config.batch_size,
                                allow_mixed_settings=config.allow_mixed_settings, progress=config.progress,
                                prefetch=config.prefetch)
    finally:
        stimuli.close()


# -- audit -----------------------------------------------------------------------------------------------------

@dataclass
class AuditCaptionsConfig:
    """What ``recipes/audit_captions.py`` reads from ``--config`` YAML and the command line."""

    nsd_root: str = field(metadata={"help": "NSD root, real or SimNSD: COCO annotations, stimulus table, images."})
    captions: str | None = field(default=None, metadata={
        "help": "Fine-captions JSONL to audit (default <nsd_root>/fine_captions.jsonl)."})
    output_dir: str = field(default="caption_audit", metadata={
        "help": "Where report.md, summary.json, per_caption.jsonl and worst.png go."})
    subjects: list[str] | None = field(default=None, metadata={
        "help": "Audit only the images these subjects saw (default: every record in the file)."})
    truth: str = field(default="instances", metadata={
        "help": "An image's objects: its COCO instance categories, or also those its COCO captions name (CHAIR's "
                "original truth).", "choices": list(TRUTH_CHOICES)})
    coco_captions: bool = field(default=True, metadata={"help": "Audit the images' COCO captions side by side."})
    clip_model: str | None = field(default="ViT-L-14-quickgelu", metadata={
        "help": "CLIP for image-caption agreement: an open_clip name, a CLIPScorer folder or simnsd/clip; 'none' "
                "to skip."})
    clip_pretrained: str | None = field(default="openai", metadata={"help": "open_clip weights tag of clip_model."})
    clip_batch_size: int = field(default=64, metadata={"help": "Images or captions per CLIP batch."})
    device: str | None = field(default=None, metadata={"help": "CLIP device (default: cuda if available, else cpu)."})
    worst: int = field(default=20, metadata={"help": "How many of the worst fine captions the report lists."})
    grid: bool = field(default=True, metadata={"help": "Write worst.png, the worst captions' images."})
    filter: str | None = field(default=None, metadata={
        "help": "After the audit, 'flag' (\"flagged\": true) or 'drop' the fine captions past a threshold.",
        "choices": ["flag", "drop"]})
    filter_output: str | None = field(default=None, metadata={
        "help": "Where the filtered JSONL goes (default <captions stem>.filtered.jsonl; may be the input)."})
    max_hallucinated: int | None = field(default=None, metadata={
        "help": "Filter: more than this many hallucinated object mentions fails."})
    max_chair_i: float | None = field(default=None, metadata={"help": "Filter: a per-caption CHAIR_i above this fails."})
    min_clip: float | None = field(default=None, metadata={"help": "Filter: a CLIP cosine below this fails."})

    def thresholds(self) -> AuditThresholds:
        return AuditThresholds(self.max_hallucinated, self.max_chair_i, self.min_clip)


@dataclass
class AuditOutcome:
    paths: dict[str, str]
    summaries: dict[str, dict]
    flagged: int = 0
    filtered_path: str | None = None


def load_fine_records(path: str) -> list[dict]:
    """Records of a fine-captions JSONL; a torn or corrupt line is an error naming the file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no fine-captions file at {path}; write one with recipes/enhance_captions.py")
    scan = read_cache(path)
    if scan.bad_lines:
        line, why = scan.bad_lines[0]
        raise CaptionCacheError(f"{path}:{line}: {why} ({len(scan.bad_lines)} bad line(s)); rerun "
                                "recipes/enhance_captions.py on it, which drops them and recaptions those images")
    return scan.records


def audit_nsd(config: AuditCaptionsConfig, scorer=None) -> AuditOutcome:
    """Audit a fine-captions file against the COCO truth of its images; optionally filter it.

    ``scorer``: a CLIP scorer to use instead of loading ``config.clip_model`` (tests inject a tiny one).
    """
    if config.filter is not None and config.filter not in ("flag", "drop"):
        raise ValueError(f"filter must be 'flag', 'drop' or None, got {config.filter!r}")
    thresholds = config.thresholds()
    if config.filter and not thresholds.any_set():
        raise ValueError("filter needs at least one threshold: max_hallucinated, max_chair_i or min_clip")
    use_clip = scorer is not None or (config.clip_model and config.clip_model.lower() != "none")
    if thresholds.min_clip is not None and not use_clip:
        raise ValueError("min_clip needs CLIP: set clip_model (it is 'none')")
    captions_path = config.captions or NSDPaths(config.nsd_root).fine_captions
    records = load_fine_records(captions_path)
    keep = list(range(len(records)))
    if config.subjects:
        seen = set(subject_nsd_ids(config.nsd_root, config.subjects))
        keep = [i for i in keep if records[i]["nsd_id"] in seen]
    if not keep:
        raise ValueError(f"{captions_path}: no fine captions to audit"
                         + (f" for subjects {config.subjects}" if config.subjects else ""))
    ids = sorted({records[i]["nsd_id"] for i in keep})
    objects, coco = coco_truth(config.nsd_root, ids)
    truth = image_truth(ids, objects, coco, truth=config.truth)
    fine = audit_captions([(records[i]["nsd_id"], records[i]["caption"]) for i in keep], truth)
    for a, i in zip(fine, keep):
        a.record_index = i
    coco_audits = (audit_captions([(i, c) for i in ids for c in coco[i]], truth, source="coco")
                   if config.coco_captions else [])
    stimuli = NSDStimuli(config.nsd_root) if (use_clip or config.grid) else None
    try:
        if use_clip:
            if scorer is None:
                with loading_config_field("clip_model", config.clip_model):
                    scorer = CLIPScorer.from_pretrained(config.clip_model, pretrained=config.clip_pretrained,
                                                        device=config.device)
            clip_agreement(fine + coco_audits, scorer, stimuli, batch_size=config.clip_batch_size)
        flagged = flag_audits(fine, thresholds) if thresholds.any_set() else 0
        settings = {"captions": captions_path, "nsd_root": config.nsd_root, "truth": config.truth,
                    "clip": (getattr(scorer, "name", None) or type(scorer).__name__) if use_clip else "none",
                    "models": ", ".join(sorted({str(records[i].get("model")) for i in keep})),
                    "thresholds": {k: v for k, v in asdict(thresholds).items() if v is not None} or "none",
                    "filter": config.filter or "none"}
        paths = write_report(config.output_dir, fine, coco_audits, settings,
                             stimuli=stimuli if config.grid else None, worst=config.worst)
    finally:
        if stimuli is not None:
            stimuli.close()
    summaries = {"fine captions": summarize(fine)}
    if config.coco_captions:
        summaries["COCO captions"] = summarize(coco_audits)
    outcome = AuditOutcome(paths, summaries, flagged)
    if config.filter:
        target = config.filter_output or os.path.splitext(captions_path)[0] + ".filtered.jsonl"
        write_records_atomic(target, filter_records(records, fine, config.filter))
        outcome.filtered_path = target
    return outcome
