"""Stage 1: cross-entropy training of BrainPrefixGPT2 (one model for all subjects) with transformers' Trainer.

    accelerate launch recipes/train_ce.py --config recipes/configs/sim_tiny.yaml [--key value ...]
    python recipes/train_ce.py --config recipes/configs/nsd_paper.yaml --nsd_root /data/nsd --output_dir runs/ce

The YAML sets fields of ``fgb2i_hf.drivers.ce.CEScriptArguments`` (data, model, caption evaluation) and of
transformers' ``TrainingArguments`` (optimiser, epochs, checkpoints, report_to, push_to_hub...); CLI flags
override it; an unknown key is an error. Writes checkpoints to ``output_dir``, the final model + tokenizer + the
run's config to ``<output_dir>/final`` (what recipes/train_rl.py and recipes/evaluate_captions.py load), and the
test table beside the shuffled-brain control to ``<output_dir>/eval_test.{md,json}``. See docs/training.md.
"""

from __future__ import annotations

import json
import os

from transformers import TrainingArguments

from fgb2i_hf.drivers.ce import CEScriptArguments, run_ce
from fgb2i_hf.simnsd import simulate_nsd


def main(argv=None) -> dict:
    # imported here: trl is a heavy import, needed only on this path
    from trl import TrlParser

    parser = TrlParser((CEScriptArguments, TrainingArguments))
    script_args, training_args = parser.parse_args_and_config(args=argv)
    if script_args.simulate_nsd and not os.path.isdir(os.path.join(script_args.nsd_root or "", "nsddata")):
        with training_args.main_process_first(desc="SimNSD"):  # one process writes it, the others then read it
            if not os.path.isdir(os.path.join(script_args.nsd_root, "nsddata")):
                simulate_nsd(script_args.nsd_root, scale=script_args.simulate_nsd, seed=0)
    result = run_ce(script_args, training_args)
    if training_args.process_index == 0:
        summary = {k: v for k, v in result.items() if k != "log_history"}
        print(json.dumps(summary, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
