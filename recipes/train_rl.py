"""Stage 2: REINFORCE co-training of a stage-1 BrainPrefixGPT2 with pluggable rewards (FgB2I).

    accelerate launch recipes/train_rl.py --config recipes/configs/sim_tiny_rl.yaml [--key value ...]
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 recipes/train_rl.py --config ...   # 2 CPU processes

The YAML sets fields of ``fgb2i_hf.drivers.rl.RLScriptArguments`` (data, models of the rewards, evaluation) and
of ``fgb2i_hf.rl.ReinforceConfig`` (rewards, weights, baseline, optimiser, checkpoints); the run is
``fgb2i_hf.drivers.rl.run_rl``. See docs/rl.md.
"""

from __future__ import annotations

from fgb2i_hf.drivers.rl import RLScriptArguments, run_rl
from fgb2i_hf.rl import ReinforceConfig


def main(argv=None) -> dict:
    # imported here: trl is a heavy import, needed only on this path
    from trl import TrlParser

    script_args, rl_config = TrlParser((RLScriptArguments, ReinforceConfig)).parse_args_and_config(args=argv)
    return run_rl(script_args, rl_config)


if __name__ == "__main__":
    main()
