"""Running a plan: what is done, what must run, the checks before any work, and each unit's run.

A unit is **done** when its folder holds a manifest (``paper_manifest.json``, written last, atomically) whose hash
matches the unit's now, whose outputs exist and whose artifacts still carry the data contracts it recorded. The
hash covers the unit's resolved settings (paths relative to ``output_dir`` and ``nsd_root``, so moving either keeps
the work) and the fingerprints of the units it reads (a fingerprint = the hash and the contracts of what the unit
made), so a changed setting reruns the unit and everything downstream, and nothing else.

A unit that is not done **resumes** when its folder's start record (``.paper_started.json``) has the same hash (a
killed run: the drivers resume from their checkpoints, caches and finished images); with another hash its folder is
cleared first (its outputs belong to other settings). Units of stages not selected (``--stages``/``--skip``) are
used as they are on disk.

Before any work, every input of every unit that will run is checked (NSD files, models, local checkpoints; the
first missing one is an error naming the unit, the setting and the path), and the data settings of the units that
read NSD rows themselves are checked against each other (a :class:`~fgb2i_hf.data.contract.ContractError` naming
both artifacts and their YAML files). Before each unit runs, the data contracts of the artifacts it reads are
checked against each other the same way.

Under ``accelerate launch`` the training units (stage 1, stage 2, MindEye) run on every process; every other unit
runs on the main process while the others wait.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import time

from huggingface_hub import snapshot_download
from transformers.trainer_utils import get_last_checkpoint

from ...core import TINY_RANDOM, atomic_write_json, resolve_pretrained, versions
from ...data.betas import available_sessions, resolve_sessions
from ...data.contract import SHARED_FIELDS, ContractError, DataContract
from ...data.layout import NSDPaths
from ..caption_eval import evaluate_captions
from ..captions import audit_nsd, enhance_nsd
from ..ce import run_ce
from ..evaluate_reconstructions import evaluate_reconstructions, feature_models_for
from ..fit import fit_decoders
from ..mindeye import run_mindeye
from ..reconstruct import reconstruct
from ..reward_surrogate import run_fit_reward_surrogate
from ..rl import run_rl
from .config import PaperConfig
from .plan import Input, Unit, parse
from .tables import write_tables

logger = logging.getLogger(__name__)

MANIFEST = "paper_manifest.json"
STARTED = ".paper_started.json"
RUNS = ("run", "rerun", "resume")
DISTRIBUTED_KINDS = ("ce", "rl", "mindeye")  # trained under accelerate on every process
REQUESTED_FIELDS = ("sessions", "zscore", "validation_fraction")  # what a config states before its artifact exists


class PlanError(FileNotFoundError):
    """An input of the plan is missing (the message names the unit, the setting and the path)."""


def _digest(*parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError:
            return None  # a torn record (written atomically, so only by hand): as if absent


class Runner:
    """Status, checks and execution of a plan (:func:`fgb2i_hf.drivers.paper.run_paper` drives it)."""

    def __init__(self, config: PaperConfig, units: list[Unit]):
        self.config, self.units = config, units
        self.by_name = {u.name: u for u in units}
        self.out = os.path.abspath(config.output_dir)
        self.nsd_root = os.path.abspath(config.nsd_root)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.is_main = int(os.environ.get("RANK", "0")) == 0
        self.status: dict[str, str] = {}
        self.fingerprints: dict[str, str] = {}
        self.resources: dict = {}

    # -- records ---------------------------------------------------------------------------------------------------
    def _relative(self, value):
        """Settings with output_dir and nsd_root replaced by $OUT / $NSD (so moving either keeps the work)."""
        if isinstance(value, dict):
            return {k: self._relative(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._relative(v) for v in value]
        if isinstance(value, str):
            for prefix, name in ((self.out, "$OUT"), (self.nsd_root, "$NSD")):
                for form in {prefix, os.path.relpath(prefix)}:
                    if value == form or value.startswith(form + os.sep) or value.startswith(f"{form}/"):
                        return name + value[len(form):]
            for prefix, name in ((self.out, "$OUT"), (self.nsd_root, "$NSD")):
                value = value.replace(f"={prefix}", f"={name}").replace(f"={os.path.relpath(prefix)}", f"={name}")
        return value

    def unit_hash(self, unit: Unit) -> str:
        values = {k: v for k, v in unit.values.items() if k not in ("cache_dir",)}
        upstream = {n: self.fingerprints[n] for n in unit.needs}
        return _digest(unit.name, unit.kind, self._relative(values), upstream, unit.meta.get("tables"))

    def contracts(self, unit: Unit) -> dict:
        """``{artifact (relative to output_dir): its data contract as a dict, or None}``."""
        out = {}
        for folder in unit.artifacts:
            contract = DataContract.find(folder)
            out[os.path.relpath(folder, self.out)] = contract.to_dict() if contract else None
        return out

    def outputs_exist(self, unit: Unit) -> bool:
        return all(os.path.exists(p) for p in unit.outputs)

    def manifest(self, unit: Unit) -> dict | None:
        return _read_json(os.path.join(unit.folder, MANIFEST))

    def is_done(self, unit: Unit, digest: str) -> bool:
        record = self.manifest(unit)
        return bool(record and record.get("hash") == digest and self.outputs_exist(unit)
                    and record.get("contracts") == self.contracts(unit))

    # -- status ----------------------------------------------------------------------------------------------------
    def resolve_status(self) -> None:
        for unit in self.units:
            record = self.manifest(unit)
            if not self.config.selected(unit.stage):
                if record and self.outputs_exist(unit):
                    self.status[unit.name], self.fingerprints[unit.name] = "kept", record["fingerprint"]
                elif self.outputs_exist(unit):
                    self.status[unit.name] = "external"
                    self.fingerprints[unit.name] = _digest("external", unit.name, self.contracts(unit))
                else:
                    self.status[unit.name] = "missing"
                continue
            if any(self.status.get(n) in RUNS for n in unit.needs) or any(n not in self.fingerprints
                                                                          for n in unit.needs):
                self.status[unit.name] = "rerun" if self._has_content(unit) else "run"
                continue
            digest = self.unit_hash(unit)
            if self.is_done(unit, digest):
                self.status[unit.name], self.fingerprints[unit.name] = "done", record["fingerprint"]
            elif (_read_json(os.path.join(unit.folder, STARTED)) or {}).get("hash") == digest:
                self.status[unit.name] = "resume"
            else:
                self.status[unit.name] = "rerun" if self._has_content(unit) else "run"

    @staticmethod
    def _has_content(unit: Unit) -> bool:
        return os.path.isdir(unit.folder) and bool(os.listdir(unit.folder))

    # -- checks before any work ------------------------------------------------------------------------------------
    def check_inputs(self) -> None:
        for unit in self.units:
            if self.status[unit.name] not in RUNS:
                continue
            for name in unit.needs:
                if self.status[name] == "missing":
                    need = self.by_name[name]
                    raise PlanError(f"{unit.label} needs the output of {need.name} ({', '.join(need.outputs)}), "
                                    f"which is missing and whose stage {need.stage!r} is not selected (--stages/--skip)")
            for item in unit.inputs:
                problem = input_problem(item)
                if problem:
                    raise PlanError(f"{unit.label}: {item.what} = {item.value}: {problem}")

    def check_data_settings(self) -> None:
        """The units that read NSD rows with their own settings must agree (stated settings before they run, the
        artifacts' contracts once they exist)."""
        roots = []
        for unit in self.units:
            if unit.data is None:
                continue
            actual = None
            if self.status[unit.name] in ("done", "kept", "external"):
                actual = DataContract.find(unit.artifacts[0]) if unit.artifacts else None
            roots.append((unit, actual or self.requested_contract(unit), actual is not None))
        for i, (a, ca, real_a) in enumerate(roots):
            for b, cb, real_b in roots[i + 1:]:
                fields = SHARED_FIELDS if real_a and real_b else REQUESTED_FIELDS
                ca.check_compatible(cb, mine=self.artifact_label(a), theirs=self.artifact_label(b), fields=fields)

    def artifact_label(self, unit: Unit) -> str:
        where = unit.artifacts[0] if unit.artifacts else unit.folder
        return f"{unit.name} ({where}" + (f", settings from {unit.source})" if unit.source else ")")

    def requested_contract(self, unit: Unit) -> DataContract:
        data = dict(unit.data)
        if data["sessions"] is None:  # "all sessions on disk": what load_nsd will find

            paths = NSDPaths(self.config.nsd_root)
            found = {resolve_sessions(available_sessions(paths, s), None, paths.betas_dir(s)) for s in data["subjects"]}
            data["sessions"] = found.pop() if len(found) == 1 else sorted(found)
        return DataContract(subjects=tuple(data["subjects"]), sessions=data["sessions"],
                            average_train=data["average_train"], zscore=data["zscore"],
                            validation_fraction=float(data["validation_fraction"]))

    def check_contracts_of_inputs(self, unit: Unit) -> None:
        """The artifacts ``unit`` reads must carry compatible data contracts (on the subjects they share)."""
        found = []
        for name in unit.needs:
            for folder in self.by_name[name].artifacts:
                contract = DataContract.find(folder)
                if contract is not None:
                    found.append((f"{name} ({folder})", contract))
        for i, (a, ca) in enumerate(found):
            for b, cb in found[i + 1:]:
                ca.check_compatible(cb, mine=a, theirs=b)

    # -- the plan, printed -----------------------------------------------------------------------------------------
    def describe(self) -> str:
        notes = {"done": "done, skipped", "kept": "not selected, its output is used", "external":
                 "not selected, existing output used (no manifest)", "missing": "not selected, NO OUTPUT",
                 "run": "run", "rerun": "run (its folder is cleared: other settings)", "resume": "resume"}
        lines, stage = [], None
        for unit in self.units:
            if unit.stage != stage:
                stage = unit.stage
                lines.append(f"stage {stage}" + ("" if self.config.selected(stage) else " (not selected)"))
            status = self.status.get(unit.name, "?")
            lines.append(f"  [{notes.get(status, status)}] {unit.name}" + (f"  <- {unit.source}" if unit.source else ""))
            if status in RUNS:
                for name in unit.needs:
                    lines.append(f"      reads {name}: {', '.join(self.by_name[name].outputs)}")
                for item in unit.inputs:
                    lines.append(f"      input {item.what}: {item.value}  ({input_note(item)})")
                for path in unit.outputs:
                    lines.append(f"      writes {path}")
        return "\n".join(lines)

    # -- execution -------------------------------------------------------------------------------------------------
    def barrier(self) -> None:
        if self.world > 1:
            # imported here: accelerate is a heavy import, needed only on this path
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def execute(self, run_fn) -> dict:
        """Run every unit that must run, in order; ``run_fn(runner, unit)`` does the unit's work."""
        seconds = {}
        for unit in self.units:
            if self.status[unit.name] not in RUNS:
                continue
            digest = self.unit_hash(unit)
            if self.is_done(unit, digest):  # its inputs ran again and came out the same
                self.status[unit.name], self.fingerprints[unit.name] = "done", self.manifest(unit)["fingerprint"]
                continue
            started = (_read_json(os.path.join(unit.folder, STARTED)) or {}).get("hash")
            if self.is_main:
                if started != digest and self._has_content(unit):
                    logger.info("clearing %s: it holds the output of other settings", unit.folder)
                    shutil.rmtree(unit.folder)
                os.makedirs(unit.folder, exist_ok=True)
                atomic_write_json(os.path.join(unit.folder, STARTED), {"hash": digest, "unit": unit.name})
            self.barrier()
            self.check_contracts_of_inputs(unit)
            logger.info("paper: running %s", unit.name)
            start = time.perf_counter()
            if self.is_main or unit.kind in DISTRIBUTED_KINDS:
                run_fn(self, unit)
            self.barrier()
            seconds[unit.name] = time.perf_counter() - start
            missing = [p for p in unit.outputs if not os.path.exists(p)]
            if missing:
                raise RuntimeError(f"{unit.label} finished without writing {missing}")
            contracts = self.contracts(unit)
            fingerprint = _digest(digest, contracts)
            if self.is_main:
                atomic_write_json(os.path.join(unit.folder, MANIFEST), {
                    "unit": unit.name, "stage": unit.stage, "hash": digest, "fingerprint": fingerprint,
                    "upstream": {n: self.fingerprints[n] for n in unit.needs}, "contracts": contracts,
                    "settings": self._relative(unit.values), "source": unit.source, "seconds": seconds[unit.name],
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions()}, sort_keys=True)
            self.barrier()
            self.status[unit.name], self.fingerprints[unit.name] = "done", fingerprint
        return seconds


# -- inputs ---------------------------------------------------------------------------------------------------------
_BUILT_IN = {TINY_RANDOM, "scratch", "none"}


def _open_clip_name(name: str) -> bool:
    try:
        import open_clip
    except ImportError:
        return False
    return name in set(open_clip.list_models())


def _hub_cached(repo_id: str) -> bool:
    try:
        snapshot_download(repo_id, local_files_only=True)
        return True
    except Exception:  # not cached (or not a Hub id)
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def input_problem(item: Input) -> str | None:
    """Why ``item`` cannot be read (None if it can, or will be fetched on first use)."""
    value = item.value
    if item.kind == "nsd":
        return None if os.path.exists(value) else "missing (part of the NSD download, docs/paper.md)"
    if value in _BUILT_IN:
        return None
    if value.startswith("simnsd/"):
        try:
            resolve_pretrained(value)
            return None
        except FileNotFoundError as e:
            return str(e)
    if os.path.exists(value):
        return None
    if item.kind == "checkpoint":
        return "no such folder (this checkpoint is made by hand: docs/paper.md)"
    if value.startswith(("/", ".", "~")) or value.count("/") > 1:
        return "no such folder"
    if _open_clip_name(value):
        return None  # open_clip fetches its weights on first use
    if _offline() and not _hub_cached(value):
        return "not in the Hugging Face cache, and HF_HUB_OFFLINE is set"
    return None


def input_note(item: Input) -> str:
    value = item.value
    if item.kind == "nsd":
        return "ok" if os.path.exists(value) else "MISSING"
    if value in _BUILT_IN or value.startswith("simnsd/"):
        return "built in" if value in _BUILT_IN else "the SimNSD world"
    if os.path.exists(value):
        return "local"
    problem = input_problem(item)
    if problem:
        return f"MISSING: {problem}"
    if _open_clip_name(value):
        return "open_clip model, fetched on first use"
    return "Hub, cached" if _hub_cached(value) else "Hub, downloaded on first use"


# -- one unit's work --------------------------------------------------------------------------------------------------
def _complete_checkpoint(output_dir: str) -> bool:
    return bool(glob.glob(os.path.join(output_dir, "checkpoints", "checkpoint-*", "trainer_state.json")))


def _resume_from(runner: Runner, output_dir: str) -> str | None:
    """'latest' if ``output_dir`` holds a complete checkpoint of the RL or MindEye trainer (a killed run). Without
    one, a partial run (its log, a half-written checkpoint, a final model whose manifest was never written) is
    removed first, so the trainer starts afresh instead of refusing the folder."""
    if runner.is_main and not _complete_checkpoint(output_dir):
        for name in ("log.jsonl", "final", "checkpoints"):
            path = os.path.join(output_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    runner.barrier()
    return "latest" if _complete_checkpoint(output_dir) else None


def feature_models(runner: Runner, config):
    key = ("feature_models", config.feature_models, config.clip_model, config.swav_weights, config.device, config.seed)
    if key not in runner.resources:
        runner.resources[key] = feature_models_for(config)
    return runner.resources[key]


def run_unit(runner: Runner, unit: Unit) -> None:
    """Call the unit's driver with its settings (the tables: :func:`.tables.write_tables`)."""
    if unit.kind == "tables":
        write_tables(runner.units, unit, runner.by_name)
        return
    parsed = parse(unit)
    kind = unit.kind
    if kind == "enhance":
        enhance_nsd(parsed[0])
    elif kind == "audit":
        audit_nsd(parsed[0])
    elif kind == "ce":
        script, training = parsed
        last = get_last_checkpoint(training.output_dir) if os.path.isdir(training.output_dir) else None
        training.resume_from_checkpoint = last
        run_ce(script, training)
    elif kind == "surrogate":
        run_fit_reward_surrogate(*parsed)
    elif kind == "rl":
        script, rl = parsed
        rl.resume_from_checkpoint = _resume_from(runner, rl.output_dir)
        run_rl(script, rl)
    elif kind == "caption_eval":
        args = parsed[0]
        contract = DataContract.find(args.model_name_or_path)
        if contract is not None and hasattr(args, "sessions"):
            args.sessions = contract.sessions  # the model's rows, not the loader's default
        evaluate_captions(args)
    elif kind == "fit":
        fit_decoders(parsed[0], progress=False)
    elif kind == "mindeye":
        config = parsed[0]
        config.resume_from_checkpoint = _resume_from(runner, config.output_dir)
        run_mindeye(config, progress=False)
    elif kind == "reconstruct":
        reconstruct(parsed[0], progress=False)
    elif kind == "metrics":
        config = parsed[0]
        evaluate_reconstructions(config, feature_models=feature_models(runner, config), progress=False)
    else:
        raise ValueError(f"unknown unit kind {kind!r}")


__all__ = ["MANIFEST", "PlanError", "Runner", "STARTED", "input_problem", "run_unit"]
