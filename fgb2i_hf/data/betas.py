"""NSD single-trial betas, read session by session and masked by nsdgeneral.

Voxel order everywhere is the C order of the (X, Y, Z) volume as nibabel loads ``nsdgeneral.nii.gz``
(``volume[mask > 0]``), which is Brain-Diffuser's order. NSD's ``.nii.gz`` betas are (X, Y, Z, 750); its
``.hdf5`` betas read in h5py as (750, Z, Y, X), so they are mapped back to that order explicitly.
Values are returned as stored; ``units_divisor`` says what turns them into % signal change. NSD's convention is
that of its files: int16 betas hold % signal change x 300 (divided by 300), float betas hold % signal change
already (not divided). Non-finite values stop the build with the file, trial and voxel named.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib

import h5py
import numpy as np

from .layout import BETAS_SCALE, TRIALS_PER_SESSION, NSDDataError, NSDMissingFileError, NSDPaths, require_file

_SESSION_FILE = re.compile(r"betas_session(\d+)\.(hdf5|nii\.gz)$")
_SLAB_BYTES = 64 * 2**20  # read hdf5 betas in Z slabs of at most this size


def read_nsdgeneral(paths: NSDPaths, subject: str) -> np.ndarray:
    """The nsdgeneral label volume (X, Y, Z); voxels with label > 0 form the ROI."""
    # imported here: nibabel is a heavy import, needed only on this path
    import nibabel as nib

    path = require_file(paths.nsdgeneral(subject), "nsddata", f"the nsdgeneral ROI of {subject}")
    try:
        labels = np.asanyarray(nib.load(path).dataobj)
    except Exception as e:
        raise NSDDataError(f"{path}: cannot be read as NIfTI ({type(e).__name__}: {e})") from None
    if labels.ndim != 3:
        raise NSDDataError(f"{path}: expected a 3-D label volume (X, Y, Z), got shape {labels.shape}")
    if not (labels > 0).any():
        raise NSDDataError(f"{path}: no voxel has a label > 0, so the nsdgeneral ROI is empty")
    return labels


def available_sessions(paths: NSDPaths, subject: str, betas_format: str = "auto") -> dict[int, str]:
    """``{session: path}`` of the betas files on disk (hdf5 preferred over nii.gz under ``"auto"``)."""
    folder = paths.betas_dir(subject)
    if not os.path.isdir(folder):
        raise NSDMissingFileError(
            f"missing betas folder of {subject}: {folder} (part of the 'nsddata_betas' download, func1pt8mm, "
            f"{paths.betas_type})")
    found: dict[int, dict[str, str]] = {}
    for name in os.listdir(folder):
        m = _SESSION_FILE.match(name)
        if m:
            found.setdefault(int(m.group(1)), {})[m.group(2)] = os.path.join(folder, name)
    formats = ("hdf5", "nii.gz") if betas_format == "auto" else (betas_format,)
    out = {}
    for session, files in found.items():
        for fmt in formats:
            if fmt in files:
                out[session] = files[fmt]
                break
    if not out:
        raise NSDMissingFileError(f"no betas_sessionNN.{'hdf5 or .nii.gz' if betas_format == 'auto' else betas_format} "
                                  f"files in {folder} (part of the 'nsddata_betas' download)")
    return dict(sorted(out.items()))


def resolve_sessions(files: dict[int, str], sessions: int | None, folder: str) -> int:
    """Check that sessions 1..N are all on disk and return N (all contiguous sessions when ``sessions`` is None)."""
    contiguous = 0
    while contiguous + 1 in files:
        contiguous += 1
    if sessions is None:
        if contiguous == 0 or contiguous != len(files):
            raise NSDMissingFileError(
                f"{folder}: sessions on disk are {sorted(files)}, with a gap after session {contiguous}; "
                f"download the missing betas_session{contiguous + 1:02d} file or pass sessions=N (N <= {contiguous})")
        return contiguous
    if sessions < 1:
        raise ValueError(f"sessions must be >= 1, got {sessions}")
    if sessions > contiguous:
        missing = next(s for s in range(1, sessions + 1) if s not in files)
        raise NSDMissingFileError(
            f"asked for {sessions} sessions but {folder} has sessions {sorted(files)} "
            f"(betas_session{missing:02d} is missing; part of the 'nsddata_betas' download)")
    return sessions


class _VoxelOrder:
    """Maps ROI voxels to positions in the output vector (C order of the (X, Y, Z) volume)."""

    def __init__(self, labels: np.ndarray):
        self.roi = labels > 0
        self.n = int(self.roi.sum())
        self.index_xyz = np.full(labels.shape, -1, dtype=np.int64)
        self.index_xyz[self.roi] = np.arange(self.n)
        coords = np.argwhere(self.roi)  # C order of (X, Y, Z): the output order
        self.lo, self.hi = coords.min(0), coords.max(0) + 1  # bounding box (X, Y, Z)
        x, y, _ = labels.shape
        self.flat_zyx = (coords[:, 2] * y + coords[:, 1]) * x + coords[:, 0]  # index in a flattened (Z, Y, X) volume


def _read_hdf5_session(path: str, order: _VoxelOrder) -> np.ndarray:
    x, y, z = order.roi.shape
    expected = (TRIALS_PER_SESSION, z, y, x)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise NSDDataError(f"{path}: truncated or corrupt HDF5 file ({e}); re-download it from nsddata_betas") from None
    with f:
        if "betas" not in f:
            raise NSDDataError(f"{path}: no 'betas' dataset (found {list(f.keys())}); expected NSD's /betas "
                               f"of shape {expected}")
        dset = f["betas"]
        if tuple(dset.shape) != expected:
            raise NSDDataError(
                f"{path}: betas have shape {tuple(dset.shape)} but the nsdgeneral mask is {order.roi.shape} (X, Y, Z), "
                f"so NSD's hdf5 layout (750, Z, Y, X) should be {expected}; wrong subject, resolution or file?")
        (x0, y0, z0), (x1, y1, z1) = order.lo, order.hi
        index_zyx = order.index_xyz.transpose(2, 1, 0)
        plane_bytes = TRIALS_PER_SESSION * (y1 - y0) * (x1 - x0) * dset.dtype.itemsize
        step = max(1, _SLAB_BYTES // max(1, plane_bytes))
        parts, positions = [], []
        for za in range(z0, z1, step):
            zb = min(z1, za + step)
            try:
                slab = dset[:, za:zb, y0:y1, x0:x1]
            except OSError as e:
                raise NSDDataError(f"{path}: truncated or corrupt HDF5 data ({e}); re-download it from nsddata_betas") from None
            sel = index_zyx[za:zb, y0:y1, x0:x1].ravel()
            keep = np.flatnonzero(sel >= 0)
            parts.append(np.take(slab.reshape(TRIALS_PER_SESSION, -1), keep, axis=1))
            positions.append(sel[keep])
    # gather, then one permutation into the output order (column scatters are ~7x slower)
    position = np.concatenate(positions)
    source = np.empty_like(position)
    source[position] = np.arange(len(position))
    return np.take(np.concatenate(parts, axis=1), source, axis=1)


def _read_nifti_session(path: str, order: _VoxelOrder, block: int = 50) -> np.ndarray:
    """Stream a gzipped (X, Y, Z, 750) NIfTI volume by volume blocks, so a session is never whole in memory."""
    # imported here: nibabel is a heavy import, needed only on this path
    import nibabel as nib

    expected = (*order.roi.shape, TRIALS_PER_SESSION)
    try:
        with gzip.open(path, "rb") as f:
            header = nib.Nifti1Header.from_fileobj(f, check=False)
            shape = tuple(int(v) for v in header.get_data_shape())
            if shape != expected:
                raise NSDDataError(
                    f"{path}: betas have shape {shape} but the nsdgeneral mask is {order.roi.shape}, so NSD's "
                    f"NIfTI layout (X, Y, Z, 750) should be {expected}; wrong subject, resolution or file?")
            dtype = header.get_data_dtype()
            slope, inter = header.get_slope_inter()
            f.seek(int(header.get_data_offset()))
            frame = int(np.prod(shape[:3]))
            out = np.empty((TRIALS_PER_SESSION, order.n), dtype=np.float32 if slope not in (None, 1.0) else dtype)
            for t0 in range(0, TRIALS_PER_SESSION, block):
                n = min(block, TRIALS_PER_SESSION - t0)
                buf = f.read(frame * n * dtype.itemsize)
                if len(buf) != frame * n * dtype.itemsize:
                    raise EOFError(f"file ends inside volume {t0 + len(buf) // (frame * dtype.itemsize)}")
                # n Fortran-order (X, Y, Z) volumes = a C-order (n, Z, Y, X) array
                values = np.take(np.frombuffer(buf, dtype).reshape(n, frame), order.flat_zyx, axis=1)
                if slope not in (None, 1.0) or inter not in (None, 0.0):
                    values = values * (slope or 1.0) + (inter or 0.0)
                out[t0:t0 + n] = values
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile) as e:
        raise NSDDataError(f"{path}: truncated or corrupt gzipped NIfTI ({type(e).__name__}: {e}); "
                           "re-download it from nsddata_betas") from None
    return out


def units_divisor(dtype) -> float:
    """What stored betas are divided by to give % signal change: 300 for integer files (NSD's int16 = % signal
    change x 300), 1 for float files (taken as % signal change already)."""
    return BETAS_SCALE if np.issubdtype(np.dtype(dtype), np.integer) else 1.0


def _check_finite(path: str, block: np.ndarray) -> None:
    """One NaN would make every row NaN (through the z-score statistics), so a float session must be finite."""
    if block.dtype.kind != "f":
        return
    bad = ~np.isfinite(block)
    if bad.any():
        trial, voxel = (int(i) for i in np.argwhere(bad)[0])
        raise NSDDataError(f"{path}: {int(bad.sum())} non-finite value(s) (NaN or inf) in the nsdgeneral betas, the "
                           f"first at trial {trial + 1} of the session, voxel {voxel} of the ROI; NSD's betas are "
                           "finite: repair the file, or leave this session out (sessions=N)")


def read_session(path: str, labels_or_order) -> np.ndarray:
    """Masked betas of one session, (750, V) in the stored units (int16 for NSD; see ``units_divisor``), voxel
    order = C order of XYZ; float sessions are checked to be finite."""
    order = labels_or_order if isinstance(labels_or_order, _VoxelOrder) else _VoxelOrder(labels_or_order)
    if path.endswith(".hdf5"):
        block = _read_hdf5_session(path, order)
    elif path.endswith(".nii.gz"):
        block = _read_nifti_session(path, order)
    else:
        raise ValueError(f"{path}: betas must be .hdf5 or .nii.gz")
    _check_finite(path, block)
    return block


def voxel_order(labels: np.ndarray) -> _VoxelOrder:
    return _VoxelOrder(labels)
