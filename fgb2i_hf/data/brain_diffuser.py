"""Brain-Diffuser's processed layout (ozcelikfu/brain-diffuser, ``data/prepare_nsddata.py``).

``processed_data/subjXX/nsd_{train,test}_fmriavg_nsdgeneral_subX.npy`` hold one row per image: the mean of
its repetitions within the first 37 sessions, raw NSD units (int16 scale, not divided by 300), float64,
voxels in the C order of nsdgeneral's (X, Y, Z) volume. ``nsd_*_cap_subX.npy`` hold 5 captions per row.
The files carry no image ids: the row order is each image's first trial in ``masterordering`` (train and
test separately), so the ids are recovered from ``nsd_expdesign.mat``, and the number of sessions the
files were made from is inferred from the row counts.
"""

from __future__ import annotations

import os

import numpy as np

from .design import ExpDesign, TrialTable, trial_table
from .layout import NSDDataError, NSDMissingFileError, TRIALS_PER_SESSION, brain_diffuser_files


def _open_npy(path: str, what: str):
    if not os.path.isfile(path):
        raise NSDMissingFileError(f"missing {what}: {path} (part of Brain-Diffuser's data/prepare_nsddata.py output, "
                                  "processed_data/subjXX/)")
    try:
        return np.lib.format.open_memmap(path, mode="r")
    except ValueError as e:
        if "allow_pickle" in str(e) or "object" in str(e):
            raise NSDDataError(f"{path}: holds Python objects; refusing to unpickle a data file") from None
        raise NSDDataError(f"{path}: not a valid .npy file ({e})") from None
    except OSError as e:
        raise NSDDataError(f"{path}: truncated or unreadable .npy file ({e})") from None


def _read_captions(path: str, rows: int) -> list[list[str]]:
    caps = _open_npy(path, "Brain-Diffuser captions")
    if caps.dtype.kind not in "US" or caps.ndim != 2 or caps.shape[0] != rows:
        raise NSDDataError(f"{path}: expected a string array of shape ({rows}, 5), got {caps.dtype} {caps.shape}")
    out = []
    for row in np.asarray(caps):
        texts = [c.decode() if isinstance(c, bytes) else str(c) for c in row]
        out.append([t.strip() for t in texts if t.strip()])
    return out


class BrainDiffuserSource:
    """Per-image betas and captions of one subject from Brain-Diffuser's files, with recovered 73k ids."""

    def __init__(self, processed_dir: str, subject: str, design: ExpDesign, sessions: int | None, n_voxels: int | None):
        files = brain_diffuser_files(processed_dir, subject)
        self.fmri = {s: _open_npy(files[f"{s}_fmri"], f"Brain-Diffuser {s} betas") for s in ("train", "test")}
        for split, arr in self.fmri.items():
            if arr.ndim != 2:
                raise NSDDataError(f"{files[f'{split}_fmri']}: expected (images, voxels), got shape {arr.shape}")
            if n_voxels is not None and arr.shape[1] != n_voxels:
                raise NSDDataError(f"{files[f'{split}_fmri']}: {arr.shape[1]} voxels, but nsdgeneral of {subject} has "
                                   f"{n_voxels} voxels with label > 0")
        if self.fmri["train"].shape[1] != self.fmri["test"].shape[1]:
            raise NSDDataError(f"{processed_dir}: train and test betas of {subject} have different voxel counts")
        counts = {s: a.shape[0] for s, a in self.fmri.items()}
        self.table = self._match_sessions(design, subject, sessions, counts, processed_dir)
        self.sessions = self.table.sessions
        self.rows = {s: self.table.rows(s, average=True) for s in ("train", "test")}
        self.captions = {s: _read_captions(files[f"{s}_cap"], counts[s]) for s in ("train", "test")}
        self.positions = {s: np.arange(counts[s]) for s in ("train", "test")}  # rows of each split in the files
        self.stim_files = {s: files[f"{s}_stim"] for s in ("train", "test")}
        self.n_vox = self.fmri["train"].shape[1]

    @staticmethod
    def _match_sessions(design, subject, sessions, counts, processed_dir) -> TrialTable:
        def table_counts(n):
            table = trial_table(design, subject, n)
            return table, {"train": len(np.unique(table.nsd_ids[~table.is_test])),
                           "test": len(np.unique(table.nsd_ids[table.is_test]))}

        if sessions is not None:
            table, c = table_counts(sessions)
            if c != counts:
                raise NSDDataError(
                    f"{processed_dir}/{subject}: the files have {counts['train']} train / {counts['test']} test images, "
                    f"but the first {sessions} sessions of {design.path} give {c['train']} / {c['test']}; "
                    "Brain-Diffuser's prepare_nsddata.py uses 37 sessions (leave sessions=None to infer it)")
            return table
        max_sessions = len(design.masterordering) // TRIALS_PER_SESSION
        for n in range(max_sessions, 0, -1):
            table, c = table_counts(n)
            if c == counts:
                return table
        raise NSDDataError(f"{processed_dir}/{subject}: {counts['train']} train / {counts['test']} test images match "
                           f"no number of sessions (1..{max_sessions}) of {design.path}; were the files made from "
                           "another NSD release or subject?")

    def hold_out(self, is_held_out) -> None:
        """Move the training images for which ``is_held_out(nsd_id)`` to a ``validation`` split (rows of the train
        files)."""
        held = np.array([is_held_out(nsd_id) for nsd_id, _ in self.rows["train"]], dtype=bool)
        rows, captions, positions = self.rows["train"], self.captions["train"], self.positions["train"]
        for split, keep in (("validation", held), ("train", ~held)):
            self.rows[split] = [r for r, k in zip(rows, keep) if k]
            self.captions[split] = [c for c, k in zip(captions, keep) if k]
            self.positions[split] = positions[keep]

    def check_images(self, stimuli) -> None:
        """If the processed stimuli exist, check their first and last rows against imgBrick at the recovered ids."""
        for split, path in self.stim_files.items():  # before hold_out: the files' own train/test rows
            if not os.path.isfile(path) or not self.rows[split]:
                continue
            stim = _open_npy(path, "Brain-Diffuser stimuli")
            if stim.shape[0] != len(self.rows[split]) or tuple(stim.shape[1:]) != tuple(stimuli.shape[1:]):
                raise NSDDataError(f"{path}: shape {stim.shape} does not match {len(self.rows[split])} images of "
                                   f"size {stimuli.shape[1:]}")
            for i in (0, len(self.rows[split]) - 1):
                if not np.array_equal(np.asarray(stim[i]).astype(np.uint8), stimuli[self.rows[split][i][0]]):
                    raise NSDDataError(f"{path}: row {i} is not the image nsd_id={self.rows[split][i][0]} that "
                                       "nsd_expdesign.mat puts there; the files do not follow Brain-Diffuser's order")

    def row_block(self, split: str, start: int, stop: int, session_zscore: bool = False) -> np.ndarray:
        """Betas of rows start..stop in % signal change, float32 (n, V) (per-session z-scoring needs trials)."""
        array = self.fmri["test" if split == "test" else "train"]
        positions = self.positions[split][start:stop]
        if len(positions) and positions[-1] - positions[0] == len(positions) - 1:  # contiguous: one slice
            block = array[positions[0] : positions[-1] + 1]
        else:
            block = array[positions]
        return np.asarray(block, dtype=np.float32) / 300.0

    def close(self) -> None:
        self.fmri = {}
