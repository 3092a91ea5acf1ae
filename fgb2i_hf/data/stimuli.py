"""NSD stimulus images by 73k id, read from ``nsd_stimuli.hdf5`` (``imgBrick``) on demand.

Rows of the NSD dataset carry only ``nsd_id``; images stay in the one ``imgBrick`` file instead of being
copied once per trial (30,000 copies of 425 x 425 x 3 per subject would be 16 GB).
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from .layout import NSDDataError, NSDPaths, require_file


class NSDStimuli:
    """``stim[nsd_id] -> uint8 (H, W, 3)``; ``stim.get(ids) -> uint8 (N, H, W, 3)``.

    Args:
        path_or_root: an NSD root (real or SimNSD) or the path of ``nsd_stimuli.hdf5`` itself.

    The file is opened lazily and reopened after pickling, so the object can be sent to DataLoader workers.
    """

    def __init__(self, path_or_root: str):
        path = str(path_or_root)
        if os.path.isdir(path):
            path = NSDPaths(path).stimuli
        self.path = require_file(path, "nsddata_stimuli", "the NSD stimuli (imgBrick)")
        self._file = None
        brick = self._brick()
        if brick.ndim != 4 or brick.shape[-1] != 3 or brick.dtype != np.uint8:
            raise NSDDataError(f"{self.path}: imgBrick has shape {brick.shape} and dtype {brick.dtype}; "
                               "expected uint8 (N, H, W, 3)")
        self.shape = tuple(brick.shape)

    def _brick(self):
        if self._file is None:
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as e:
                raise NSDDataError(f"{self.path}: truncated or corrupt HDF5 file ({e})") from None
            if "imgBrick" not in self._file:
                raise NSDDataError(f"{self.path}: no 'imgBrick' dataset (found {list(self._file.keys())})")
        return self._file["imgBrick"]

    def __len__(self) -> int:
        return self.shape[0]

    def _check(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            bad = ids[(ids < 0) | (ids >= len(self))]
            raise IndexError(f"nsd_id {bad[:5].tolist()} out of range 0..{len(self) - 1} ({self.path})")

    def __getitem__(self, nsd_id: int) -> np.ndarray:
        if not isinstance(nsd_id, (int, np.integer)):
            raise TypeError(f"index with an int nsd_id (use .get(ids) for several), got {type(nsd_id).__name__}")
        self._check(np.array([nsd_id]))
        return self._brick()[int(nsd_id)]

    def get(self, nsd_ids) -> np.ndarray:
        """Images of the given ids in the given order (repeats allowed), uint8 (N, H, W, 3)."""
        ids = np.asarray(nsd_ids, dtype=np.int64).reshape(-1)
        self._check(ids)
        if ids.size == 0:
            return np.zeros((0, *self.shape[1:]), dtype=np.uint8)
        unique, inverse = np.unique(ids, return_inverse=True)  # h5py wants increasing, distinct indices
        return self._brick()[unique][inverse]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        return {"path": self.path, "shape": self.shape}

    def __setstate__(self, state):
        self.path, self.shape, self._file = state["path"], state["shape"], None

    def __repr__(self) -> str:
        return f"NSDStimuli({self.path!r}, images={self.shape[0]}, size={self.shape[1]}x{self.shape[2]})"
