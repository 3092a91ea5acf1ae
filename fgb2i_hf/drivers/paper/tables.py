"""The paper's tables and plots, from the outputs of the other units (``<output_dir>/tables/``):

1. ``main``: LDM, Brain-Diffuser and MindEye, each without and with FgB2I, the eight image metrics, the mean over the
   subjects and each subject (deltas against each base);
2. ``captions``: the test captions of stage 1 and stage 2 beside the shuffled-brain control (deltas against it),
   all subjects and each;
3. ``ablation``: LDM + FgB2I on one subject with the brain model trained with CE only, + L1, + L2, + L3 and all
   three rewards (image metrics, and the fused captions' metrics against the test references; deltas against CE);
4. ``coco``: LDM + FgB2I with a stage-1 model trained on COCO captions vs on the fine captions (deltas against LDM);
5. ``w_sweep``: each base at every fusion weight on one subject (deltas against w = 0, the base).

Each table is ``<name>.md`` and ``<name>.json``; ``paper.md`` holds all of them with the plots
(``training_curves.png``, ``main_bars.png``, ``w_sweep.png``).
"""

from __future__ import annotations

import json
import os

import numpy as np

from ...core import atomic_write_json, atomic_write_text
from ...data.contract import DataContract
from ...metrics import caption_metrics, format_table, object_metrics
from ...metrics.reconstruction import LOWER_IS_BETTER, RECONSTRUCTION_METRICS
from ...plots import metric_sweep, paired_bars, training_curves
from ..compare import comparison_table
from .plan import ABLATION, ABLATION_LABELS, COCO_RUNS, Unit, sweep_row

CAPTION_COLUMNS = ("BLEU-4", "ROUGE-L", "CIDEr")  # the fused captions' scores in table 3 (no METEOR jar)
CAPTION_ROWS = {"ce": "CE (stage 1)", "rl": "CE + RL (stage 2)"}
CONTROL = "shuffled-brain control"


def _json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _metric_rows(unit: Unit) -> dict[str, dict[str, float]]:
    return _json(os.path.join(unit.folder, "metrics.json"))["rows"]


def _mean_rows(tables: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {name: {c: float(np.mean([t[name][c] for t in tables])) for c in tables[0][name]} for name in tables[0]}


def _write(folder: str, name: str, text: str, record: dict) -> str:
    atomic_write_text(os.path.join(folder, f"{name}.md"), text.rstrip() + "\n")
    atomic_write_json(os.path.join(folder, f"{name}.json"), record)
    return text


class _Tables:
    def __init__(self, units: list[Unit], tables_unit: Unit, by_name: dict[str, Unit]):
        self.units, self.unit, self.by_name = units, tables_unit, by_name
        self.folder = tables_unit.folder
        self.metrics = [u for u in units if u.kind == "metrics"]
        self.main = {(u.meta["base"], u.meta["subject"]): u for u in self.metrics if u.meta.get("table") == "main"}
        self.subjects = list(dict.fromkeys(s for _, s in self.main))
        self.bases = list(dict.fromkeys(b for b, _ in self.main))
        self.labels = {u.meta["base"]: u.meta["label"] for u in self.main.values()}

    # 1 ---------------------------------------------------------------------------------------------------------
    def main_table(self) -> tuple[str, dict]:
        per_subject = {s: {} for s in self.subjects}
        pairs = {}
        for (base, subject), unit in self.main.items():
            per_subject[subject].update(_metric_rows(unit))
            label = self.labels[base]
            pairs[f"{label} + FgB2I"] = label
        mean = _mean_rows(list(per_subject.values()))
        text = [f"Mean over {', '.join(self.subjects)} (each subject's test images; deltas against each base):", "",
                comparison_table(mean, pairs)]
        for subject, rows in per_subject.items():
            text += ["", f"{subject}:", "", comparison_table(rows, pairs)]
        record = {"mean": mean, "subjects": per_subject, "pairs": pairs, "metrics": list(RECONSTRUCTION_METRICS)}
        return _write(self.folder, "main", "\n".join(text), record), record

    # 2 ---------------------------------------------------------------------------------------------------------
    def caption_table(self) -> tuple[str, dict]:
        results = {u.meta["model"]: _json(os.path.join(u.folder, "metrics.json"))
                   for u in self.units if u.kind == "caption_eval"}
        rows = {CAPTION_ROWS[m]: r["rows"]["brain"] for m, r in results.items()}
        last = results[list(results)[-1]]
        rows[CONTROL] = last["rows"][CONTROL]
        text = ["Test split, all subjects (deltas against the shuffled-brain control: the stage-2 model given "
                "another brain of the same subject):", "", format_table(rows, baseline=CONTROL)]
        subjects = {}
        for subject in last.get("subjects", {}):
            subjects[subject] = {CAPTION_ROWS[m]: r["subjects"][subject]["brain"] for m, r in results.items()}
            subjects[subject][CONTROL] = last["subjects"][subject][CONTROL]
            text += ["", f"{subject}:", "", format_table(subjects[subject], baseline=CONTROL)]
        record = {"rows": rows, "baseline": CONTROL, "subjects": subjects}
        return _write(self.folder, "captions", "\n".join(text), record), record

    # 3 ---------------------------------------------------------------------------------------------------------
    def references(self) -> dict[tuple[str, int], dict]:
        """The test rows' references and objects, from the stage-2 caption evaluation's predictions.jsonl."""
        unit = next(u for u in self.units if u.kind == "caption_eval" and u.meta["model"] == "rl")
        return {(r["subject"], int(r["nsd_id"])): r for r in _jsonl(os.path.join(unit.folder, "predictions.jsonl"))}

    def fused_caption_scores(self, recon: Unit, references) -> dict[str, float]:
        subject = recon.meta["subject"]
        records = [r for r in _jsonl(os.path.join(recon.folder, "captions.jsonl"))
                   if (subject, int(r["nsd_id"])) in references]
        if not records:
            return {}
        refs = [references[subject, int(r["nsd_id"])] for r in records]
        captions = [r["caption"] for r in records]
        scores = caption_metrics(captions, [r["references"] for r in refs], metrics=list(CAPTION_COLUMNS))
        scores["object F1"] = object_metrics(captions, [r["objects"] for r in refs])["f1"]
        return scores

    def ablation_table(self) -> tuple[str, dict]:
        references = self.references()
        rows = {}
        for run in ABLATION:
            metrics = next(u for u in self.metrics if u.meta.get("table") == "ablation" and u.meta["run"] == run)
            row = dict(_metric_rows(metrics)[ABLATION_LABELS[run]])
            row.update({f"caption {k}": v for k, v in
                        self.fused_caption_scores(self.by_name[metrics.needs[0]], references).items()})
            rows[ABLATION_LABELS[run]] = row
        subject = metrics.meta["subject"]
        text = [f"LDM + FgB2I on {subject}'s test images with the brain model trained from stage 1 with CE only, or "
                "with each reward (L1 object accuracy, L2 CLIP text-image, L3 CLIP image-image), or all three; "
                "image metrics, then the fused captions against the test references (deltas against CE):", "",
                format_table(rows, baseline=ABLATION_LABELS["ce"])]
        record = {"rows": rows, "baseline": ABLATION_LABELS["ce"], "subject": subject}
        return _write(self.folder, "ablation", "\n".join(text), record), record

    # 4 ---------------------------------------------------------------------------------------------------------
    def coco_table(self) -> tuple[str, dict]:
        units = {u.meta["run"]: u for u in self.metrics if u.meta.get("table") == "coco"}
        subject = next(iter(units.values())).meta["subject"]
        label = self.labels["ldm"]
        rows = {label: _metric_rows(self.main["ldm", subject])[label]}
        for run, name in COCO_RUNS.items():
            row = dict(_metric_rows(units[run])[name])
            captions = _jsonl(os.path.join(self.by_name[units[run].needs[0]].folder, "captions.jsonl"))
            row["caption words"] = float(np.mean([len(r["caption"].split()) for r in captions])) if captions else None
            rows[f"{label} + FgB2I, {name} as targets"] = row
        text = [f"{label} + FgB2I on {subject}'s test images with a stage-1 model trained on COCO's captions vs on "
                f"the fine captions (deltas against {label}; caption words: mean length of the fused captions):", "",
                format_table(rows, baseline=label)]
        record = {"rows": rows, "baseline": label, "subject": subject}
        return _write(self.folder, "coco", "\n".join(text), record), record

    # 5 ---------------------------------------------------------------------------------------------------------
    def sweep(self) -> dict[str, dict[float, dict[str, float]]]:
        units = [u for u in self.metrics if u.meta.get("table") == "w_sweep"]
        subject = units[0].meta["subject"]
        out = {}
        for base in self.bases:
            main = self.main[base, subject]
            label = self.labels[base]
            rows = _metric_rows(main)
            points = {0.0: rows[label], main.meta["w"]: rows[f"{label} + FgB2I"]}
            for unit in (u for u in units if u.meta["base"] == base):
                points[unit.meta["w"]] = _metric_rows(unit)[sweep_row(unit.meta["w"])]
            out[label] = dict(sorted(points.items()))
        self.sweep_subject = subject
        return out

    def sweep_table(self, sweep) -> tuple[str, dict]:
        text = [f"Each base on {self.sweep_subject}'s test images at every fusion weight w (w = 0: the base; "
                "deltas against it):"]
        for label, points in sweep.items():
            rows = {(f"w = 0 ({label})" if w == 0 else f"w = {w:g}"): values for w, values in points.items()}
            text += ["", f"{label}:", "", format_table(rows, baseline=f"w = 0 ({label})")]
        record = {"subject": self.sweep_subject, "sweep": {label: {f"{w:g}": row for w, row in points.items()}
                                                           for label, points in sweep.items()}}
        return _write(self.folder, "w_sweep", "\n".join(text), record), record

    # plots -----------------------------------------------------------------------------------------------------
    def plots(self, main: dict, sweep) -> dict[str, str]:
        ce = self.by_name["ce"]
        result = os.path.join(ce.folder, "result.json")
        ce_history = _json(result).get("log_history", []) if os.path.isfile(result) else []
        rl_history = _jsonl(os.path.join(self.by_name["rl"].folder, "log.jsonl"))
        paths = {"training_curves": training_curves(ce_history, rl_history,
                                                    os.path.join(self.folder, "training_curves.png"))}
        metrics = list(RECONSTRUCTION_METRICS)
        pairs = {self.labels[b]: (main["mean"][self.labels[b]], main["mean"][f"{self.labels[b]} + FgB2I"])
                 for b in self.bases}
        per_subject = {self.labels[b]: [(rows[self.labels[b]], rows[f"{self.labels[b]} + FgB2I"])
                                        for rows in main["subjects"].values()] for b in self.bases}
        paths["main_bars"] = paired_bars(pairs, metrics, os.path.join(self.folder, "main_bars.png"),
                                         per_subject=per_subject, lower_is_better=LOWER_IS_BETTER,
                                         title=f"Base vs + FgB2I, mean over {', '.join(self.subjects)} (dots: "
                                               "subjects)")
        if sweep:
            paths["w_sweep"] = metric_sweep(sweep, metrics, os.path.join(self.folder, "w_sweep.png"),
                                            lower_is_better=LOWER_IS_BETTER,
                                            title=f"Fusion weight w, {self.sweep_subject} (w = 0: the base)")
        return paths


def write_tables(units: list[Unit], tables_unit: Unit, by_name: dict[str, Unit]) -> dict[str, str]:
    """Write the tables this plan made (``tables_unit.meta["tables"]``), the plots and ``paper.md``; the folder gets
    the stage-2 model's data contract (the contract every table's artifacts share)."""
    tables = _Tables(units, tables_unit, by_name)
    names = tables_unit.meta["tables"]
    texts, main_text_record = {}, tables.main_table()
    texts["main"], main = main_text_record
    texts["captions"], _ = tables.caption_table()
    sweep = tables.sweep() if "w_sweep" in names else None
    if "ablation" in names:
        texts["ablation"], _ = tables.ablation_table()
    if "coco" in names:
        texts["coco"], _ = tables.coco_table()
    if sweep:
        texts["w_sweep"], _ = tables.sweep_table(sweep)
    plots = tables.plots(main, sweep)
    titles = {"main": "1. Base vs + FgB2I (the main table)", "captions": "2. Captions",
              "ablation": "3. The rewards (ablation)", "coco": "4. COCO vs fine captions as training targets",
              "w_sweep": "5. The fusion weight w"}
    lines = ["# The paper's tables", ""]
    for name in names:
        lines += [f"## {titles[name]}", "", texts[name], ""]
    lines += ["## Plots", ""] + [f"![{name}]({os.path.basename(path)})" for name, path in plots.items()]
    atomic_write_text(os.path.join(tables.folder, "paper.md"), "\n".join(lines) + "\n")
    contract = DataContract.find(by_name["rl"].artifacts[0])
    if contract is not None:
        contract.save(tables.folder)
    return {**{n: os.path.join(tables.folder, f"{n}.md") for n in texts}, **plots}


__all__ = ["write_tables"]
