"""SimNSD: a simulated Natural Scenes Dataset written in NSD's exact raw layout.

``simulate_nsd(root)`` writes, under ``root``, the files every NSD pipeline reads (see ``layout.py``):
the experiment design (``nsd_expdesign.mat``: masterordering, subjectim, sharedix, 1-based), the stimulus
table (``nsd_stim_info_merged.csv``, all columns), the stimuli (``nsd_stimuli.hdf5``/``imgBrick``), COCO
``captions_*``/``instances_*`` files, each subject's ``nsdgeneral.nii.gz`` and ``responses.tsv``, single-trial
betas per session (``betas_sessionNN.hdf5``, int16 = % signal change x 300, (750, Z, Y, X) as h5py reads
NSD; optionally ``.nii.gz``, (X, Y, Z, 750)), plus two files NSD does not have: ``fine_captions.jsonl``
(oracle fine captions, model ``simnsd/oracle``) and ``simnsd/`` (the ground truth).

Encoding model. Each image has a feature vector (objects, object x position/colour/size, colour x position,
background, scenery, a 6 x 6 RGB thumbnail; ``scenes.feature_blocks``), standardised over all images. A
subject's nsdgeneral voxel ``v`` responds ``offset[v] + x @ W[:, v]`` (% signal change); ``W`` is random,
block-weighted, with low-level blocks stronger in posterior voxels and semantic blocks in anterior ones. A
trial adds a per-session drift and Gaussian noise with variance ``signal variance / snr``. So the
noise-free response of any image is known (``noiseless_response``) and a decoder's ceiling is computable.

Grids. ``tiny`` uses a few hundred voxels per subject; ``full`` keeps the real nsdgeneral voxel counts and
trial counts (40 sessions x 750) but a compact volume around them (about 1.3 voxels of grid per ROI voxel,
e.g. 25 x 33 x 26 for subj01 instead of 81 x 104 x 83), so that a subject needs ~1.4 GB instead of ~40 GB.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from functools import lru_cache

import h5py
import numpy as np
import pandas as pd
import scipy.io
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from . import scenes as sc
from ..core import publish_folder, scratch_folder
from ..data.coco import COCO_CATEGORIES, COCO_CATEGORY_ID
from ..data.layout import BETAS_SCALE, NSDPaths, TRIALS_PER_SESSION, subject_id, subject_index

SIMNSD_VERSION = "1.0"
_REAL_GRIDS = {"subj01": (81, 104, 83), "subj02": (82, 106, 84), "subj03": (81, 106, 82), "subj04": (85, 99, 80),
               "subj05": (79, 97, 78), "subj06": (85, 113, 83), "subj07": (78, 95, 81), "subj08": (80, 103, 78)}
_FULL_VOXELS = {"subj01": 15724, "subj02": 14278, "subj05": 13039, "subj07": 12682}
_TINY_VOXELS = {"subj01": 314, "subj02": 286, "subj05": 261, "subj07": 254}
_BLOCK_GAINS = {"object": 1.0, "object_position": 0.6, "object_colour": 0.6, "object_size": 0.4,
                "colour_position": 0.5, "background": 0.7, "scenery": 0.3, "pixels": 0.8}
_LOW_LEVEL_BLOCKS = ("pixels", "colour_position")


@dataclass
class SimNSDConfig:
    """Everything that decides a SimNSD; saved as ``simnsd/config.json``."""

    scale: str = "tiny"
    seed: int = 0
    subjects: tuple[str, ...] = ("subj01", "subj02", "subj05", "subj07")
    voxels: dict[str, int] = field(default_factory=lambda: dict(_TINY_VOXELS))
    grid_ratio: float = 3.0  # grid voxels per nsdgeneral voxel (the rest is brain outside the ROI, or outside)
    sessions: int = 3
    shared_images: int = 100
    repetitions: int = 3
    image_size: int = 64
    snr: float = 0.1  # single-trial signal variance / noise variance, per voxel (see README: ridge decodes
    # objects at AUC ~0.99 but object-colour and colour-position bindings only at ~0.92 and ~0.75 on tiny)
    signal_std: float = 1.0  # typical std of a voxel's noise-free response across images, % signal change
    voxel_offset_std: float = 1.0
    session_drift: float = 0.3  # std of a per-session, per-voxel offset, as a fraction of the noise std
    block_gains: dict[str, float] = field(default_factory=lambda: dict(_BLOCK_GAINS))
    betas_formats: tuple[str, ...] = ("hdf5",)
    coco_val_fraction: float = 0.1
    write_responses: bool = True

    @property
    def images_per_subject(self) -> int:
        return self.sessions * TRIALS_PER_SESSION // self.repetitions

    def validate(self):
        if self.sessions * TRIALS_PER_SESSION % self.repetitions:
            raise ValueError(f"sessions x 750 = {self.sessions * TRIALS_PER_SESSION} trials is not a multiple of "
                             f"repetitions={self.repetitions}")
        if not 0 < self.shared_images < self.images_per_subject:
            raise ValueError(f"shared_images must be in 1..{self.images_per_subject - 1} "
                             f"({self.images_per_subject} images per subject), got {self.shared_images}")
        missing = [s for s in self.subjects if s not in self.voxels]
        if missing:
            raise ValueError(f"no voxel count for {missing}: give voxels={{'subj03': 300, ...}}")
        bad = [f for f in self.betas_formats if f not in ("hdf5", "nii.gz")]
        if bad or not self.betas_formats:
            raise ValueError(f"betas_formats must be a non-empty subset of ('hdf5', 'nii.gz'), got {self.betas_formats}")
        if self.snr <= 0:
            raise ValueError(f"snr must be > 0, got {self.snr}")


SCALES = {
    "tiny": {},
    "full": dict(voxels=dict(_FULL_VOXELS), grid_ratio=1.3, sessions=40, shared_images=1000, image_size=64),
}


def make_config(scale: str = "tiny", seed: int = 0, **overrides) -> SimNSDConfig:
    if scale not in SCALES:
        raise ValueError(f"unknown SimNSD scale {scale!r}; choose one of {list(SCALES)}")
    names = {f.name for f in dataclasses.fields(SimNSDConfig)} - {"scale", "seed"}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown SimNSD option(s) {sorted(unknown)}; options are {sorted(names)}")
    values = {**SCALES[scale], **overrides}
    if "subjects" in values:
        values["subjects"] = tuple(subject_id(s) for s in values["subjects"])
    if "voxels" in values:
        values["voxels"] = {subject_id(k): int(v) for k, v in values["voxels"].items()}
    if "betas_formats" in values:
        fmts = values["betas_formats"]
        values["betas_formats"] = (fmts,) if isinstance(fmts, str) else tuple(fmts)
    cfg = SimNSDConfig(scale=scale, seed=seed, **values)
    cfg.validate()
    return cfg


# --- design ------------------------------------------------------------------------------------------------

@dataclass
class _Design:
    n_stimuli: int
    sharedix: np.ndarray  # (n_shared,) 1-based 73k ids, sorted
    subjectim: np.ndarray  # (8, n_images) 1-based 73k ids; 0 for subjects SimNSD does not simulate
    masterordering: np.ndarray  # (trials,) 1-based indices into a subject's images


def _make_design(cfg: SimNSDConfig, rng: np.random.Generator) -> _Design:
    n_img, n_shared = cfg.images_per_subject, cfg.shared_images
    n_unique = n_img - n_shared
    n_stimuli = n_shared + len(cfg.subjects) * n_unique
    ids = rng.permutation(n_stimuli)  # 0-based 73k ids; shared ones scattered over the id space
    shared = np.sort(ids[:n_shared])
    subjectim = np.zeros((8, n_img), dtype=np.int64)
    for k, subj in enumerate(cfg.subjects):
        own = np.sort(ids[n_shared + k * n_unique: n_shared + (k + 1) * n_unique])
        subjectim[subject_index(subj) - 1] = np.concatenate([shared, own]) + 1
    masterordering = rng.permutation(np.repeat(np.arange(1, n_img + 1), cfg.repetitions))
    return _Design(n_stimuli, shared + 1, subjectim, masterordering)


def _grid_and_mask(cfg: SimNSDConfig, subject: str, rng: np.random.Generator) -> np.ndarray:
    """nsdgeneral labels on a compact grid, (X, Y, Z) int16: 1 = ROI, 0 = brain outside the ROI, -1 = outside."""
    n_roi = cfg.voxels[subject]
    real = np.array(_REAL_GRIDS[subject], dtype=float)
    f = (cfg.grid_ratio * n_roi / real.prod()) ** (1 / 3)
    shape = tuple(int(v) for v in np.maximum(np.ceil(real * f), 3))
    idx = np.indices(shape).reshape(3, -1).T.astype(float)
    centre = (np.array(shape) - 1) / 2
    dist = np.sqrt((((idx - centre) / (np.array(shape) / 2)) ** 2).sum(1)) + rng.uniform(0, 0.15, len(idx))
    order = np.argsort(dist, kind="stable")
    labels = np.full(len(idx), -1, dtype=np.int16)
    n_brain = min(len(idx), n_roi + max(1, int(0.15 * n_roi)))
    labels[order[:n_brain]] = 0
    labels[order[:n_roi]] = 1
    return labels.reshape(shape)


# --- encoding model ------------------------------------------------------------------------------------------

def _encoding_model(cfg: SimNSDConfig, features: np.ndarray, coords: np.ndarray, rng: np.random.Generator):
    """W (F, V), offset (V,), noise_std (V,), drift (sessions, V) for one subject; voxel order = coords order."""
    n_vox = len(coords)
    y = coords[:, 1].astype(float)
    anterior = (y - y.min()) / max(1.0, y.max() - y.min())  # 0 = posterior (low level) ... 1 = anterior
    blocks = sc.feature_blocks()
    parts = []
    for name, names in blocks:
        mod = (1.4 - anterior) if name in _LOW_LEVEL_BLOCKS else (0.6 + anterior)
        gain = cfg.block_gains[name] / math.sqrt(len(names))
        parts.append(rng.standard_normal((len(names), n_vox)) * gain * mod[None, :])
    weights = np.concatenate(parts).astype(np.float32)
    total, total_sq = np.zeros(n_vox), np.zeros(n_vox)
    for start in range(0, len(features), 1000):  # in chunks: all images x voxels would be 0.6 GB at full scale
        signal = features[start:start + 1000] @ weights
        total += signal.sum(0, dtype=np.float64)
        total_sq += np.square(signal).sum(0, dtype=np.float64)
    mean = total / len(features)
    signal_sd = np.sqrt(np.maximum(total_sq / len(features) - mean**2, 0)) + 1e-6
    amplitude = cfg.signal_std * np.exp(rng.normal(0, 0.3, n_vox))
    weights *= (amplitude / signal_sd).astype(np.float32)[None, :]
    offset = rng.normal(0, cfg.voxel_offset_std, n_vox).astype(np.float32)
    noise_std = (amplitude / math.sqrt(cfg.snr)).astype(np.float32)
    drift = (rng.standard_normal((cfg.sessions, n_vox)) * cfg.session_drift * noise_std).astype(np.float32)
    return weights, offset, noise_std, drift


# --- writers -------------------------------------------------------------------------------------------------

def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def _write_coco(paths: NSDPaths, cfg, coco_ids, coco_split, scenes_, captions) -> None:
    categories = [{"id": cid, "name": name, "supercategory": sup} for cid, name, sup in COCO_CATEGORIES]
    size = cfg.image_size
    for split in ("train2017", "val2017"):
        rows = np.flatnonzero(coco_split == split)
        images = [{"id": int(coco_ids[i]), "width": size, "height": size, "file_name": f"{int(coco_ids[i]):012d}.jpg"}
                  for i in rows]
        caps, inst = [], []
        for i in rows:
            for text in captions[i]:
                caps.append({"image_id": int(coco_ids[i]), "id": len(caps) + 1, "caption": text})
            for obj in scenes_[i].objects:
                x, y, w, h = obj.bbox
                inst.append({"id": len(inst) + 1, "image_id": int(coco_ids[i]), "category_id": COCO_CATEGORY_ID[obj.category],
                             "bbox": [x, y, w, h], "area": round(w * h, 2), "iscrowd": 0,
                             "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        info = {"description": f"SimNSD {SIMNSD_VERSION} (simulated COCO-style annotations)", "version": SIMNSD_VERSION}
        _write_json(paths.captions(split), {"info": info, "licenses": [], "images": images, "annotations": caps})
        _write_json(paths.instances(split), {"info": info, "licenses": [], "images": images, "annotations": inst,
                                             "categories": categories})


def _write_stim_info(paths: NSDPaths, cfg, design: _Design, coco_ids, coco_split) -> None:
    n = design.n_stimuli
    table = {"cocoId": coco_ids, "cocoSplit": coco_split, "cropBox": ["(0, 0, 0, 0)"] * n, "loss": np.zeros(n),
             "nsdId": np.arange(n), "flagged": np.zeros(n, bool), "BOLD5000": np.zeros(n, bool)}
    shared = np.zeros(n, bool)
    shared[design.sharedix - 1] = True
    table["shared1000"] = shared
    reps = {}
    for s in range(1, 9):
        seen = np.zeros(n, dtype=np.int64)
        rep_cols = np.zeros((n, 3), dtype=np.int64)
        row = design.subjectim[s - 1]
        if row.any():
            seen[row - 1] = 1
            trial_ids = row[design.masterordering - 1] - 1
            count = np.zeros(n, dtype=np.int64)
            for t, i in enumerate(trial_ids):  # 1-based global trial number of repetition k
                if count[i] < 3:
                    rep_cols[i, count[i]] = t + 1
                count[i] += 1
        table[f"subject{s}"] = seen
        for k in range(3):
            reps[f"subject{s}_rep{k}"] = rep_cols[:, k]
    frame = pd.DataFrame({**table, **reps})
    frame.to_csv(paths.stim_info, index=True)


def _write_responses(paths: NSDPaths, cfg, design: _Design, subject: str, rng) -> None:
    s = subject_index(subject)
    trials = len(design.masterordering)
    ten_k = design.masterordering
    ids73 = design.subjectim[s - 1][ten_k - 1]
    session = np.arange(trials) // TRIALS_PER_SESSION + 1
    within = np.arange(trials) % TRIALS_PER_SESSION
    run_sizes = np.array([63 if r % 2 == 0 else 62 for r in range(12)])
    run_of = np.repeat(np.arange(1, 13), run_sizes)
    trial_of = np.concatenate([np.arange(1, n + 1) for n in run_sizes])
    last_seen, first_seen, session_seen = {}, {}, set()
    is_old, is_old_cur, mem_recent, mem_first = [], [], [], []
    for t, img in enumerate(ten_k):
        if within[t] == 0:
            session_seen = set()
        is_old.append(int(img in last_seen)); is_old_cur.append(int(img in session_seen))
        mem_recent.append(t - last_seen[img] if img in last_seen else np.nan)
        mem_first.append(t - first_seen[img] if img in first_seen else np.nan)
        first_seen.setdefault(img, t); last_seen[img] = t; session_seen.add(img)
    is_old = np.array(is_old)
    correct = (rng.random(trials) < 0.8).astype(int)
    button = np.where(correct == 1, np.where(is_old == 1, 1, 2), np.where(is_old == 1, 2, 1))
    frame = pd.DataFrame({
        "SUBJECT": s, "SESSION": session, "RUN": run_of[within], "TRIAL": trial_of[within], "73KID": ids73,
        "10KID": ten_k, "TIME": 737000 + session * 7 + within * 4.0 / 86400, "ISOLD": is_old, "ISCORRECT": correct,
        "RT": np.round(rng.lognormal(6.7, 0.25, trials), 1), "CHANGEMIND": 0, "MEMORYRECENT": mem_recent,
        "MEMORYFIRST": mem_first, "ISOLDCURRENT": is_old_cur,
        "ISCORRECTCURRENT": np.where(np.array(is_old_cur) == np.array(is_old), correct, 1 - correct),
        "TOTAL1": 1, "TOTAL2": 0, "BUTTON": button, "MISSINGDATA": 0})
    os.makedirs(os.path.dirname(paths.responses(subject)), exist_ok=True)
    frame.to_csv(paths.responses(subject), sep="\t", index=False, na_rep="NaN")


def _write_nifti(path: str, data_xyz: np.ndarray) -> None:
    import nibabel as nib

    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = nib.Nifti1Image(data_xyz, np.diag([1.8, 1.8, 1.8, 1.0]))
    img.header.set_data_dtype(data_xyz.dtype)
    img.to_filename(path)


def _write_subject_betas(paths, cfg, design, subject, labels, features, seed, progress) -> dict:
    rng = np.random.default_rng([seed, subject_index(subject), 2])
    coords = np.argwhere(labels == 1)  # C order of the (X, Y, Z) volume = the builder's voxel order
    other = np.argwhere(labels == 0)
    weights, offset, noise_std, drift = _encoding_model(cfg, features, coords, rng)
    row = design.subjectim[subject_index(subject) - 1]
    trial_ids = row[design.masterordering - 1] - 1  # 0-based 73k id of every trial
    x, y, z = labels.shape
    os.makedirs(paths.betas_dir(subject), exist_ok=True)
    for session in tqdm(range(cfg.sessions), desc=f"SimNSD {subject} betas", disable=not progress, leave=False):
        ids = trial_ids[session * TRIALS_PER_SESSION:(session + 1) * TRIALS_PER_SESSION]
        pct = features[ids] @ weights + offset + drift[session]
        pct += rng.standard_normal(pct.shape, dtype=np.float32) * noise_std
        vol = np.zeros((TRIALS_PER_SESSION, z, y, x), dtype=np.int16)  # h5py's view of NSD's betas
        vol[:, coords[:, 2], coords[:, 1], coords[:, 0]] = np.clip(np.rint(pct * BETAS_SCALE), -32768, 32767)
        rest = rng.normal(0, 2.0, (TRIALS_PER_SESSION, len(other))) * BETAS_SCALE
        vol[:, other[:, 2], other[:, 1], other[:, 0]] = np.clip(np.rint(rest), -32768, 32767)
        if "hdf5" in cfg.betas_formats:
            with h5py.File(paths.betas(subject, session + 1, "hdf5"), "w") as f:
                # NSD's MATLAB chunks [1 1 1 750] read back in h5py's order as (750, 1, 1, 1)
                f.create_dataset("betas", data=vol, chunks=(TRIALS_PER_SESSION, 1, 1, 1))
        if "nii.gz" in cfg.betas_formats:
            _write_nifti(paths.betas(subject, session + 1, "nii.gz"), vol.transpose(3, 2, 1, 0))
    return {"weights": weights, "offset": offset, "noise_std": noise_std, "session_drift": drift,
            "voxel_xyz": coords.astype(np.int32)}


def simulate_nsd(root: str, scale: str = "tiny", seed: int = 0, overwrite: bool = False, progress: bool = False,
                 **overrides) -> SimNSDConfig:
    """Write a SimNSD under ``root`` in NSD's raw layout; returns its config.

    Args:
        root: output folder (written in a scratch sibling folder and swapped in whole when complete).
        scale: ``"tiny"`` (default: 4 subjects, a few hundred voxels, 3 sessions, 100 shared + 650 own images
            per subject, 64 x 64 images) or ``"full"`` (real voxel counts, 40 sessions, 1000 shared + 9000 own
            images per subject, on a compact grid).
        seed: everything (design, scenes, encoding models, noise) follows from it.
        overwrite: replace an existing ``root``; otherwise an existing non-empty ``root`` raises.
        progress: show progress bars.
        **overrides: any field of :class:`SimNSDConfig` (e.g. ``subjects=["subj01"]``, ``snr=1.0``,
            ``betas_formats=("hdf5", "nii.gz")``, ``sessions=6``).
    """
    cfg = make_config(scale, seed, **overrides)
    root = os.path.abspath(os.path.expanduser(str(root)))
    if os.path.isdir(root) and os.listdir(root) and not overwrite:
        raise FileExistsError(f"{root} exists and is not empty; pass overwrite=True to replace it")
    scratch = scratch_folder(root)
    try:
        _write_simnsd(NSDPaths(scratch), cfg, seed, progress)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    publish_folder(scratch, root)
    return cfg


def _write_simnsd(paths: NSDPaths, cfg: SimNSDConfig, seed: int, progress: bool) -> None:
    """Every file of a SimNSD, under ``paths`` (a scratch folder that :func:`simulate_nsd` publishes whole)."""
    rng = np.random.default_rng([seed, 0])
    design = _make_design(cfg, rng)

    # Scenes, images, captions, features of every stimulus.
    scene_rng = np.random.default_rng([seed, 1])
    scenes_ = [sc.sample_scene(scene_rng, cfg.image_size) for _ in range(design.n_stimuli)]
    os.makedirs(os.path.dirname(paths.stimuli), exist_ok=True)
    raw_features = np.zeros((design.n_stimuli, sum(len(n) for _, n in sc.feature_blocks())), np.float32)
    with h5py.File(paths.stimuli, "w") as f:
        brick = f.create_dataset("imgBrick", (design.n_stimuli, cfg.image_size, cfg.image_size, 3), dtype=np.uint8,
                                 chunks=(1, cfg.image_size, cfg.image_size, 3))
        block = 512
        for start in tqdm(range(0, design.n_stimuli, block), desc="SimNSD images", disable=not progress, leave=False):
            imgs = np.stack([sc.draw_scene(scenes_[i], cfg.image_size)
                             for i in range(start, min(start + block, design.n_stimuli))])
            brick[start:start + len(imgs)] = imgs
            for j, img in enumerate(imgs):
                raw_features[start + j] = sc.scene_features(scenes_[start + j], img)
    mean, std = raw_features.mean(0), raw_features.std(0)
    features = (raw_features - mean) / np.where(std > 0, std, 1.0)
    caption_rng = np.random.default_rng([seed, 3])
    captions = [sc.coco_captions(s, caption_rng) for s in scenes_]
    fine = [sc.fine_caption(s) for s in scenes_]
    coco_ids = np.random.default_rng([seed, 4]).choice(np.arange(1, 600_000), design.n_stimuli, replace=False)
    coco_split = np.where(np.random.default_rng([seed, 5]).random(design.n_stimuli) < cfg.coco_val_fraction,
                          "val2017", "train2017")

    os.makedirs(os.path.dirname(paths.expdesign), exist_ok=True)
    scipy.io.savemat(paths.expdesign, {"masterordering": design.masterordering[None, :].astype(float),
                                       "subjectim": design.subjectim.astype(float),
                                       "sharedix": design.sharedix[None, :].astype(float)})
    _write_stim_info(paths, cfg, design, coco_ids, coco_split)
    _write_coco(paths, cfg, coco_ids, coco_split, scenes_, captions)
    settings_hash = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()[:16]
    with open(paths.fine_captions, "w", encoding="utf-8") as f:
        for i, text in enumerate(fine):
            f.write(json.dumps({"nsd_id": i, "caption": text, "model": "simnsd/oracle", "revision": SIMNSD_VERSION,
                                "settings_hash": settings_hash, "truncated": False}) + "\n")

    os.makedirs(paths.simnsd_dir, exist_ok=True)
    save_file({"features": features, "raw_mean": mean, "raw_std": std}, os.path.join(paths.simnsd_dir, "features.safetensors"))
    with open(os.path.join(paths.simnsd_dir, "scenes.jsonl"), "w", encoding="utf-8") as f:
        for i, s in enumerate(scenes_):
            f.write(json.dumps({"nsd_id": i, "coco_id": int(coco_ids[i]), **s.to_dict(), "fine_caption": fine[i]}) + "\n")

    for subject in cfg.subjects:
        mask_rng = np.random.default_rng([seed, subject_index(subject), 1])
        labels = _grid_and_mask(cfg, subject, mask_rng)
        _write_nifti(paths.nsdgeneral(subject), labels)
        truth = _write_subject_betas(paths, cfg, design, subject, labels, features, seed, progress)
        save_file(truth, os.path.join(paths.simnsd_dir, f"{subject}_encoding.safetensors"),
                  metadata={"subject": subject, "units": "percent signal change", "voxel_order": "C order of (X, Y, Z)"})
        if cfg.write_responses:
            _write_responses(paths, cfg, design, subject, np.random.default_rng([seed, subject_index(subject), 3]))

    meta = {"simnsd_version": SIMNSD_VERSION, **dataclasses.asdict(cfg), "images_per_subject": cfg.images_per_subject,
            "n_stimuli": design.n_stimuli, "feature_blocks": [[b, len(n)] for b, n in sc.feature_blocks()],
            "feature_names": [x for _, n in sc.feature_blocks() for x in n], "vocabulary": list(sc.VOCABULARY),
            "colours": list(sc.COLOURS), "sizes": list(sc.SIZES), "positions": list(sc.POSITIONS),
            "backgrounds": list(sc.BACKGROUNDS), "scenery": list(sc.SCENERY)}
    _write_json(os.path.join(paths.simnsd_dir, "config.json"), meta)


# --- ground truth --------------------------------------------------------------------------------------------

@lru_cache(maxsize=16)
def _load_truth(path: str, mtime: float) -> dict:
    return load_file(path)


def _truth(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: not a SimNSD root, or this subject was not simulated")
    return _load_truth(path, os.path.getmtime(path))


def load_simnsd_config(root: str) -> dict:
    path = os.path.join(NSDPaths(root).simnsd_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {root} is not a SimNSD root")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def scene_features_of(root: str, nsd_ids) -> np.ndarray:
    """Standardised encoding-model features (N, F) of the given 0-based 73k ids."""
    feats = _truth(os.path.join(NSDPaths(root).simnsd_dir, "features.safetensors"))["features"]
    return feats[np.asarray(nsd_ids, dtype=np.int64)]


def noiseless_response(root: str, subject: str, nsd_ids) -> np.ndarray:
    """Noise-free betas (N, V) float32 of ``subject`` for the given 0-based 73k ids.

    Units are % signal change (what the builder gives before z-scoring); voxel order is the builder's (C order
    of the (X, Y, Z) nsdgeneral volume). Session drift and trial noise are not included.
    """
    truth = _truth(os.path.join(NSDPaths(root).simnsd_dir, f"{subject_id(subject)}_encoding.safetensors"))
    return scene_features_of(root, nsd_ids) @ truth["weights"] + truth["offset"]


def load_scenes(root: str) -> list[dict]:
    """SimNSD's scene descriptions, one dict per 73k id (background, objects with attributes, scenery)."""
    with open(os.path.join(NSDPaths(root).simnsd_dir, "scenes.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]
