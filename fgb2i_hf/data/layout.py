"""Where NSD keeps each file, which download it comes from, and the subject conventions.

Paths follow the public NSD bucket (``natural-scenes-dataset``) as laid out by every pipeline that reads it
(nsd_access, Brain-Diffuser's ``download_nsddata.py``); SimNSD writes exactly these paths.
"""

from __future__ import annotations

import os
import re

# Per-subject facts of the real NSD (NSD technical notes; MindEyeV2 src/models.py for the voxel counts).
SUBJECTS = tuple(f"subj{i:02d}" for i in range(1, 9))
NSDGENERAL_VOXELS = {"subj01": 15724, "subj02": 14278, "subj03": 15226, "subj04": 13153,
                     "subj05": 13039, "subj06": 17907, "subj07": 12682, "subj08": 14386}
SESSIONS_COMPLETED = {"subj01": 40, "subj02": 40, "subj03": 32, "subj04": 30,
                      "subj05": 40, "subj06": 32, "subj07": 40, "subj08": 30}
TRIALS_PER_SESSION = 750
BETAS_SCALE = 300.0  # betas are stored as int16 = percent signal change x 300
DEFAULT_BETAS_TYPE = "betas_fithrf_GLMdenoise_RR"

# Which of the NSD downloads holds a file, so that "missing" errors say what to fetch.
DOWNLOADS = {
    "nsddata": "the 'nsddata' download (experiment design, stimulus info, ROIs)",
    "nsddata_stimuli": "the 'nsddata_stimuli' download (nsd_stimuli.hdf5 and its COCO annotations folder)",
    "nsddata_betas": "the 'nsddata_betas' download (single-trial betas, func1pt8mm, {betas_type})",
    "annotations": "the COCO 2017 annotations (annotations_trainval2017.zip), placed as NSD's annotations folder",
    "brain-diffuser": "Brain-Diffuser's data/prepare_nsddata.py output (processed_data/subjXX/*.npy)",
}


class NSDDataError(ValueError):
    """An NSD file exists but does not hold what NSD's layout promises (shape, columns, corrupt content)."""


class NSDMissingFileError(FileNotFoundError):
    """A file of the NSD layout is missing; the message names the download it belongs to."""


def subject_id(subject: str | int) -> str:
    """Normalise ``1``, ``"1"``, ``"subj1"`` or ``"subj01"`` to ``"subj01"``; anything else raises."""
    text = str(subject).strip().lower()
    m = re.fullmatch(r"(?:subj)?0*([1-8])", text)
    if not m:
        raise ValueError(f"unknown subject {subject!r}: NSD has subjects {', '.join(SUBJECTS)}")
    return f"subj{int(m.group(1)):02d}"


def subject_list(subjects, field: str = "subjects") -> list[str]:
    """A config's subjects as normalised names: one name (``subjects: subj01`` in YAML) is a list of one, never a
    list of its characters; unknown, missing or repeated names raise naming ``field``."""
    if isinstance(subjects, (str, int)):
        subjects = [subjects]
    if not subjects:
        raise ValueError(f"{field} is empty: name at least one subject, e.g. ['subj01']")
    try:
        names = [subject_id(s) for s in subjects]
    except ValueError as e:
        raise ValueError(f"{field}: {e}") from None
    if len(set(names)) != len(names):
        raise ValueError(f"{field} listed twice: {list(subjects)}")
    return names


def subject_index(subject: str | int) -> int:
    """1-based subject number (``"subj05"`` -> 5)."""
    return int(subject_id(subject)[4:])


class NSDPaths:
    """Paths of one NSD root (real NSD or SimNSD)."""

    def __init__(self, root: str, betas_type: str = DEFAULT_BETAS_TYPE, annotations_dir: str | None = None):
        self.root = os.path.abspath(os.path.expanduser(str(root)))
        self.betas_type = betas_type
        self._annotations_dir = annotations_dir

    # nsddata
    @property
    def expdesign(self) -> str:
        return os.path.join(self.root, "nsddata", "experiments", "nsd", "nsd_expdesign.mat")

    @property
    def stim_info(self) -> str:
        return os.path.join(self.root, "nsddata", "experiments", "nsd", "nsd_stim_info_merged.csv")

    def nsdgeneral(self, subject: str) -> str:
        return os.path.join(self.root, "nsddata", "ppdata", subject_id(subject), "func1pt8mm", "roi", "nsdgeneral.nii.gz")

    def responses(self, subject: str) -> str:
        return os.path.join(self.root, "nsddata", "ppdata", subject_id(subject), "behav", "responses.tsv")

    # nsddata_stimuli
    @property
    def stimuli(self) -> str:
        return os.path.join(self.root, "nsddata_stimuli", "stimuli", "nsd", "nsd_stimuli.hdf5")

    @property
    def annotations_dir(self) -> str:
        if self._annotations_dir:
            return os.path.abspath(os.path.expanduser(self._annotations_dir))
        return os.path.join(self.root, "nsddata_stimuli", "stimuli", "nsd", "annotations")

    def captions(self, coco_split: str) -> str:
        return os.path.join(self.annotations_dir, f"captions_{coco_split}.json")

    def instances(self, coco_split: str) -> str:
        return os.path.join(self.annotations_dir, f"instances_{coco_split}.json")

    # nsddata_betas
    def betas_dir(self, subject: str) -> str:
        return os.path.join(self.root, "nsddata_betas", "ppdata", subject_id(subject), "func1pt8mm", self.betas_type)

    def betas(self, subject: str, session: int, fmt: str = "hdf5") -> str:
        if fmt not in ("hdf5", "nii.gz"):
            raise ValueError(f"betas format must be 'hdf5' or 'nii.gz', got {fmt!r}")
        return os.path.join(self.betas_dir(subject), f"betas_session{int(session):02d}.{fmt}")

    # Not NSD: the default place of the fine-captions JSONL (SimNSD writes its oracle captions there).
    @property
    def fine_captions(self) -> str:
        return os.path.join(self.root, "fine_captions.jsonl")

    # Not NSD: SimNSD's ground truth (scene features, encoding models).
    @property
    def simnsd_dir(self) -> str:
        return os.path.join(self.root, "simnsd")


def require_file(path: str, download: str, what: str, betas_type: str = DEFAULT_BETAS_TYPE) -> str:
    """Return ``path`` if it is a file, else raise :class:`NSDMissingFileError` naming the NSD download."""
    if not os.path.isfile(path):
        source = DOWNLOADS[download].format(betas_type=betas_type)
        raise NSDMissingFileError(f"missing {what}: {path} (part of {source})")
    return path


def brain_diffuser_files(processed_dir: str, subject: str) -> dict[str, str]:
    """Brain-Diffuser's processed files of one subject (``data/prepare_nsddata.py`` naming)."""
    n = subject_index(subject)
    folder = os.path.join(processed_dir, subject_id(subject))
    out = {}
    for split in ("train", "test"):
        out[f"{split}_fmri"] = os.path.join(folder, f"nsd_{split}_fmriavg_nsdgeneral_sub{n}.npy")
        out[f"{split}_stim"] = os.path.join(folder, f"nsd_{split}_stim_sub{n}.npy")
        out[f"{split}_cap"] = os.path.join(folder, f"nsd_{split}_cap_sub{n}.npy")
    return out
