"""Train MindEye (Scotti et al. 2023) on NSD or SimNSD and evaluate retrieval on the test split.

    accelerate launch recipes/train_mindeye.py --config recipes/configs/mindeye_nsd.yaml --nsd_root /data/nsd
    python recipes/train_mindeye.py --config recipes/configs/mindeye_sim_tiny.yaml          # CPU, minutes
    ... --resume_from_checkpoint latest                                                      # continue a run

Every field of ``fgb2i_hf.drivers.mindeye.MindEyeRunConfig`` (data, targets, model, evaluation) and of
``fgb2i_hf.training.mindeye_trainer.MindEyeTrainingConfig`` (the schedule) can be set in the YAML or on the command
line (the command line wins). Writes ``<output_dir>/final`` (``MindEyeModel.from_pretrained``), ``log.jsonl``,
``checkpoints/``, ``targets/``, ``eval_test.json`` and ``result.json``.
"""

import json

from trl import TrlParser

from fgb2i_hf.drivers.mindeye import MindEyeRunConfig, run_mindeye


def main(argv=None):
    (config,) = TrlParser((MindEyeRunConfig,)).parse_args_and_config(argv)
    result = run_mindeye(config)
    for subject, scores in (result.get("eval") or {}).items():
        r, s = scores["retrieval"], scores["retrieval_shuffled"]
        print(f"{subject}: image retrieval {r['image_retrieval']:.3f}, brain retrieval {r['brain_retrieval']:.3f} "
              f"(shuffled {s['image_retrieval']:.3f} / {s['brain_retrieval']:.3f}, chance {r['chance']:.3f}, "
              f"batch {r['batch_size']})")
    print(json.dumps({k: v for k, v in result.items() if k != "eval"}, indent=2))


if __name__ == "__main__":
    main()
