"""Decode a split with a BrainPrefixGPT2 checkpoint and score it beside the shuffled-brain control.

    python recipes/evaluate_captions.py --model_name_or_path runs/ce/final --nsd_root /data/nsd --output_dir runs/ce/eval
    python recipes/evaluate_captions.py --config recipes/configs/evaluate_captions_sim_tiny.yaml [--key value ...]

Writes BrainHub's candidate files (``predictions_<subject>.json``: ``{"0": caption, ...}``), the control's
(``control_<subject>.json``), ``predictions.jsonl`` and the metric table ``metrics.{md,json}`` (brain, control and
their deltas; per subject). Settings: ``fgb2i_hf.drivers.caption_eval.EvaluateCaptionsArguments``; docs/training.md.
"""

from __future__ import annotations

from fgb2i_hf.drivers.caption_eval import EvaluateCaptionsArguments, evaluate_captions


def main(argv=None):
    # imported here: trl is a heavy import, needed only on this path
    from trl import TrlParser

    (args,) = TrlParser((EvaluateCaptionsArguments,)).parse_args_and_config(args=argv)
    result = evaluate_captions(args)
    print(result.markdown())
    print(f"\nwritten to {args.output_dir}")
    return result


if __name__ == "__main__":
    main()
