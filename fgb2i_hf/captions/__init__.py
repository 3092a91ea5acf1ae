"""Fine-grained captions (FgB2I stage 1) and their hallucination audit.

- ``objects``: COCO vocabulary and CHAIR matching (shared with the metrics and the object reward);
- ``enhance``: ``ImageCaptioner`` (any transformers image-text-to-text model, LLaVA-1.5 by default) and
  ``enhance_captions`` (resumable, kill-safe captioning into the fine-captions JSONL);
- ``cache``: that JSONL (``read_cache``, ``CaptionCache``, ``settings_hash``);
- ``length``: CLIP token counting and cutting at a sentence end;
- ``audit``: CHAIR_i, CHAIR_s, object recall, CLIP agreement, filtering, the markdown report;

The runs behind ``recipes/enhance_captions.py`` and ``recipes/audit_captions.py`` are in
``fgb2i_hf.drivers.captions``.

Names are imported lazily, so ``fgb2i_hf.captions.objects`` stays light for its other users.
"""

import importlib

from ..core.deprecation import moved_names

_EXPORTS = {
    "ImageCaptioner": "enhance", "enhance_captions": "enhance", "EnhanceSummary": "enhance",
    "NotAVisionLanguageModelError": "enhance", "DEFAULT_MODEL": "enhance", "DEFAULT_PROMPT": "enhance",
    "CaptionCache": "cache", "CaptionCacheError": "cache", "read_cache": "cache", "settings_hash": "cache",
    "clip_token_count": "length", "truncate_to_clip_tokens": "length",
    "CaptionAudit": "audit", "AuditThresholds": "audit", "audit_captions": "audit", "image_truth": "audit",
    "summarize": "audit", "clip_agreement": "audit", "flag_audits": "audit", "filter_records": "audit",
    "write_report": "audit",
    "caption_objects": "objects", "caption_object_mentions": "objects", "load_coco_vocabulary": "objects",
}

__all__ = sorted(_EXPORTS)


_MOVED_TO_DRIVERS = ("EnhanceCaptionsConfig", "AuditCaptionsConfig", "enhance_nsd", "audit_nsd", "subject_nsd_ids",
                     "coco_truth")


def _export(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__getattr__ = moved_names(__name__, "fgb2i_hf.drivers.captions", _MOVED_TO_DRIVERS, fallback=_export)
