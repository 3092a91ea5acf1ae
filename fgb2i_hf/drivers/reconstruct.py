"""Reconstruct a split of (Sim)NSD through an FgB2I pipeline: what ``recipes/reconstruct.py`` runs.

For every image of the split (one subject; each nsd_id once) it writes, under ``<output_dir>``:

* ``fgb2i/<nsd_id>.png`` — the FgB2I reconstruction at weight ``w`` (extra samples ``<nsd_id>_<k>.png``);
* ``base/<nsd_id>.png`` — the base method (``w = 0``) from the same noise, when ``run_base``;
* ``low_level/<nsd_id>.png`` — the low-level image the img2img started from (Brain-Diffuser's VDVAE decode,
  MindEye's blurry image), when the base has one;
* ``captions.jsonl`` — ``{"nsd_id", "caption"}``, the decoded captions;
* ``grid.png`` — GT | base | FgB2I for the first ``grid_rows`` images, captions under GT and FgB2I;
* ``reconstruct.yaml`` — this run's settings and package versions.

Every image has its own generator seeded from ``(seed, nsd_id, sample)``, so the base and FgB2I images
share their noise, and a killed run resumes where it stopped with the same images (PNGs are written to a
temporary name and renamed; finished ids are skipped).
"""

from __future__ import annotations

import inspect
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import PIL.Image
import torch
import yaml
from tqdm.auto import tqdm

from ..core import (
    TINY_RANDOM,
    append_jsonl,
    atomic_write_text,
    betas_tensor,
    resolve_pretrained,
    save_png_atomic,
    versions,
)
from ..data import NSDStimuli, data_contract, load_nsd
from ..data.contract import SHARED_FIELDS, ContractError, DataContract
from ..pipelines import build_pipeline, get_base
from ..pipelines.mindeye_inputs import MindEyeInputs
from ..visualization import reconstruction_grid
from .fit import recorded_target_models


@dataclass
class ReconstructConfig:
    """What ``recipes/reconstruct.py`` reads from ``--config`` YAML and the command line."""

    nsd_root: str = field(metadata={"help": "NSD root, real or SimNSD (raw layout)."})
    output_dir: str = field(metadata={"help": "Where the PNGs, captions.jsonl, grid.png and reconstruct.yaml go."})
    base: str = field(default="ldm", metadata={
        "help": "Base method, a registered base (ldm, brain_diffuser, mindeye, ...: fgb2i_hf.pipelines.bases)."})
    subject: str = field(default="subj01", metadata={"help": "The subject whose betas are decoded."})
    split: str = field(default="test", metadata={"help": "Dataset split.", "choices": ["train", "test"]})
    max_samples: int | None = field(default=None, metadata={"help": "Reconstruct only the first N images."})
    batch_size: int = field(default=4, metadata={"help": "Images per pipeline call."})
    diffusion_model: str | None = field(default=None, metadata={
        "help": "Diffusion backbone: Hub id or folder (default CompVis/stable-diffusion-v1-4 for ldm, "
                "shi-labs/versatile-diffusion otherwise) or 'tiny-random' (mechanics only)."})
    scheduler: str | None = field(default=None, metadata={
        "help": "ddim / unipc / pndm / dpm (default: DDIM for ldm and brain_diffuser, UniPC for mindeye)."})
    encoders_from: str | None = field(default=None, metadata={
        "help": "Folder of the models the decoders' targets came from (fit_decoders' <output_dir>/target_models); "
                "their VAE/CLIP encoders replace the backbone's."})
    brain_model: str | None = field(default=None, metadata={
        "help": "BrainPrefixGPT2 folder or name (its tokenizer is loaded from the same place)."})
    decoders_dir: str | None = field(default=None, metadata={
        "help": "fit_decoders' output_dir (or simnsd/ldm_base): decoders are read from "
                "<decoders_dir>/<subject>/<target>."})
    rescale_predictions: bool | None = field(default=None, metadata={
        "help": "Brain-Diffuser's post-hoc rescaling of the ridge predictions over the whole split "
                "(default: yes for brain_diffuser, no for ldm)."})
    low_level_dir: str | None = field(default=None, metadata={
        "help": "Folder of low-level images <nsd_id>.png to start from instead of the base's own low-level stage."})
    components: dict | None = field(default=None, metadata={
        "help": "The base's own trained models, {name: folder, Hub id or 'tiny-random'} (JSON on the CLI): MindEye's "
                "mindeye_model; Brain-Diffuser's vdvae (default: the VDVAE its decoders were fitted with)."})
    best_of_n: int = field(default=1, metadata={"help": "MindEye's best-of-N (its paper: 16; 1 = off)."})
    mindeye_inputs: str | None = field(default=None, metadata={
        "help": "MindEye: .safetensors/.pt with nsd_ids, clip_image_embeds, blurry_images (MindEyeInputs)."})
    w: float = field(default=0.5, metadata={"help": "Fusion weight: 0 = the base method, 1 = text alone."})
    fusion: str = field(default="average", metadata={"help": "Fusion mode.", "choices": ["average", "guidance"]})
    run_base: bool = field(default=True, metadata={"help": "Also reconstruct with w = 0 (the base column)."})
    num_inference_steps: int | None = field(default=None, metadata={"help": "Default: the base's (50/50/20)."})
    guidance_scale: float | None = field(default=None, metadata={"help": "Default: the base's (5.0/7.5/3.5)."})
    strength: float | None = field(default=None, metadata={"help": "Default: the base's (0.8/0.75/0.85)."})
    height: int | None = field(default=None, metadata={"help": "Output size (ldm: z's VAE round trip, e.g. 512)."})
    width: int | None = field(default=None, metadata={"help": "Output width (default: as height)."})
    num_images_per_prompt: int = field(default=1, metadata={"help": "Samples per image."})
    num_beams: int = field(default=1, metadata={"help": "Beam search width for the captions (1 = greedy)."})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "Caption length limit in GPT-2 tokens (default: the brain model's max_caption_tokens)."})
    seed: int = field(default=0, metadata={"help": "Seed of the per-image generators (and tiny random models)."})
    dtype: str = field(default="float32", metadata={"help": "float32 (CPU) or float16 (GPU).",
                                                    "choices": ["float32", "float16", "bfloat16"]})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})
    grid_rows: int = field(default=8, metadata={"help": "Rows of grid.png."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache of the NSD builds (default HF's)."})
    caption_column: str = field(default="fine_captions", metadata={
        "help": "Column whose first entry is printed under GT in the grid (falls back to captions)."})

    def __post_init__(self):
        if isinstance(self.components, str):
            self.components = json.loads(self.components) if self.components.strip() else None
        self.decoders_dir = resolve_pretrained(self.decoders_dir)  # simnsd/ldm_base: the shipped world's fit
        if isinstance(self.best_of_n, bool) or not isinstance(self.best_of_n, int) or self.best_of_n < 1:
            raise ValueError(f"best_of_n must be a positive int (1 = off), got {self.best_of_n!r}")


def to_pil(images: torch.Tensor) -> list:
    """Float (N, 3, H, W) in [0, 1] -> PIL images."""
    arrays = (images.clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return [PIL.Image.fromarray(a) for a in arrays]


def image_generator(seed: int, nsd_id: int, sample: int = 0) -> torch.Generator:
    """A CPU generator for one image, independent of batching and of which images ran before."""
    state = int(np.random.SeedSequence([int(seed), int(nsd_id), int(sample)]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(state & (2**63 - 1))


def save_png(image, path: str) -> None:
    """Write a PIL image atomically (temporary name, then rename)."""
    save_png_atomic(image, path)


def load_images(directory: str, nsd_ids, name: str = "image") -> np.ndarray:
    """uint8 (N, H, W, 3) from ``<directory>/<nsd_id>.png``, with a clear error for the missing ones."""
    missing = [i for i in nsd_ids if not os.path.isfile(os.path.join(directory, f"{int(i)}.png"))]
    if missing:
        raise FileNotFoundError(f"{directory}: no {name} for nsd_id {missing[:10]}"
                                + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
                                + " (expected <nsd_id>.png)")
    arrays = [np.asarray(PIL.Image.open(os.path.join(directory, f"{int(i)}.png")).convert("RGB")) for i in nsd_ids]
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(f"{directory}: images of different sizes {sorted({a.shape for a in arrays})}")
    return np.stack(arrays)


def upstream_contracts(config: ReconstructConfig) -> dict[str, DataContract]:
    """``{role: contract}`` of the artifacts this run reads: the brain model (``"captions"``) and the base's own
    models (``"base"``: its decoders, or its trained components such as MindEye's model), each from the
    ``data_contract.json`` beside it. They must agree on every shared field (the test split, sessions, voxels,
    z-scoring, validation rule); ``ContractError`` names the two artifacts otherwise."""
    found = {}
    if isinstance(config.brain_model, str) and config.brain_model != TINY_RANDOM:
        contract = DataContract.find(resolve_pretrained(config.brain_model))
        if contract is not None:
            found[f"the brain model {config.brain_model}"] = ("captions", contract)
    base_sources = [(f"the {config.base} decoders {config.decoders_dir}", config.decoders_dir)]
    base_sources += [(f"the {config.base} component {name}={path}", path)
                     for name, path in (config.components or {}).items() if isinstance(path, str)]
    for label, path in base_sources:
        contract = DataContract.find(resolve_pretrained(path)) if path and path != TINY_RANDOM else None
        if contract is not None:
            found[label] = ("base", contract)
    labels = list(found)
    for label in labels[1:]:
        found[labels[0]][1].check_compatible(found[label][1], labels[0], label, subjects=[config.subject])
    base = [c for role, c in found.values() if role == "base"]
    for other in base[1:]:  # one base's own models were all fitted on rows normalised the same way
        base[0].check_compatible(other, f"the {config.base} base's models", "another of them",
                                 fields=("average_train", "stats"), subjects=[config.subject])
    out = {role: contract for role, contract in found.values()}
    for role, contract in out.items():
        if config.subject not in contract.subjects:
            raise ContractError(f"subject {config.subject} is not among the subjects {list(contract.subjects)} of the "
                                f"{role} artifacts")
    return out


def rows_under(config: ReconstructConfig, contract: DataContract | None, dataset=None):
    """The split's rows of the subject built the way ``contract``'s artifact was trained (``dataset`` when it
    already is; the load_nsd defaults without a contract)."""
    if dataset is not None:
        if contract is None:
            return dataset
        try:
            mine = data_contract(dataset)
        except ValueError:
            mine = None
        if mine is not None and not contract.differences(mine, SHARED_FIELDS + ("average_train", "stats"),
                                                          subjects=[config.subject]):
            return dataset
    options = contract.nsd_options() if contract is not None else {}
    data = load_nsd(config.nsd_root, subjects=[config.subject], cache_dir=config.cache_dir, **options)
    if contract is not None:
        data.data_contract.check_compatible(contract.for_subjects([config.subject]),
                                            f"the NSD rows of {config.nsd_root}", "the artifact that needs them",
                                            fields=SHARED_FIELDS + ("average_train", "stats"))
    return data[config.split]


def split_rows(config: ReconstructConfig, dataset=None):
    """The split's rows of the subject, each nsd_id once (the first row), at most ``max_samples``."""
    if dataset is None:
        dataset = load_nsd(config.nsd_root, subjects=[config.subject], cache_dir=config.cache_dir)[config.split]
    subjects = dataset["subject"]
    ids = dataset["nsd_id"]
    seen, rows = set(), []
    for i, (s, n) in enumerate(zip(subjects, ids)):
        if s == config.subject and n not in seen:
            seen.add(n)
            rows.append(i)
    if not rows:
        raise ValueError(f"{config.nsd_root}: no {config.split} rows for {config.subject}")
    if config.max_samples is not None:
        rows = rows[: config.max_samples]
    return dataset.select(rows)


def _decoders(config: ReconstructConfig) -> dict:
    """``{component: <decoders_dir>/<subject>/<target>}`` of every ridge decoder of the base."""
    if config.decoders_dir is None:
        return {}
    found = {}
    for target in get_base(config.base).targets:
        path = os.path.join(config.decoders_dir, config.subject, target.name)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: no {target.name} decoder for {config.subject} "
                                    f"(run recipes/fit_decoders.py --base {config.base} first)")
        found[target.component] = path
    return found


def recorded_models(config: ReconstructConfig) -> tuple[str | None, dict]:
    """``(encoders_from, components)``: the configured ones, completed from what the decoders were fitted with
    (``<decoders_dir>/fit_decoders.yaml``): the saved tiny target models as encoders, and each component the base
    takes from a target source (Brain-Diffuser's VDVAE)."""
    components = dict(config.components or {})
    encoders_from = config.encoders_from
    if config.decoders_dir is None:
        return encoders_from, components
    recorded = recorded_target_models(config.decoders_dir)
    for name, component in get_base(config.base).components.items():
        if name not in components and component.source in recorded:
            components[name] = recorded[component.source]
    backbone = recorded.get("backbone")
    if encoders_from is None and backbone and os.path.isdir(backbone) and backbone.startswith(config.decoders_dir):
        encoders_from = backbone  # the saved tiny random target models
    return encoders_from, components


def pipeline_for(config: ReconstructConfig, num_voxels: int | None = None):
    """The configured pipeline; ``num_voxels`` (the subject's) sizes ``tiny-random`` brain and MindEye models."""
    dtype = getattr(torch, config.dtype)
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    voxel_counts = {config.subject: num_voxels} if num_voxels else None
    encoders_from, components = recorded_models(config)
    return build_pipeline(config.base, config.diffusion_model, brain_model=config.brain_model,
                          decoders=_decoders(config), scheduler=config.scheduler, encoders_from=encoders_from,
                          dtype=dtype, device=device, seed=config.seed, voxel_counts=voxel_counts,
                          components=components)


def _base_features(pipe, config: ReconstructConfig, betas: torch.Tensor) -> dict:
    """The ridge predictions of the whole split at once, rescaled over it, when the base rescales (Brain-Diffuser:
    the rescaling uses the split's statistics, so it cannot be done batch by batch)."""
    spec = get_base(config.base)
    rescale = config.rescale_predictions if config.rescale_predictions is not None else spec.rescale_predictions
    if not rescale or not spec.targets or len(betas) < 2:
        return {}
    out = {}
    for target in spec.targets:
        decoder = getattr(pipe, target.component, None)
        if decoder is None:
            raise ValueError(f"rescale_predictions needs the {target.component}: set decoders_dir")
        out[target.argument] = decoder.predict(betas.to(decoder.device), subject=config.subject, rescale=True).cpu()
    return out


def _read_captions(path: str) -> dict[int, str]:
    if not os.path.isfile(path):
        return {}
    records = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                records[int(record["nsd_id"])] = record["caption"]
    return records


def _done(config: ReconstructConfig, nsd_id: int, captions: dict) -> bool:
    names = [f"{nsd_id}.png"] + [f"{nsd_id}_{k}.png" for k in range(1, config.num_images_per_prompt)]
    folders = ["fgb2i"] + (["base"] if config.run_base else [])
    pngs = all(os.path.isfile(os.path.join(config.output_dir, d, n)) for d in folders for n in names)
    return pngs and (config.w == 0 or nsd_id in captions)


def reconstruct(config: ReconstructConfig, dataset=None, stimuli=None, pipe=None, progress: bool = True) -> dict:
    """Run the split through the pipeline; returns a summary (counts, folders, seconds per image)."""
    spec = get_base(config.base)
    contracts = upstream_contracts(config)
    caption_contract = contracts.get("captions", contracts.get("base"))
    base_contract = contracts.get("base", caption_contract)
    rows = split_rows(config, rows_under(config, caption_contract, dataset))
    betas = betas_tensor(rows.with_format("numpy", columns=["betas"])[:]["betas"])
    base_betas = None  # the base's models get rows normalised as they were fit (e.g. averaged-row statistics)
    if base_contract is not caption_contract and base_contract.differences(
            caption_contract, ("average_train", "stats"), subjects=[config.subject]):
        base_rows = split_rows(replace(config, max_samples=None), rows_under(config, base_contract, dataset))
        position = {int(i): k for k, i in enumerate(base_rows["nsd_id"])}
        order = [position[int(i)] for i in rows["nsd_id"]]
        base_betas = betas_tensor(base_rows.select(order).with_format("numpy", columns=["betas"])[:]["betas"])
    pipe = pipe if pipe is not None else pipeline_for(config, betas.shape[1])
    pipe.set_progress_bar_config(disable=True)
    for folder in ("fgb2i", "base") if config.run_base else ("fgb2i",):
        os.makedirs(os.path.join(config.output_dir, folder), exist_ok=True)
    _write_settings(config)
    if caption_contract is not None:  # the data these reconstructions were made from (the shared fields agree)
        caption_contract.for_subjects([config.subject]).save(config.output_dir)
    nsd_ids = [int(i) for i in rows["nsd_id"]]
    features = _base_features(pipe, config, betas if base_betas is None else base_betas)
    mindeye = (MindEyeInputs.from_file(config.mindeye_inputs, embed_shape=None)
               if config.mindeye_inputs is not None else None)
    accepted = inspect.signature(pipe.__call__).parameters
    for option, argument in (("mindeye_inputs", "mindeye_inputs"), ("low_level_dir", "image")):
        if getattr(config, option) is not None and argument not in accepted:
            raise ValueError(f"{option} is set, but the {config.base} base's pipeline ({type(pipe).__name__}) takes "
                             f"no `{argument}`")
    captions_path = os.path.join(config.output_dir, "captions.jsonl")
    captions = _read_captions(captions_path)
    todo = [k for k, n in enumerate(nsd_ids) if not _done(config, n, captions)]
    generation = {"num_beams": config.num_beams}
    if config.max_new_tokens is not None:
        generation["max_new_tokens"] = config.max_new_tokens
    call = dict(num_images_per_prompt=config.num_images_per_prompt, output_type="pil",
                caption_generation_kwargs=generation)
    if config.best_of_n != 1:
        call["best_of_n"] = config.best_of_n
    for key in ("num_inference_steps", "guidance_scale", "strength"):
        if getattr(config, key) is not None:
            call[key] = getattr(config, key)
    if config.height is not None:
        call.update(height=config.height, width=config.width or config.height)
    start, n = time.perf_counter(), 0
    for first in tqdm(range(0, len(todo), config.batch_size), desc=f"reconstruct {spec.label}",
                      disable=not progress):
        index = todo[first : first + config.batch_size]
        ids = [nsd_ids[k] for k in index]
        inputs = {name: value[index] for name, value in features.items()}
        if mindeye is not None:
            inputs.update(mindeye_inputs=mindeye, nsd_ids=ids)
        if config.low_level_dir is not None:
            inputs["image"] = load_images(config.low_level_dir, ids, "low-level reconstruction")

        def generators():
            return [image_generator(config.seed, i, s) for i in ids for s in range(config.num_images_per_prompt)]

        runs = [("fgb2i", config.w)] + ([("base", 0.0)] if config.run_base else [])
        for folder, w in runs:
            if base_betas is not None:
                inputs["base_betas"] = base_betas[index]
            out = pipe(betas[index], config.subject, w=w, fusion=config.fusion, generator=generators(), **inputs,
                       **call)
            for j, image in enumerate(out.images):
                i, s = ids[j // config.num_images_per_prompt], j % config.num_images_per_prompt
                name = f"{i}.png" if s == 0 else f"{i}_{s}.png"
                save_png(image, os.path.join(config.output_dir, folder, name))
            if folder == "fgb2i" and getattr(out, "init_images", None) is not None:  # the base's low-level images
                os.makedirs(os.path.join(config.output_dir, "low_level"), exist_ok=True)
                for i, image in zip(ids, to_pil(out.init_images)):
                    save_png(image, os.path.join(config.output_dir, "low_level", f"{i}.png"))
            if folder == "fgb2i" and out.captions is not None:
                append_jsonl(captions_path, [{"nsd_id": i, "caption": c} for i, c in zip(ids, out.captions)])
                captions.update(zip(ids, out.captions))
        n += len(ids)
    seconds = time.perf_counter() - start

    # the grid: GT | base | FgB2I
    shown = nsd_ids[: config.grid_rows]
    stimuli = stimuli if stimuli is not None else NSDStimuli(config.nsd_root)
    columns = {"GT": stimuli.get(shown)}
    if config.run_base:
        columns[spec.label] = load_images(os.path.join(config.output_dir, "base"), shown)
    columns[f"{spec.label} + FgB2I (w={config.w:g})"] = load_images(
        os.path.join(config.output_dir, "fgb2i"), shown)
    texts = {"GT": [_first_caption(rows[k], config.caption_column) for k in range(len(shown))]}
    if config.w > 0:
        texts[list(columns)[-1]] = [captions.get(i, "") for i in shown]
    grid_path = os.path.join(config.output_dir, "grid.png")
    save_png(reconstruction_grid(columns, captions=texts), grid_path)
    return {"images": len(nsd_ids), "reconstructed_now": n, "seconds_per_image": seconds / max(n, 1),
            "output_dir": config.output_dir, "grid": grid_path, "nsd_ids": nsd_ids}


def _first_caption(row: dict, column: str) -> str:
    for name in (column, "captions"):
        values = row.get(name) or []
        if values:
            return values[0]
    return ""


def _write_settings(config: ReconstructConfig) -> None:
    record = {"config": asdict(config), "versions": versions()}
    atomic_write_text(os.path.join(config.output_dir, "reconstruct.yaml"), yaml.safe_dump(record, sort_keys=False))


