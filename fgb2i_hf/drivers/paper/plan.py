"""The paper as a plan: every run of every stage as a :class:`Unit`, with its resolved settings, what it reads and
what it writes, before anything runs.

A unit's settings are its step's YAML (``PaperConfig.config_file``), then ``PaperConfig.overrides[step]``, then the
*wiring*: the paths that chain the steps (each output has one place in the tree under ``output_dir``), ``nsd_root``
and ``cache_dir``, and what an experiment changes (a subject, a fusion weight, the rewards of an ablation run).
Wiring cannot be overridden. The output tree (``<output_dir>/...``):

    captions/fine_captions.jsonl   audit/               ce/final  rl/final  caption_eval/{ce,rl}
    decoders/{ldm,brain_diffuser}  mindeye/<subject>/final
    reconstruct/<base>/<subject>[/metrics]              w_sweep/<base>/w<w>[/metrics]
    ablation/<run>/final  ablation/<run>/reconstruct[/metrics]
    coco/ce/final  coco/reconstruct/{coco_targets,fine_targets}[/metrics]              tables/
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import yaml
from transformers import TrainingArguments

from ...data.contract import DEFAULT_VALIDATION_FRACTION
from ...data.layout import NSDPaths, subject_list
from ...pipelines.bases import get_base
from ...rewards import SurrogateFitConfig
from ...rl import ReinforceConfig
from ..caption_eval import EvaluateCaptionsArguments
from ..captions import AuditCaptionsConfig, EnhanceCaptionsConfig
from ..ce import CEScriptArguments
from ..evaluate_reconstructions import EvaluateReconstructionsConfig
from ..fit import FitDecodersConfig
from ..mindeye import MindEyeRunConfig
from ..reconstruct import ReconstructConfig
from ..reward_surrogate import SurrogateScriptArguments
from ..rl import RLScriptArguments
from .config import BASES, PaperConfig

CAPTIONS_FILE = os.path.join("captions", "fine_captions.jsonl")
# The reward ablation (table 3): run name -> indices into the stage-2 config's rewards (L1 object accuracy, L2
# CLIP text-image, L3 CLIP image-image: nsd_paper_rl.yaml's order, the seed's numbering).
ABLATION = {"ce": (), "l1": (0,), "l2": (1,), "l3": (2,), "all": (0, 1, 2)}
ABLATION_LABELS = {"ce": "CE", "l1": "CE + L1", "l2": "CE + L2", "l3": "CE + L3", "all": "CE + L1 + L2 + L3"}
COCO_RUNS = {"coco_targets": "COCO captions", "fine_targets": "fine captions"}


def sweep_row(w: float) -> str:
    """The metrics row of a w-sweep run (no '=': evaluate_reconstructions reads rows as name=folder)."""
    return f"w {w:g}"


@dataclass(frozen=True)
class Input:
    """Something a unit reads that no unit of the plan makes: an NSD file, a model name, a local checkpoint."""

    what: str
    value: str
    kind: str  # "nsd" (a path that must exist), "model" (Hub id, folder, simnsd/..., open_clip name), "checkpoint"


@dataclass
class Unit:
    """One run of a driver (or the tables), with its own folder, manifest and settings."""

    name: str                      # its folder under output_dir, e.g. "reconstruct/ldm/subj01"
    stage: str
    kind: str                      # enhance audit ce rl caption_eval fit mindeye reconstruct metrics tables
    folder: str
    values: dict = field(default_factory=dict)   # the driver's settings, resolved
    step: str | None = None        # the STEP_CONFIGS key its YAML came from
    source: str | None = None      # that YAML's path
    needs: tuple[str, ...] = ()    # units whose outputs it reads
    inputs: tuple[Input, ...] = ()
    outputs: tuple[str, ...] = ()  # paths it makes (checked after the run)
    artifacts: tuple[str, ...] = ()  # folders that carry the data contract of what it made
    data: dict | None = None       # units reading NSD rows with their own settings: {subjects, sessions, ...}
    meta: dict = field(default_factory=dict)     # what the tables need to know (base, subject, w, labels)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.source})" if self.source else self.name


def driver_classes(kind: str) -> tuple:
    """The config dataclasses a unit's settings fill (as its recipe parses them)."""
    if kind == "enhance":
        return (EnhanceCaptionsConfig,)
    if kind == "audit":
        return (AuditCaptionsConfig,)
    if kind == "ce":
        return (CEScriptArguments, TrainingArguments)
    if kind == "surrogate":
        return (SurrogateScriptArguments, SurrogateFitConfig)
    if kind == "rl":
        return (RLScriptArguments, ReinforceConfig)
    if kind == "caption_eval":
        return (EvaluateCaptionsArguments,)
    if kind == "fit":
        return (FitDecodersConfig,)
    if kind == "mindeye":
        return (MindEyeRunConfig,)
    if kind == "reconstruct":
        return (ReconstructConfig,)
    if kind == "metrics":
        return (EvaluateReconstructionsConfig,)
    raise ValueError(f"unknown unit kind {kind!r}")


def field_names(kind: str) -> set[str]:
    return {f.name for cls in driver_classes(kind) for f in dataclasses.fields(cls) if f.init}


def parse(unit: Unit) -> tuple:
    """The unit's dataclasses, filled from its settings as ``HfArgumentParser.parse_dict`` does (a key shared by two
    classes goes to both); an unknown key or a bad value is an error naming the unit and its YAML."""
    classes = driver_classes(unit.kind)
    unknown = sorted(set(unit.values) - field_names(unit.kind))
    if unknown:
        raise ValueError(f"{unit.label}: unknown settings {unknown} (not fields of "
                         f"{', '.join(c.__name__ for c in classes)})")
    out = []
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        try:
            out.append(cls(**{k: v for k, v in unit.values.items() if k in names}))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{unit.label}: {e}") from e
    return tuple(out)


class _Steps:
    """Each step's YAML, read once, with ``PaperConfig.overrides[step]`` applied."""

    def __init__(self, config: PaperConfig):
        self.config, self._values = config, {}

    def __call__(self, step: str) -> tuple[dict, str]:
        if step not in self._values:
            path = self.config.config_file(step)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"the {step} step's config {path} does not exist")
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f) or {}
            if not isinstance(values, dict):
                raise ValueError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
            values.update(self.config.overrides.get(step, {}))
            self._values[step] = (values, path)
        values, path = self._values[step]
        return dict(values), path


class PlanBuilder:
    """Builds the units of every stage in running order (``build()``)."""

    def __init__(self, config: PaperConfig):
        if not config.nsd_root:
            raise ValueError("nsd_root is required: the NSD root in the raw layout")
        self.config = config
        self.out = config.output_dir
        self.steps = _Steps(config)
        self.units: list[Unit] = []
        self.nsd = NSDPaths(config.nsd_root)

    # -- helpers ---------------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    def unit(self, name: str, stage: str, kind: str, step: str | None, wiring: dict | None = None,
             experiment: dict | None = None, **attributes) -> Unit:
        """A unit with its step's settings, then the wiring (the paths; ``nsd_root``/``cache_dir`` where the driver
        has them), which an override may not set, then what the experiment changes (a subject, a weight...)."""
        values, source = self.steps(step) if step else ({}, None)
        wiring = dict(wiring or {})
        if step:
            names = field_names(kind)
            shared = {"nsd_root": self.config.nsd_root, "cache_dir": self.config.cache_dir}
            wiring = {**{k: v for k, v in shared.items() if k in names and v is not None}, **wiring}
            clash = sorted(set(self.config.overrides.get(step, {})) & set(wiring))
            if clash:
                raise ValueError(f"overrides.{step} sets {clash}, which the paper's output tree sets (docs/paper.md); "
                                 "choose another output_dir, or run the step's recipe on its own")
            values.update(wiring)
            values.update(experiment or {})
        unit = Unit(name=name, stage=stage, kind=kind, folder=self.path(*name.split("/")), values=values, step=step,
                    source=source, **attributes)
        if any(u.name == name for u in self.units):
            raise ValueError(f"two units named {name}")
        self.units.append(unit)
        return unit

    def nsd_inputs(self, subjects) -> tuple[Input, ...]:
        out = [Input("NSD experiment design", self.nsd.expdesign, "nsd"),
               Input("NSD stimulus table", self.nsd.stim_info, "nsd"),
               Input("NSD stimuli", self.nsd.stimuli, "nsd"),
               Input("COCO annotations of the stimuli", self.nsd.annotations_dir, "nsd")]
        for s in subjects:
            out += [Input(f"{s} nsdgeneral ROI", self.nsd.nsdgeneral(s), "nsd"),
                    Input(f"{s} betas", self.nsd.betas_dir(s), "nsd")]
        return tuple(out)

    @staticmethod
    def models(values: dict, *names: str, kind: str = "model") -> tuple[Input, ...]:
        return tuple(Input(name, str(values[name]), kind) for name in names if values.get(name) not in (None, ""))

    @staticmethod
    def data_settings(values: dict, average_train: bool) -> dict:
        """The data settings a unit reads NSD rows with (those the contract records and artifacts must share)."""
        return {"subjects": subject_list(values.get("subjects") or ["subj01"]), "sessions": values.get("sessions"),
                "average_train": bool(average_train), "zscore": values.get("zscore", "train"),
                "validation_fraction": values.get("validation_fraction", DEFAULT_VALIDATION_FRACTION)}

    def check_subjects(self, step: str, values: dict, subjects: list[str], what: str) -> None:
        missing = sorted(set(subjects) - set(subject_list(values["subjects"])))
        if missing:
            _, source = self.steps(step)
            raise ValueError(f"{source}: subjects {values['subjects']} leave out {missing}, which stage 1 "
                             f"(nsd_paper.yaml) trains on: {what}")

    # -- stages ----------------------------------------------------------------------------------------------------
    def build(self) -> list[Unit]:
        ce, _ = self.steps("ce")
        self.subjects = subject_list(ce.get("subjects") or [])
        if self.config.experiment_subject not in self.subjects and self.config.experiments:
            raise ValueError(f"experiment_subject {self.config.experiment_subject} is not one of stage 1's subjects "
                             f"{self.subjects}")
        self.captions_file = self.path(CAPTIONS_FILE)
        self.captions_stage()
        self.training_stages()
        self.decoder_stages()
        self.reconstruction_stages()
        self.experiment_stages()
        self.tables_stage()
        return self.units

    def captions_stage(self) -> None:
        values, _ = self.steps("enhance")
        self.check_subjects("enhance", values, self.subjects, "their stimuli need fine captions")
        self.unit("captions", "captions", "enhance", "enhance", {"output": self.captions_file},
                  inputs=(Input("NSD stimuli", self.nsd.stimuli, "nsd"),
                          Input("NSD stimulus table", self.nsd.stim_info, "nsd"),
                          *self.models(values, "model_name_or_path")),
                  outputs=(self.captions_file,))
        values, _ = self.steps("audit")
        self.unit("audit", "audit", "audit", "audit", {"captions": self.captions_file, "output_dir": self.path("audit")},
                  needs=("captions",), outputs=(self.path("audit", "report.md"),),
                  inputs=(Input("COCO annotations of the stimuli", self.nsd.annotations_dir, "nsd"),
                          *(self.models(values, "clip_model") if str(values.get("clip_model")).lower() != "none"
                            else ())))

    def ce_unit(self, name: str, stage: str, experiment: dict | None = None) -> Unit:
        values, _ = self.steps("ce")
        values.update(experiment or {})
        inputs = self.nsd_inputs(self.subjects)
        if values.get("language_model") != "scratch":
            inputs += self.models(values, "language_model")
        inputs += self.models(values, "tokenizer_name_or_path")
        wiring = {"fine_captions": self.captions_file, "output_dir": self.path(name)}
        return self.unit(name, stage, "ce", "ce", wiring, experiment, needs=("captions",), inputs=inputs,
                         outputs=(self.path(name, "final"), self.path(name, "result.json")),
                         artifacts=(self.path(name, "final"),), data=self.data_settings(values, False))

    def surrogate_unit(self) -> Unit:
        """The image-image reward's render surrogate (stage 2's ``image_reward: surrogate``), fitted once on renderings
        of the training captions; the renderer it stands in for is its own config's, recorded in the surrogate."""
        values, _ = self.steps("surrogate")
        self.check_subjects("surrogate", values, self.subjects, "their training captions are rendered")
        inputs = self.nsd_inputs(self.subjects) + self.models(values, "clip_model", "renderer")
        wiring = {"fine_captions": self.captions_file, "output_dir": self.path("surrogate")}
        return self.unit("surrogate", "rl", "surrogate", "surrogate", wiring, needs=("captions",), inputs=inputs,
                         outputs=(self.path("surrogate", "config.json"),), artifacts=(self.path("surrogate"),),
                         data=self.data_settings(values, False))

    def uses_surrogate(self, values: dict) -> bool:
        rewards = [values.get("rewards")] if isinstance(values.get("rewards"), str) else list(values.get("rewards") or [])
        return "clip_image_image" in rewards and values.get("image_reward", "surrogate") == "surrogate"

    def rl_unit(self, name: str, stage: str, experiment: dict | None = None) -> Unit:
        values, _ = self.steps("rl")
        values.update(experiment or {})
        rewards = [values.get("rewards")] if isinstance(values.get("rewards"), str) else list(values.get("rewards") or [])
        inputs, needs = (), ("ce", "captions")
        if {"clip_text_image", "clip_image_image"} & set(rewards):
            inputs += self.models(values, "clip_model")
        wiring = {"model_name_or_path": self.path("ce", "final"), "fine_captions": self.captions_file,
                  "output_dir": self.path(name)}
        if self.uses_surrogate(values):
            if not any(u.name == "surrogate" for u in self.units):
                self.surrogate_unit()
            wiring["surrogate_path"], needs = self.path("surrogate"), needs + ("surrogate",)
        elif "clip_image_image" in rewards:
            inputs += self.models(values, "renderer")
        return self.unit(name, stage, "rl", "rl", wiring, experiment, needs=needs, inputs=inputs,
                         outputs=(self.path(name, "final"),), artifacts=(self.path(name, "final"),))

    def training_stages(self) -> None:
        self.ce_unit("ce", "ce")
        self.rl_unit("rl", "rl")
        for model in ("ce", "rl"):
            values, _ = self.steps("caption_eval")
            name = f"caption_eval/{model}"
            self.unit(name, "caption_eval", "caption_eval", "caption_eval",
                      {"model_name_or_path": self.path(model, "final"), "fine_captions": self.captions_file,
                       "output_dir": self.path(name)},
                      needs=(model, "captions"), inputs=self.models(values, "clip_model"),
                      outputs=(self.path(name, "metrics.json"), self.path(name, "predictions.jsonl")),
                      meta={"model": model})

    def decoder_stages(self) -> None:
        for base in BASES:
            spec = get_base(base)
            if not spec.targets:
                continue  # MindEye: its own model (stage `mindeye`)
            step = f"decoders_{base}"
            values, source = self.steps(step)
            if values.get("base") != base:
                raise ValueError(f"{source}: base is {values.get('base')!r}, the {step} step fits {base!r}")
            self.check_subjects(step, values, self.subjects, "the main table reconstructs them")
            average = values.get("average_train")
            inputs = self.nsd_inputs(subject_list(values["subjects"])) + self.models(values, "model_name_or_path")
            inputs += tuple(Input(f"target_models.{k}", str(v), "checkpoint")
                            for k, v in (values.get("target_models") or {}).items())
            name = f"decoders/{base}"
            self.unit(name, "decoders", "fit", step, {"output_dir": self.path(name)}, inputs=inputs,
                      outputs=(self.path(name, "metrics.json"),), artifacts=(self.path(name),),
                      data=self.data_settings(values, spec.average_train if average is None else average))

    def mindeye_unit(self, subject: str) -> Unit:
        values, _ = self.steps("mindeye")
        name = f"mindeye/{subject}"
        values["subjects"] = [subject]
        return self.unit(name, "mindeye", "mindeye", "mindeye", {"output_dir": self.path(name)}, {"subjects": [subject]},
                         inputs=self.nsd_inputs([subject])
                         + self.models(values, "target_model_name_or_path", "latent_model_name_or_path")
                         + self.models(values, "init_from", kind="checkpoint"),
                         outputs=(self.path(name, "final"),), artifacts=(self.path(name, "final"),),
                         data=self.data_settings(values, values.get("average_train", False)))

    def reconstruct_unit(self, name: str, stage: str, base: str, subject: str, brain: str, **extra) -> Unit:
        """One reconstruction run: ``brain`` is the unit whose ``final`` model decodes the captions."""
        step = f"reconstruct_{base}"
        values, source = self.steps(step)
        if values.get("base") != base:
            raise ValueError(f"{source}: base is {values.get('base')!r}, the {step} step reconstructs with {base!r}")
        wiring = {"output_dir": self.path(name), "brain_model": self.path(brain, "final")}
        experiment = {"subject": subject, **extra}
        needs = [brain]
        if any(u.name == f"decoders/{base}" for u in self.units):
            wiring["decoders_dir"] = self.path("decoders", base)
            needs.append(f"decoders/{base}")
        if base == "mindeye":
            wiring["components"] = {**(values.get("components") or {}),
                                    "mindeye_model": self.path("mindeye", subject, "final")}
            needs.append(f"mindeye/{subject}")
        values.update(wiring)
        values.update(experiment)
        chained = {self.path("mindeye", subject, "final")}
        inputs = self.models(values, "diffusion_model") + tuple(
            Input(f"components.{k}", str(v), "model") for k, v in (values.get("components") or {}).items()
            if str(v) not in chained)
        w, run_base = values.get("w", 0.5), values.get("run_base", True)
        outputs = (self.path(name, "fgb2i"),) + ((self.path(name, "base"),) if run_base else ())
        return self.unit(name, stage, "reconstruct", step, wiring, experiment, needs=tuple(needs), inputs=inputs,
                         outputs=outputs, artifacts=(self.path(name),),
                         meta={"base": base, "subject": subject, "w": float(w), "run_base": bool(run_base)})

    def metrics_unit(self, stage: str, recon: Unit, rows: dict[str, str], baseline: str | None, **meta) -> Unit:
        """The eight image metrics of ``recon``'s folders: ``rows`` is {row name: subfolder}."""
        values, _ = self.steps("evaluate_reconstructions")
        name = f"{recon.name}/metrics"
        inputs = ()
        if values.get("feature_models", "pretrained") == "pretrained":
            inputs = self.models(values, "clip_model") + self.models(values, "swav_weights", kind="checkpoint")
        label = get_base(recon.meta["base"]).label
        wiring = {"reconstructions": [f"{row}={os.path.join(recon.folder, sub)}" for row, sub in rows.items()],
                  "baseline": baseline, "output": self.path(name, "metrics")}
        return self.unit(name, stage, "metrics", "evaluate_reconstructions", wiring, needs=(recon.name,),
                         inputs=inputs, outputs=(self.path(name, "metrics.json"),),
                         meta={**recon.meta, "label": label, **meta})

    def reconstruction_stages(self) -> None:
        for subject in self.subjects:
            self.mindeye_unit(subject)
        self.main = {}
        for base in BASES:
            for subject in self.subjects:
                self.main[base, subject] = self.reconstruct_unit(f"reconstruct/{base}/{subject}", "reconstruct", base,
                                                                 subject, "rl")
        for (base, subject), recon in self.main.items():
            label = get_base(base).label
            rows = {label: "base", f"{label} + FgB2I": "fgb2i"} if recon.meta["run_base"] else \
                {f"{label} + FgB2I": "fgb2i"}
            self.metrics_unit("metrics", recon, rows, label if recon.meta["run_base"] else None, table="main")

    def experiment_stages(self) -> None:
        subject, experiments = self.config.experiment_subject, self.config.experiments
        if "w_sweep" in experiments:
            for base in BASES:
                main = self.main[base, subject]
                for w in self.config.w_sweep:
                    if w == 0.0 or w == main.meta["w"]:
                        continue  # the base and the main w: the main table's runs
                    recon = self.reconstruct_unit(f"w_sweep/{base}/w{w:g}", "w_sweep", base, subject, "rl", w=w,
                                                  run_base=False)
                    self.metrics_unit("w_sweep", recon, {sweep_row(w): "fgb2i"}, None, table="w_sweep")
        if "ablation" in experiments:
            rl, _ = self.steps("rl")
            rewards, weights = list(rl.get("rewards") or []), list(rl.get("reward_weights") or [])
            if len(rewards) != 3 or len(weights) != 3:
                raise ValueError(f"the reward ablation needs nsd_paper_rl.yaml's three rewards and weights (L1, L2, "
                                 f"L3), got {rewards} x {weights}")
            for run, picked in ABLATION.items():
                model = self.rl_unit(f"ablation/{run}", "ablation", {
                    "subjects": [subject], "rewards": [rewards[i] for i in picked],
                    "reward_weights": [weights[i] for i in picked]})
                model.meta = {"run": run, "label": ABLATION_LABELS[run]}
                recon = self.reconstruct_unit(f"ablation/{run}/reconstruct", "ablation", "ldm", subject, model.name,
                                              run_base=False)
                self.metrics_unit("ablation", recon, {ABLATION_LABELS[run]: "fgb2i"}, None, table="ablation",
                                  run=run)
        if "coco" in experiments:
            self.ce_unit("coco/ce", "coco", {"caption_column": "captions"})
            for run, brain in (("coco_targets", "coco/ce"), ("fine_targets", "ce")):
                recon = self.reconstruct_unit(f"coco/reconstruct/{run}", "coco", "ldm", subject, brain, run_base=False)
                self.metrics_unit("coco", recon, {COCO_RUNS[run]: "fgb2i"}, None, table="coco", run=run)

    def tables_stage(self) -> None:
        needs = tuple(u.name for u in self.units if u.kind in ("metrics", "caption_eval", "ce", "rl"))
        names = ["main", "captions"] + [e for e in ("ablation", "coco", "w_sweep") if e in self.config.experiments]
        outputs = tuple(self.path("tables", f"{n}.md") for n in names) + (self.path("tables", "paper.md"),)
        self.unit("tables", "tables", "tables", None, needs=needs, outputs=outputs,
                  artifacts=(self.path("tables"),), meta={"tables": names})


def build_plan(config: PaperConfig) -> list[Unit]:
    """Every unit of the paper, in running order (each after the units it needs)."""
    return PlanBuilder(config).build()


__all__ = ["ABLATION", "ABLATION_LABELS", "COCO_RUNS", "Input", "Unit", "build_plan", "parse"]
