"""Fit the image-image reward's render surrogate once, before stage 2 with ``image_reward: surrogate``.

    python recipes/fit_reward_surrogate.py --config recipes/configs/reward_surrogate_sim_tiny.yaml
    python recipes/fit_reward_surrogate.py --config recipes/configs/reward_surrogate_nsd.yaml --nsd_root /data/nsd

The YAML sets fields of ``fgb2i_hf.drivers.reward_surrogate.SurrogateScriptArguments`` (data, CLIP, renderer,
output) and of ``fgb2i_hf.rewards.SurrogateFitConfig`` (size, epochs, learning rate); the run is
``run_fit_reward_surrogate``. Writes the surrogate folder ``output_dir`` (give it to the RL run as
``surrogate_path``) with ``fit_report.json``. See docs/rl.md.
"""

from __future__ import annotations

import json

from fgb2i_hf.drivers.reward_surrogate import SurrogateScriptArguments, run_fit_reward_surrogate
from fgb2i_hf.rewards import SurrogateFitConfig


def main(argv=None) -> dict:
    # imported here: trl is a heavy import, needed only on this path
    from trl import TrlParser

    script_args, fit_config = TrlParser((SurrogateScriptArguments, SurrogateFitConfig)).parse_args_and_config(args=argv)
    report = run_fit_reward_surrogate(script_args, fit_config)
    summary = {k: v for k, v in report.items() if k not in ("val_cosine_curve", "versions")}
    print(json.dumps(summary, indent=2))
    print(f"surrogate saved to {script_args.output_dir}: surrogate_path for image_reward: surrogate")
    return report


if __name__ == "__main__":
    main()
