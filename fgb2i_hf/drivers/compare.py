"""Base vs FgB2I on all three bases, one split, one table: what ``recipes/compare_bases.py`` runs.

The paper's main table: the eight image metrics for LDM, Brain-Diffuser and MindEye, each without and with
the text bridge, with the FgB2I rows showing their deltas against their own base. Base and FgB2I images of
one stimulus share their noise (per-image generators), so the deltas measure the bridge, not the seed.

Inputs the bases do not compute themselves:

* Brain-Diffuser's low-level images (VDVAE in the paper): ``low_level_dir``;
* MindEye's CLIP-image embeddings and blurry images: ``mindeye_inputs`` (see ``MindEyeInputs``).

When they are missing and ``stand_ins`` is on (SimNSD runs), they are replaced, and the table says so:
the low-level image is the LDM's own decoded latent z (VAE-decoded ridge prediction) and MindEye's
embeddings are Brain-Diffuser's ridge CLIP-vision predictions with that image as the blurry one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..core import atomic_write_text
from ..pipelines import get_base
from .reconstruct import ReconstructConfig, load_images, pipeline_for, reconstruct, save_png, split_rows

NOTE_STAND_INS = ("Stand-ins (not the published inputs): {items}. Values measure the pipeline mechanics with "
                  "these inputs, not the published methods.")


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
    diffusion_models: dict | None = field(default=None, metadata={
        "help": "Diffusion backbone per base, {base: Hub id or folder or 'tiny-random'} (JSON on the CLI); a base "
                "without an entry takes <backbone>_model (sd_model / vd_model), else its spec's published model."})
    decoders_dirs: dict | None = field(default=None, metadata={
        "help": "fit_decoders output_dir per base, {base: folder}; a base without an entry takes <base>_decoders_dir."})
    encoders_from: dict | None = field(default=None, metadata={
        "help": "The decoders' target models per base, {base: folder} (<decoders_dir>/target_models for "
                "tiny-random); a base without an entry takes <base>_encoders_from."})
    sd_model: str | None = field(default=None, metadata={
        "help": "Backbone of the bases on Stable Diffusion (LDM; default CompVis/stable-diffusion-v1-4)."})
    vd_model: str | None = field(default=None, metadata={
        "help": "Backbone of the bases on Versatile Diffusion (default shi-labs/versatile-diffusion)."})
    ldm_decoders_dir: str | None = field(default=None, metadata={"help": "fit_decoders output_dir for ldm."})
    brain_diffuser_decoders_dir: str | None = field(default=None, metadata={
        "help": "fit_decoders output_dir for brain_diffuser."})
    ldm_encoders_from: str | None = field(default=None, metadata={
        "help": "The ldm decoders' target models (<ldm_decoders_dir>/target_models for tiny-random)."})
    brain_diffuser_encoders_from: str | None = field(default=None, metadata={
        "help": "The brain_diffuser decoders' target models."})
    low_level_dir: str | None = field(default=None, metadata={
        "help": "Brain-Diffuser's low-level images <nsd_id>.png (VDVAE)."})
    mindeye_inputs: str | None = field(default=None, metadata={"help": "MindEye's inputs file (MindEyeInputs)."})
    stand_ins: bool = field(default=False, metadata={
        "help": "Replace missing low-level images / MindEye inputs by stand-ins from the ridge decoders "
                "(SimNSD mechanics runs; the table says so)."})
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
        for name in ("diffusion_models", "decoders_dirs", "encoders_from"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, json.loads(value) if value.strip() else None)


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


def _per_base(config: CompareBasesConfig, mapping: str, legacy: str | None, base: str):
    """The option of one base: the ``mapping`` dict's entry, else the legacy per-name field (``legacy``)."""
    value = (getattr(config, mapping) or {}).get(base)
    return value if value is not None or legacy is None else getattr(config, legacy, None)


def _reconstruct_config(config: CompareBasesConfig, base: str, **overrides) -> ReconstructConfig:
    spec = get_base(base)
    return ReconstructConfig(
        nsd_root=config.nsd_root, output_dir=os.path.join(config.output_dir, base), base=base,
        subject=config.subject, split=config.split, max_samples=config.max_samples, batch_size=config.batch_size,
        diffusion_model=_per_base(config, "diffusion_models", f"{spec.backbone.name}_model", base),
        encoders_from=_per_base(config, "encoders_from", f"{base}_encoders_from", base),
        decoders_dir=_per_base(config, "decoders_dirs", f"{base}_decoders_dir", base),
        brain_model=config.brain_model, w=config.w, fusion=config.fusion,
        num_inference_steps=config.num_inference_steps, height=config.height, seed=config.seed, dtype=config.dtype,
        device=config.device, **overrides)


def make_stand_ins(config: CompareBasesConfig, dataset=None) -> tuple[str | None, str | None, list[str]]:
    """Low-level images from the LDM's decoded z and MindEye inputs from Brain-Diffuser's CLIP-vision decoder."""
    from ..pipelines.mindeye_inputs import MindEyeInputs

    low_level_dir, mindeye_path, made = config.low_level_dir, config.mindeye_inputs, []
    needs_low_level = low_level_dir is None and {"brain_diffuser", "mindeye"} & set(config.bases)
    needs_mindeye = mindeye_path is None and "mindeye" in config.bases
    if not (needs_low_level or needs_mindeye):
        return low_level_dir, mindeye_path, made
    rows = split_rows(_reconstruct_config(config, "ldm"), dataset)
    ids = [int(i) for i in rows["nsd_id"]]
    betas = torch.from_numpy(np.stack([np.asarray(b, np.float32) for b in rows.with_format("numpy")["betas"]]))
    if needs_low_level:
        ldm = pipeline_for(_reconstruct_config(config, "ldm"), betas.shape[1])
        low_level_dir = os.path.join(config.output_dir, "stand_ins", "low_level")
        os.makedirs(low_level_dir, exist_ok=True)
        with torch.no_grad():
            z = ldm.predict_with(ldm.z_decoder, "z_decoder", betas, config.subject, None, ldm.device, ldm.vae.dtype)
            images = ldm.decode_latents_to_images(z, "pil")
        for i, image in zip(ids, images):
            save_png(image, os.path.join(low_level_dir, f"{i}.png"))
        made.append("Brain-Diffuser's and MindEye's low-level images = the LDM's VAE-decoded ridge latent z")
    if needs_mindeye:
        bd = pipeline_for(_reconstruct_config(config, "brain_diffuser"), betas.shape[1])
        with torch.no_grad():
            vision = bd.predict_with(bd.clip_vision_decoder, "clip_vision_decoder", betas, config.subject, None,
                                     bd.device, torch.float32)
        mindeye_path = os.path.join(config.output_dir, "stand_ins", "mindeye_inputs.safetensors")
        MindEyeInputs(ids, vision.cpu(), load_images(low_level_dir, ids, "low-level image"),
                      embed_shape=None).save(mindeye_path)
        made.append("MindEye's CLIP-image embeddings = Brain-Diffuser's ridge CLIP-vision predictions")
    return low_level_dir, mindeye_path, made


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
    missing = []
    if {"brain_diffuser", "mindeye"} & set(config.bases) and config.low_level_dir is None:
        missing.append("low_level_dir")
    if "mindeye" in config.bases and config.mindeye_inputs is None:
        missing.append("mindeye_inputs")
    if missing and not config.stand_ins:
        raise ValueError(f"missing {missing}: give them, or set stand_ins (SimNSD mechanics runs only)")
    low_level_dir, mindeye_path, stand_ins = make_stand_ins(config, dataset)

    stimuli = stimuli if stimuli is not None else NSDStimuli(config.nsd_root)
    models = feature_models if feature_models is not None else feature_models_for(EvaluateReconstructionsConfig(
        nsd_root=config.nsd_root, reconstructions=[], output="", feature_models=config.feature_models,
        clip_model=config.clip_model, swav_weights=config.swav_weights, device=config.device, seed=config.seed))
    rows, pairs, summaries = {}, {}, {}
    for base in config.bases:
        run = _reconstruct_config(config, base, low_level_dir=low_level_dir if base == "brain_diffuser" else None,
                                  mindeye_inputs=mindeye_path if base == "mindeye" else None)
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
    table = comparison_table(rows, pairs)
    note = NOTE_STAND_INS.format(items="; ".join(stand_ins)) if stand_ins else ""
    if config.feature_models == "random":
        note += (" " if note else "") + "Feature networks have random weights: the feature columns are mechanics only."
    _write_atomic(os.path.join(config.output_dir, "comparison.md"), table + ("\n\n" + note if note else "") + "\n")
    deltas = {r: table_deltas({r: rows[r], b: rows[b]}, b)[r] for r, b in pairs.items()}
    record = {"rows": rows, "deltas": deltas, "pairs": pairs, "w": config.w, "fusion": config.fusion,
              "subject": config.subject, "split": config.split, "stand_ins": stand_ins, "note": note,
              "images": {b: s["images"] for b, s in summaries.items()}, "config": asdict(config)}
    _write_atomic(os.path.join(config.output_dir, "comparison.json"), json.dumps(record, indent=2) + "\n")
    return {"rows": rows, "deltas": deltas, "table": table, "note": note, "summaries": summaries}


__all__ = ["CompareBasesConfig", "compare_bases", "comparison_table", "make_stand_ins"]
