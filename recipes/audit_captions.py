"""Hallucination audit of fine captions: CHAIR_i, CHAIR_s and object recall against the images' COCO objects,
side by side with the COCO captions, plus CLIP image-caption agreement; optionally flag or drop bad captions.

    python recipes/audit_captions.py --config recipes/configs/audit_captions_nsd.yaml --nsd_root /data/nsd
    python recipes/audit_captions.py --nsd_root simnsd --captions simnsd/fine_captions.jsonl --clip_model none
    python recipes/audit_captions.py ... --filter flag --max_hallucinated 1 --min_clip 0.2

Every field of ``fgb2i_hf.drivers.captions.AuditCaptionsConfig`` can be set in the YAML or on the command line.
Writes ``report.md`` (the numbers and the worst captions), ``summary.json``, ``per_caption.jsonl`` and
``worst.png`` to ``output_dir``; with ``--filter``, the filtered JSONL to ``filter_output``.
"""

import sys

from trl import TrlParser

from fgb2i_hf.drivers.captions import AuditCaptionsConfig, audit_nsd


def main(argv=None) -> int:
    (config,) = TrlParser((AuditCaptionsConfig,)).parse_args_and_config(argv)
    outcome = audit_nsd(config)
    keys = ("captions", "CHAIR_i", "CHAIR_s", "recall", "clip")
    print(f"{'':16}" + "".join(f"{k:>10}" for k in keys))
    for name, s in outcome.summaries.items():
        cells = [f"{s[k]:>10d}" if isinstance(s[k], int) else ("       n/a" if s[k] is None else f"{s[k]:>10.4f}")
                 for k in keys]
        print(f"{name:16}" + "".join(cells))
    print(f"report: {outcome.paths['report']}")
    if outcome.filtered_path:
        print(f"{config.filter}: {outcome.flagged} caption(s) past the thresholds -> {outcome.filtered_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
