"""NSD's experiment design: which image each trial showed, which images are shared, how rows are formed.

``nsd_expdesign.mat`` (every index 1-based): ``masterordering`` (1 x trials) indexes a subject's image list,
``subjectim`` (8 x images) maps that list to 73k ids, ``sharedix`` (1 x shared) lists the 73k ids every subject
saw. The 0-based 73k id of trial ``t`` is ``subjectim[s-1, masterordering[t]-1] - 1``; the test set is the
shared images, found through ``sharedix`` (never through a constant 1000, so scaled-down layouts work).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.io

from .layout import TRIALS_PER_SESSION, NSDDataError, NSDPaths, require_file, subject_id, subject_index

STIM_INFO_COLUMNS = ("nsdId", "cocoId", "cocoSplit")


@dataclass
class ExpDesign:
    masterordering: np.ndarray  # (trials,) int64, 1-based into a subject's image list
    subjectim: np.ndarray  # (8, images) int64, 1-based 73k ids
    sharedix: np.ndarray  # (shared,) int64, 1-based 73k ids
    path: str = ""


def read_expdesign(paths: NSDPaths) -> ExpDesign:
    path = require_file(paths.expdesign, "nsddata", "the NSD experiment design")
    try:
        mat = scipy.io.loadmat(path, variable_names=["masterordering", "subjectim", "sharedix"])
    except Exception as e:  # scipy raises several types for truncated or foreign files
        raise NSDDataError(f"{path}: cannot be read as a MATLAB file ({type(e).__name__}: {e}); "
                           "re-download nsddata/experiments/nsd/nsd_expdesign.mat") from None
    missing = [k for k in ("masterordering", "subjectim", "sharedix") if k not in mat]
    if missing:
        raise NSDDataError(f"{path}: missing variable(s) {missing}; expected masterordering, subjectim, sharedix")
    mo = np.asarray(mat["masterordering"]).astype(np.int64).ravel()
    subjectim = np.asarray(mat["subjectim"]).astype(np.int64)
    sharedix = np.asarray(mat["sharedix"]).astype(np.int64).ravel()
    if subjectim.ndim != 2 or subjectim.shape[0] != 8:
        raise NSDDataError(f"{path}: subjectim has shape {subjectim.shape}; expected (8, images per subject)")
    if mo.min() < 1 or mo.max() > subjectim.shape[1]:
        raise NSDDataError(f"{path}: masterordering values must lie in 1..{subjectim.shape[1]} (1-based indices "
                           f"into subjectim's columns), found {mo.min()}..{mo.max()}")
    if sharedix.size == 0 or sharedix.min() < 1:
        raise NSDDataError(f"{path}: sharedix must hold 1-based 73k ids, found min {sharedix.min(initial=0)}")
    return ExpDesign(mo, subjectim, sharedix, path)


@dataclass
class TrialTable:
    """The trials of one subject's first ``sessions`` sessions."""

    subject: str
    sessions: int
    nsd_ids: np.ndarray  # (trials,) 0-based 73k id shown on each trial
    is_test: np.ndarray  # (trials,) bool: the image is a shared one (sharedix)

    def rows(self, split: str, average: bool) -> list[tuple[int, np.ndarray]]:
        """``[(nsd_id, trial_indices), ...]`` of a split.

        Averaged rows (always for test, optionally for train) are ordered by each image's first trial (the order
        of Brain-Diffuser's prepare_nsddata.py); single-trial rows are in trial order.
        """
        mask = self.is_test if split == "test" else ~self.is_test
        trials = np.flatnonzero(mask)
        if not average:
            return [(int(self.nsd_ids[t]), np.array([t])) for t in trials]
        groups: dict[int, list[int]] = {}
        for t in trials:
            groups.setdefault(int(self.nsd_ids[t]), []).append(int(t))
        return [(nsd_id, np.array(ts)) for nsd_id, ts in groups.items()]


def trial_table(design: ExpDesign, subject: str, sessions: int) -> TrialTable:
    subject = subject_id(subject)
    row = design.subjectim[subject_index(subject) - 1]
    if not row.any():
        raise NSDDataError(f"{design.path}: subjectim has no images for {subject} (its row is all zeros)")
    n_trials = sessions * TRIALS_PER_SESSION
    if n_trials > len(design.masterordering):
        raise NSDDataError(f"{sessions} sessions need {n_trials} trials, but masterordering in {design.path} has "
                           f"{len(design.masterordering)} ({len(design.masterordering) // TRIALS_PER_SESSION} sessions)")
    outside = np.setdiff1d(design.sharedix, row)
    if outside.size:  # they could never appear in a trial, so the test split would silently lose them
        raise NSDDataError(f"{design.path}: {outside.size} sharedix id(s) are not among {subject}'s images in "
                           f"subjectim (first: {outside[:5].tolist()}, 1-based 73k ids); sharedix must list images "
                           "that every subject saw")
    ids = row[design.masterordering[:n_trials] - 1] - 1
    if ids.min() < 0:
        raise NSDDataError(f"{design.path}: subjectim row of {subject} has zero entries used by its trials")
    return TrialTable(subject, sessions, ids, np.isin(ids, design.sharedix - 1))


def read_stim_info(paths: NSDPaths, nsd_ids) -> dict[int, tuple[int, str]]:
    """``{nsd_id: (coco_id, coco_split)}`` for the given ids, from ``nsd_stim_info_merged.csv``."""
    path = require_file(paths.stim_info, "nsddata", "the NSD stimulus table")
    try:
        header = pd.read_csv(path, nrows=0).columns
    except Exception as e:
        raise NSDDataError(f"{path}: cannot be read as CSV ({type(e).__name__}: {e})") from None
    missing = [c for c in STIM_INFO_COLUMNS if c not in header]
    if missing:
        raise NSDDataError(f"{path}: missing column(s) {missing}; NSD's nsd_stim_info_merged.csv has "
                           f"{', '.join(STIM_INFO_COLUMNS)} (found {list(header)[:12]}...)")
    table = pd.read_csv(path, usecols=list(STIM_INFO_COLUMNS))
    table["data_row"] = np.arange(1, len(table) + 1)  # 1-based, after the header line
    repeated = table["nsdId"].duplicated(keep=False)
    if repeated.any():
        first = table.loc[repeated, "nsdId"].iloc[0]
        rows = table.loc[table["nsdId"] == first, "data_row"].tolist()
        raise NSDDataError(f"{path}: nsdId {first} appears on {len(rows)} rows (data rows "
                           f"{', '.join(map(str, rows[:5]))}); {int(table.loc[repeated, 'nsdId'].nunique())} nsdId(s) "
                           "repeat. Each image needs exactly one row, or a row could take another image's COCO id")
    table = table.set_index("nsdId")
    wanted = np.unique(np.asarray(list(nsd_ids), dtype=np.int64))
    absent = wanted[~np.isin(wanted, table.index.to_numpy())]
    if absent.size:
        raise NSDDataError(f"{path}: no row for nsdId {absent[:5].tolist()} ({absent.size} of the subject's images)")
    sub = table.loc[wanted]
    bad = sorted(set(sub["cocoSplit"]) - {"train2017", "val2017"})
    if bad:
        raise NSDDataError(f"{path}: cocoSplit must be train2017 or val2017, found {bad}")
    coco = pd.to_numeric(sub["cocoId"], errors="coerce").to_numpy(dtype=np.float64)
    invalid = ~np.isfinite(coco) | (coco != np.round(coco))
    if invalid.any():
        k = int(np.flatnonzero(invalid)[0])
        raise NSDDataError(f"{path}: cocoId of nsdId {int(wanted[k])} (data row {int(sub['data_row'].iloc[k])}) is "
                           f"not an integer: {sub['cocoId'].iloc[k]} ({int(invalid.sum())} such row(s) among the "
                           "subject's images)")
    return {int(i): (int(c), str(s)) for i, c, s in zip(wanted, sub["cocoId"], sub["cocoSplit"])}
