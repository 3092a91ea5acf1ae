"""The paper on NSD in one command: fine captions -> audit -> stage 1 -> stage 2 -> caption tables -> decoders ->
MindEye -> reconstructions (LDM, Brain-Diffuser, MindEye x subjects 1, 2, 5, 7 x {base, + FgB2I}) -> image metrics
-> the experiments (w sweep, reward ablation, COCO vs fine captions) -> the five tables and the plots.

    accelerate launch recipes/run_paper.py --nsd_root /data/nsd
    python recipes/run_paper.py --nsd_root /data/nsd --dry_run true          # the plan, every input checked
    python recipes/run_paper.py --nsd_root /data/nsd --stages ce rl           # only these stages
    make paper NSD_ROOT=/data/nsd

Every step reads its recipes/configs/*_nsd*.yaml; ``--overrides '{"ce": {"mapper_layers": 8}}'`` changes a setting.
Settings: ``fgb2i_hf.drivers.paper.PaperConfig``; docs/paper.md.
"""

from __future__ import annotations

import os

from fgb2i_hf.drivers.paper import PaperConfig, run_paper


def main(argv=None) -> dict:
    # imported here: trl is a heavy import, needed only on this path
    from trl import TrlParser

    (config,) = TrlParser((PaperConfig,)).parse_args_and_config(args=argv)
    if config.configs_dir is None:
        config.configs_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
    result = run_paper(config)
    if not config.dry_run:
        print(f"\nthe tables and plots: {result['tables']}/paper.md")
    return result


if __name__ == "__main__":
    main()
