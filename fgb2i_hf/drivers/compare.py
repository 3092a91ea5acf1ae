"""Base vs FgB2I on all three bases, one split, one table: what ``recipes/compare_bases.py`` runs.

The paper's main table: the eight image metrics for LDM, Brain-Diffuser and MindEye, each without and with
the text bridge, with the FgB2I rows showing their deltas against their own base. Base and FgB2I images of
one stimulus share their noise (per-image generators), so the deltas measure the bridge, not the seed.

Every base computes its inputs from betas itself (LDM: ridge z and c; Brain-Diffuser: ridge CLIP-text, CLIP-vision
and VDVAE latents; MindEye: its model's prior and low-level head). ``base_options`` gives a base any other
``ReconstructConfig`` setting (``{"mindeye": {"mindeye_inputs": "me.safetensors"}}`` to use a user's MindEye
outputs, ``{"brain_diffuser": {"low_level_dir": ...}}`` for given low-level images, ``components``...).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from ..core import atomic_write_text
from ..data.contract import DataContract
from ..pipelines import get_base
from .reconstruct import ReconstructConfig, load_images, reconstruct



@dataclass
class CompareBasesConfig:
    """What ``recipes/compare_bases.py`` reads from ``--config`` YAML and the command line."""

    nsd_root: str = field(metadata={"help": "NSD root, real or SimNSD (raw layout)."})
    output_dir: str = field(metadata={"help": "Where each base's reconstructions and comparison.{md,json} go."})
    bases: list[str] = field(default_factory=lambda: ["ldm", "brain_diffuser", "mindeye"],
                             metadata={"help": "Bases to compare: registered bases (fgb2i_hf.pipelines.bases)."})
    subject: str = field(default="subj01", metadata={"help": "Subject."})
    split: str = field(default="test", metadata={"help": "Split.", "choices": ["train", "test"]})
    max_samples: int | None = field(default=None, metadata={"help": "Only the first N images."})
    batch_size: int = field(default=4, metadata={"help": "Images per pipeline call."})
    brain_model: str | None = field(default=None, metadata={"help": "BrainPrefixGPT2 folder or name."})
    base_options: dict | None = field(default=None, metadata={
        "help": "Per-base ReconstructConfig settings, {base: {field: value}} (JSON on the CLI), e.g. "
                "{\"mindeye\": {\"components\": {\"mindeye_model\": \"outputs/mindeye/final\"}}, \"ldm\": "
                "{\"decoders_dir\": \"outputs/decoders_ldm\"}}. They win over the shared settings below."})
    sd_model: str | None = field(default=None, metadata={
        "help": "Backbone of the bases on Stable Diffusion (LDM; default CompVis/stable-diffusion-v1-4)."})
    vd_model: str | None = field(default=None, metadata={
        "help": "Backbone of the bases on Versatile Diffusion (default shi-labs/versatile-diffusion)."})
    ldm_decoders_dir: str | None = field(default=None, metadata={"help": "fit_decoders output_dir for ldm."})
    brain_diffuser_decoders_dir: str | None = field(default=None, metadata={
        "help": "fit_decoders output_dir for brain_diffuser."})
    ldm_encoders_from: str | None = field(default=None, metadata={
        "help": "The ldm decoders' target models (default: the models recorded beside the decoders)."})
    brain_diffuser_encoders_from: str | None = field(default=None, metadata={
        "help": "The brain_diffuser decoders' target models (default: recorded beside the decoders)."})
    mindeye_model: str | None = field(default=None, metadata={
        "help": "The MindEye base's trained MindEyeModel (recipes/train_mindeye.py's <output_dir>/final, "
                "simnsd/mindeye, or 'tiny-random' for mechanics)."})
    best_of_n: int = field(default=1, metadata={"help": "MindEye's best-of-N (its paper: 16; 1 = off)."})
    w: float = field(default=0.5, metadata={"help": "Fusion weight of the FgB2I rows."})
    fusion: str = field(default="average", metadata={"help": "average or guidance."})
    num_inference_steps: int | None = field(default=None, metadata={"help": "All bases (default: each base's)."})
    height: int | None = field(default=None, metadata={
        "help": "Output size of every base (LDM: z's VAE round trip to it; Versatile Diffusion: 512 natively)."})
    seed: int = field(default=0, metadata={"help": "Seed of the per-image generators and tiny models."})
    dtype: str = field(default="float32", metadata={
        "help": "float32 / float16 / bfloat16 (half precision on a GPU only: on a CPU it is far slower)."})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda if available)."})
    feature_models: str = field(default="pretrained", metadata={"help": "pretrained or random (mechanics only)."})
    clip_model: str = field(default="ViT-L-14-quickgelu", metadata={"help": "CLIP for the CLIP column."})
    swav_weights: str | None = field(default=None, metadata={"help": "Local SwAV checkpoint."})
    eval_batch_size: int = field(default=32, metadata={"help": "Images per pass of the feature networks."})

    def __post_init__(self):
        if isinstance(self.base_options, str):
            self.base_options = json.loads(self.base_options) if self.base_options.strip() else None
        unknown = {f"{base}.{k}" for base, options in (self.base_options or {}).items() for k in options
                   if k not in ReconstructConfig.__dataclass_fields__}
        if unknown:
            raise ValueError(f"base_options sets {sorted(unknown)}, which are not ReconstructConfig fields")


def comparison_table(rows: dict[str, dict[str, float]], pairs: dict[str, str]) -> str:
    """One markdown table; each row in ``pairs`` (row -> its base row) shows deltas against its base."""
    from ..metrics import format_table

    lines, done = [], set()
    for name in rows:
        if name in done:
            continue
        group = {name: rows[name]}
        followers = [r for r, base in pairs.items() if base == name]
        group.update({r: rows[r] for r in followers})
        table = format_table(group, baseline=name if followers else None).splitlines()
        lines.extend(table if not lines else table[2:])
        done.update(group)
    return "\n".join(lines)


def _write_atomic(path: str, text: str) -> None:
    atomic_write_text(path, text)


def _reconstruct_config(config: CompareBasesConfig, base: str) -> ReconstructConfig:
    """One base's run: the shared settings, the base's own by naming rule (``<backbone>_model``,
    ``<base>_decoders_dir``, ``<base>_encoders_from``, the model of each of its components), then ``base_options``."""
    spec = get_base(base)
    options = dict(
        nsd_root=config.nsd_root, output_dir=os.path.join(config.output_dir, base), base=base,
        subject=config.subject, split=config.split, max_samples=config.max_samples, batch_size=config.batch_size,
        diffusion_model=getattr(config, f"{spec.backbone.name}_model", None),
        encoders_from=getattr(config, f"{base}_encoders_from", None),
        decoders_dir=getattr(config, f"{base}_decoders_dir", None),
        components={name: getattr(config, name) for name in spec.components if getattr(config, name, None)} or None,
        brain_model=config.brain_model, w=config.w, fusion=config.fusion, best_of_n=config.best_of_n,
        num_inference_steps=config.num_inference_steps, height=config.height, seed=config.seed, dtype=config.dtype,
        device=config.device)
    options.update((config.base_options or {}).get(base, {}))
    return ReconstructConfig(**options)


def compare_bases(config: CompareBasesConfig, dataset=None, stimuli=None, feature_models=None,
                  progress: bool = True) -> dict:
    """Reconstruct with every base at w = 0 and w, score, and write ``comparison.md`` / ``comparison.json``."""
    from ..data import NSDStimuli
    from ..metrics import reconstruction_metrics
    from ..metrics.table import table_deltas
    from .evaluate_reconstructions import EvaluateReconstructionsConfig, feature_models_for

    if not config.bases:
        raise ValueError("no bases to compare: list registered bases, e.g. [ldm, brain_diffuser, mindeye]")
    specs = {base: get_base(base) for base in config.bases}  # an unknown name fails here, naming the known ones
    os.makedirs(config.output_dir, exist_ok=True)

    stimuli = stimuli if stimuli is not None else NSDStimuli(config.nsd_root)
    models = feature_models if feature_models is not None else feature_models_for(EvaluateReconstructionsConfig(
        nsd_root=config.nsd_root, reconstructions=[], output="", feature_models=config.feature_models,
        clip_model=config.clip_model, swav_weights=config.swav_weights, device=config.device, seed=config.seed))
    rows, pairs, summaries = {}, {}, {}
    for base in config.bases:
        run = _reconstruct_config(config, base)
        summaries[base] = reconstruct(run, dataset=dataset, stimuli=stimuli, progress=progress)
        ids = summaries[base]["nsd_ids"]
        gt = stimuli.get(ids)
        label, fgb2i = specs[base].label, f"{specs[base].label} + FgB2I"
        for name, folder in ((label, "base"), (fgb2i, "fgb2i")):
            images = load_images(os.path.join(run.output_dir, folder), ids, name)
            rows[name] = reconstruction_metrics(gt, images, feature_extractors=models,
                                                batch_size=config.eval_batch_size, device=config.device,
                                                progress=progress)
        pairs[fgb2i] = label
    contracts = {base: DataContract.find(os.path.join(config.output_dir, base)) for base in config.bases}
    known = [(base, c) for base, c in contracts.items() if c is not None]
    for base, contract in known[1:]:  # one table, one test split: every base's data must agree
        known[0][1].check_compatible(contract, f"the {known[0][0]} reconstructions", f"the {base} reconstructions",
                                     subjects=[config.subject])
    if known:
        known[0][1].save(config.output_dir)
    table = comparison_table(rows, pairs)
    note = ""
    if config.feature_models == "random":
        note = "Feature networks have random weights: the feature columns are mechanics only."
    _write_atomic(os.path.join(config.output_dir, "comparison.md"), table + ("\n\n" + note if note else "") + "\n")
    deltas = {r: table_deltas({r: rows[r], b: rows[b]}, b)[r] for r, b in pairs.items()}
    record = {"rows": rows, "deltas": deltas, "pairs": pairs, "w": config.w, "fusion": config.fusion,
              "subject": config.subject, "split": config.split, "note": note,
              "images": {b: s["images"] for b, s in summaries.items()}, "config": asdict(config)}
    _write_atomic(os.path.join(config.output_dir, "comparison.json"), json.dumps(record, indent=2) + "\n")
    return {"rows": rows, "deltas": deltas, "table": table, "note": note, "summaries": summaries}


__all__ = ["CompareBasesConfig", "compare_bases", "comparison_table"]
