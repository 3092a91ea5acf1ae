"""Single-trial betas of one subject from NSD's raw layout, streamed once into a scratch file.

Pass 1 reads each session (hdf5 or nii.gz), keeps the nsdgeneral voxels and appends them to a scratch file
in the stored dtype (int16 for NSD: 2 bytes x trials x voxels, 0.9 GB for a full subject), while gathering
per-session statistics of the training trials. Rows are then read back with ``os.pread``, so neither the
betas nor a memory map of them is ever resident: peak memory is one session. Stored values become % signal
change by the stored dtype's rule (``betas.units_divisor``: int16 / 300, float as is).
"""

from __future__ import annotations

import os

import numpy as np
from datasets.utils import tqdm as hf_tqdm

from .betas import read_session, units_divisor, voxel_order
from .design import TrialTable
from .layout import TRIALS_PER_SESSION, NSDDataError
from .normalize import mean_std


class RawBetasSource:
    def __init__(self, table: TrialTable, session_files: dict[int, str], labels: np.ndarray, scratch_path: str,
                 average_train: bool, zscore: str, held_out=None):
        self.table, self.zscore = table, zscore
        order = voxel_order(labels)
        self.n_vox = order.n
        self.rows = {"train": table.rows("train", average_train), "test": table.rows("test", True)}
        n_sess = table.sessions
        self.session_mean = np.zeros((n_sess, self.n_vox), np.float32)
        self.session_std = np.ones((n_sess, self.n_vox), np.float32)
        self.scratch_path, self.dtype, self._fd = scratch_path, None, None
        with open(scratch_path, "wb") as out:
            for s in hf_tqdm(range(n_sess), desc=f"Reading {table.subject} betas", unit=" sessions"):
                block = read_session(session_files[s + 1], order)
                if self.dtype is None:
                    self.dtype = block.dtype
                    self.divisor = units_divisor(self.dtype)
                elif block.dtype != self.dtype:
                    raise NSDDataError(f"{session_files[s + 1]}: betas are {block.dtype} but session 1 was {self.dtype}")
                out.write(np.ascontiguousarray(block).tobytes())
                if zscore == "session":  # the session's training trials: neither test nor held-out (validation)
                    trials = slice(s * TRIALS_PER_SESSION, (s + 1) * TRIALS_PER_SESSION)
                    train = ~table.is_test[trials]
                    if held_out is not None:
                        train &= ~np.array([held_out(int(i)) for i in table.nsd_ids[trials]], dtype=bool)
                    pct = block[train].astype(np.float64) / self.divisor
                    self.session_mean[s], self.session_std[s] = mean_std(pct.sum(0), (pct**2).sum(0), len(pct))
        self._row_bytes = self.n_vox * self.dtype.itemsize
        self._fd = os.open(scratch_path, os.O_RDONLY)

    def hold_out(self, is_held_out) -> None:
        """Move the training rows whose image ``is_held_out(nsd_id)`` to a ``validation`` split."""
        train = self.rows["train"]
        self.rows["validation"] = [r for r in train if is_held_out(r[0])]
        self.rows["train"] = [r for r in train if not is_held_out(r[0])]

    def read_trials(self, trials: np.ndarray, session_zscore: bool = True) -> np.ndarray:
        """Betas of sorted, distinct trial indices in % signal change, float32 (n, V); runs are read at once.
        With ``zscore="session"`` (and ``session_zscore``) each trial is z-scored by its session's statistics."""
        out = np.empty((len(trials), self.n_vox), np.float32)
        i = 0
        while i < len(trials):
            j = i + 1
            while j < len(trials) and trials[j] == trials[j - 1] + 1:
                j += 1
            nbytes = (j - i) * self._row_bytes
            buf = os.pread(self._fd, nbytes, int(trials[i]) * self._row_bytes)
            if len(buf) != nbytes:
                raise NSDDataError(f"{self.scratch_path}: scratch file ended early (disk full?)")
            out[i:j] = np.frombuffer(buf, self.dtype).reshape(j - i, self.n_vox)
            i = j
        out /= self.divisor
        if self.zscore == "session" and session_zscore:
            sess = trials // TRIALS_PER_SESSION
            out -= self.session_mean[sess]
            out /= self.session_std[sess]
        return out

    def row_block(self, split: str, start: int, stop: int, session_zscore: bool = True) -> np.ndarray:
        """Rows start..stop of a split, each the mean of its trials, float32 (n, V)."""
        rows = self.rows[split][start:stop]
        if all(len(t) == 1 for _, t in rows):  # single trials, already in increasing order
            return self.read_trials(np.array([t[0] for _, t in rows]), session_zscore)
        trials = np.unique(np.concatenate([t for _, t in rows]))
        values = self.read_trials(trials, session_zscore)
        out = np.empty((len(rows), self.n_vox), np.float32)
        for k, (_, ts) in enumerate(rows):
            out[k] = values[np.searchsorted(trials, ts)].mean(0)
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if os.path.exists(self.scratch_path):
            os.remove(self.scratch_path)
