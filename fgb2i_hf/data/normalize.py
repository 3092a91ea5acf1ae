"""Voxel z-scoring statistics, stored beside a built dataset so the same transform reaches new data.

``voxel_stats.safetensors`` in a subject's dataset folder holds the training statistics (mean, std with
ddof=1, in % signal change) and, for per-session z-scoring, each session's statistics over its training
trials. ``VoxelStats.normalize`` applies the training z-score to any betas in % signal change, e.g. a new
session, or SimNSD's ``noiseless_response``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from .layout import subject_id

STATS_FILENAME = "voxel_stats.safetensors"
ZSCORE_MODES = ("train", "session", "none")


@dataclass
class VoxelStats:
    subject: str
    zscore: str  # what the dataset's betas went through: "train", "session" or "none"
    mean: np.ndarray  # (V,) training mean, % signal change
    std: np.ndarray  # (V,) training std (ddof=1); zero-variance voxels get 1
    n_rows: int  # training rows the statistics come from
    session_mean: np.ndarray | None = None  # (sessions, V), for zscore="session"
    session_std: np.ndarray | None = None

    def normalize(self, betas_pct) -> np.ndarray:
        """Training z-score of betas in % signal change, (..., V) -> float32 (..., V).

        For a dataset built with ``zscore="session"`` there is no single transform: z-score new data by the
        statistics of its own session (as the build did with ``session_mean``/``session_std``).
        """
        if self.zscore == "session":
            raise ValueError(f"{self.subject}'s dataset was z-scored per session; z-score new data by its own "
                             "session's statistics (this dataset's are in session_mean / session_std)")
        x = np.asarray(betas_pct, dtype=np.float32)
        if x.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"betas have {x.shape[-1]} voxels but {self.subject}'s statistics have {self.mean.shape[0]}")
        return (x - self.mean) / self.std

    def denormalize(self, betas_z) -> np.ndarray:
        """Inverse of :meth:`normalize`: back to % signal change."""
        return np.asarray(betas_z, dtype=np.float32) * self.std + self.mean

    def save(self, path: str) -> None:
        tensors = {"mean": self.mean.astype(np.float32), "std": self.std.astype(np.float32)}
        if self.session_mean is not None:
            tensors["session_mean"] = self.session_mean.astype(np.float32)
            tensors["session_std"] = self.session_std.astype(np.float32)
        tmp = path + ".tmp"
        save_file(tensors, tmp, metadata={"subject": self.subject, "zscore": self.zscore, "ddof": "1",
                                          "n_rows": str(self.n_rows), "units": "percent signal change"})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "VoxelStats":
        with safe_open(path, "np") as f:
            meta = f.metadata() or {}
        t = load_file(path)
        return cls(meta.get("subject", ""), meta.get("zscore", "train"), t["mean"], t["std"], int(meta.get("n_rows", 0)),
                   t.get("session_mean"), t.get("session_std"))


def mean_std(total: np.ndarray, total_sq: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof=1) from float64 sums; zero or undefined std becomes 1."""
    mean = total / max(n, 1)
    var = (total_sq - n * mean**2) / max(n - 1, 1)
    std = np.sqrt(np.maximum(var, 0))
    std[~(std > 1e-8)] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def voxel_stats(dataset, subject: str) -> VoxelStats:
    """The statistics a built NSD dataset (a ``Dataset`` or ``DatasetDict`` from ``load_nsd``) was z-scored with."""
    subject = subject_id(subject)
    # imported here: datasets is a heavy import, needed only on this path
    import datasets

    datasets_ = list(dataset.values()) if isinstance(dataset, (datasets.DatasetDict, dict)) else [dataset]
    folders = []
    for ds in datasets_:
        for entry in ds.cache_files:
            folder = os.path.dirname(entry["filename"])
            if folder not in folders:
                folders.append(folder)
    for folder in folders:
        path = os.path.join(folder, STATS_FILENAME)
        if os.path.isfile(path):
            stats = VoxelStats.load(path)
            if stats.subject == subject:
                return stats
    raise FileNotFoundError(f"no {STATS_FILENAME} for {subject} next to this dataset's Arrow files ({folders}); "
                            "was it built by fgb2i_hf.data.NSD, and does it contain that subject?")
