"""What ``recipes/run_paper.py`` reads: :class:`PaperConfig`, the steps' shipped configs, the stages and tables."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ...data.layout import subject_id

# Each step of the chain reads one YAML of recipes/configs (the paper's settings on the real NSD, each value marked
# as the seed's, a peer's or ours); run_paper wires their paths into one output tree and changes nothing else.
STEP_CONFIGS = {
    "enhance": "enhance_captions_nsd.yaml",
    "audit": "audit_captions_nsd.yaml",
    "ce": "nsd_paper.yaml",
    "surrogate": "reward_surrogate_nsd.yaml",
    "rl": "nsd_paper_rl.yaml",
    "caption_eval": "evaluate_captions_nsd.yaml",
    "decoders_ldm": "decoders_ldm_nsd.yaml",
    "decoders_brain_diffuser": "decoders_brain_diffuser_nsd.yaml",
    "mindeye": "mindeye_nsd.yaml",
    "reconstruct_ldm": "reconstruct_ldm_nsd.yaml",
    "reconstruct_brain_diffuser": "reconstruct_brain_diffuser_nsd.yaml",
    "reconstruct_mindeye": "reconstruct_mindeye_nsd.yaml",
    "evaluate_reconstructions": "evaluate_reconstructions_nsd.yaml",
}

# In running order. `w_sweep`, `ablation` and `coco` are the seed's suggested experiments (each self-contained:
# its models, reconstructions and metrics); `tables` writes the five tables and the plots.
STAGES = ("captions", "audit", "ce", "rl", "caption_eval", "decoders", "mindeye", "reconstruct", "metrics",
          "w_sweep", "ablation", "coco", "tables")
EXPERIMENTS = ("w_sweep", "ablation", "coco")
BASES = ("ldm", "brain_diffuser", "mindeye")


@dataclass
class PaperConfig:
    """The whole paper on NSD in one command: every step's settings come from its shipped ``*_nsd*.yaml``."""

    nsd_root: str = field(default=None, metadata={"help": "NSD root in the raw layout (the real NSD, or a SimNSD)."})
    output_dir: str = field(default="outputs/paper", metadata={
        "help": "Root of the output tree: every step's output goes to a fixed place under it (docs/paper.md)."})
    configs_dir: str | None = field(default=None, metadata={
        "help": "Folder of the steps' YAML files (default: the recipes/configs of this checkout)."})
    config_files: dict | str | None = field(default=None, metadata={
        "help": f"Other YAML files for some steps, {{step: path}} (JSON on the CLI); steps: {', '.join(STEP_CONFIGS)}."})
    overrides: dict | str | None = field(default=None, metadata={
        "help": "Settings replacing the YAML's, {step: {field: value}} (JSON on the CLI), e.g. "
                "'{\"ce\": {\"mapper_layers\": 8}}' (ClipCap's mapper). The paths that chain the steps are set by "
                "the output tree and cannot be overridden."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache of every step (default: HF's)."})
    stages: list[str] | None = field(default=None, metadata={
        "help": f"Run only these stages (the others' outputs must exist): {', '.join(STAGES)}."})
    skip: list[str] = field(default_factory=list, metadata={"help": "Stages not to run (their outputs must exist)."})
    experiments: list[str] = field(default_factory=lambda: list(EXPERIMENTS), metadata={
        "help": "The seed's experiments to run besides the main and caption tables: w_sweep (table 5), ablation "
                "(table 3, the rewards on one subject) and coco (table 4, COCO vs fine captions as targets)."})
    experiment_subject: str = field(default="subj01", metadata={
        "help": "The subject of the one-subject experiments (the seed: subject 1)."})
    w_sweep: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], metadata={
        "help": "Fusion weights of table 5 (ours; 0 is the base, the configs' own w is the main table's)."})
    dry_run: bool = field(default=False, metadata={
        "help": "Print the plan (every stage, its inputs and outputs, what is done) and stop; fails on the first "
                "missing input."})

    def __post_init__(self):
        for name in ("config_files", "overrides"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = json.loads(value) if value.strip() else None
            setattr(self, name, dict(value or {}))
        unknown = sorted((set(self.config_files) | set(self.overrides)) - set(STEP_CONFIGS))
        if unknown:
            raise ValueError(f"config_files/overrides name unknown steps {unknown}; steps are {list(STEP_CONFIGS)}")
        bad = [k for k, v in self.overrides.items() if not isinstance(v, dict)]
        if bad:
            raise ValueError(f"overrides of {bad} must be mappings {{field: value}}")
        for name in ("stages", "skip"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [value]
            unknown = sorted(set(value or ()) - set(STAGES))
            if unknown:
                raise ValueError(f"{name}: unknown stages {unknown}; stages are {list(STAGES)}")
            setattr(self, name, list(value) if value is not None else None)
        if isinstance(self.experiments, str):
            self.experiments = [self.experiments]
        unknown = sorted(set(self.experiments) - set(EXPERIMENTS))
        if unknown:
            raise ValueError(f"experiments: unknown {unknown}; choose from {list(EXPERIMENTS)}")
        self.experiment_subject = subject_id(self.experiment_subject)
        self.w_sweep = sorted({float(w) for w in ([self.w_sweep] if isinstance(self.w_sweep, (int, float))
                                                  else self.w_sweep)})
        if any(not 0.0 <= w <= 1.0 for w in self.w_sweep):
            raise ValueError(f"w_sweep values must lie in [0, 1], got {self.w_sweep}")

    def selected(self, stage: str) -> bool:
        """Whether ``stage`` runs (``stages``/``skip``; its outputs are used as they are otherwise)."""
        return (self.stages is None or stage in self.stages) and stage not in self.skip

    def config_file(self, step: str) -> str:
        if step in self.config_files:
            return self.config_files[step]
        if not self.configs_dir:
            raise ValueError("configs_dir is not set: the folder of the steps' YAML files (recipes/configs)")
        return os.path.join(self.configs_dir, STEP_CONFIGS[step])


__all__ = ["BASES", "EXPERIMENTS", "PaperConfig", "STAGES", "STEP_CONFIGS"]
