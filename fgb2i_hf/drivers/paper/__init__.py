"""The whole paper on NSD in one command: ``run_paper(PaperConfig(nsd_root=...))`` (``recipes/run_paper.py``).

Stages, in order, each calling the drivers with the settings of its shipped ``*_nsd*.yaml`` (docs/paper.md):

| stage | runs | writes (under ``output_dir``) |
|---|---|---|
| captions | ``enhance_nsd``: LLaVA fine captions of the subjects' stimuli | ``captions/fine_captions.jsonl`` |
| audit | ``audit_nsd``: CHAIR and CLIP agreement of the fine captions | ``audit/`` |
| ce | ``run_ce``: stage 1, cross-entropy | ``ce/final`` |
| rl | ``run_rl``: stage 2, REINFORCE with the three rewards | ``rl/final`` |
| caption_eval | ``evaluate_captions`` of both stages, beside the shuffled-brain control | ``caption_eval/{ce,rl}`` |
| decoders | ``fit_decoders``: LDM and Brain-Diffuser ridge decoders (with its VDVAE target) | ``decoders/<base>`` |
| mindeye | ``run_mindeye``: one MindEye per subject | ``mindeye/<subject>/final`` |
| reconstruct | ``reconstruct``: 3 bases x the subjects x {base, + FgB2I} | ``reconstruct/<base>/<subject>`` |
| metrics | ``evaluate_reconstructions``: the eight image metrics | ``reconstruct/<base>/<subject>/metrics`` |
| w_sweep | reconstructions at other fusion weights, and their metrics | ``w_sweep/<base>/w<w>`` |
| ablation | stage 2 on one subject with CE only, each reward, all three; LDM + FgB2I with each | ``ablation/<run>`` |
| coco | stage 1 on COCO captions; LDM + FgB2I with it and with the fine-caption model | ``coco/`` |
| tables | the five tables and the plots | ``tables/`` |

Every run is skipped when its manifest matches its settings and its data contracts, and resumes after a kill
(:mod:`.runner`). ``dry_run`` prints the plan and checks every input before any work.
"""

from __future__ import annotations

import logging

from .config import BASES, EXPERIMENTS, STAGES, STEP_CONFIGS, PaperConfig
from .plan import Input, Unit, build_plan, parse
from .runner import RUNS, PlanError, Runner, run_unit

logger = logging.getLogger(__name__)


def run_paper(config: PaperConfig) -> dict:
    """Plan, check, and run (or, with ``dry_run``, only print) the paper. Returns ``{"plan": [...], "seconds": ...,
    "tables": <folder>}``: each unit's name, stage, status and outputs, and the seconds of each unit that ran."""
    units = build_plan(config)
    runner = Runner(config, units)
    runner.resolve_status()
    for unit in units:
        if runner.status[unit.name] in RUNS and unit.kind != "tables":
            parse(unit)  # every setting checked before any work
    if runner.is_main:
        print(runner.describe(), flush=True)
    runner.check_inputs()
    runner.check_data_settings()
    plan = [{"unit": u.name, "stage": u.stage, "status": runner.status[u.name], "outputs": list(u.outputs)}
            for u in units]
    if config.dry_run:
        return {"plan": plan, "seconds": {}, "tables": runner.by_name["tables"].folder}
    seconds = runner.execute(run_unit)
    return {"plan": plan, "seconds": seconds, "tables": runner.by_name["tables"].folder}


__all__ = ["BASES", "EXPERIMENTS", "Input", "PaperConfig", "PlanError", "STAGES", "STEP_CONFIGS", "Unit",
           "build_plan", "run_paper"]
