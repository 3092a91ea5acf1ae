"""Betas as tensors: the one place where betas are converted and validated on their way into a model.

``betas_tensor`` is the fast path from a ``datasets`` batch (numpy formatter) to a (B, V) tensor: datasets' torch
formatter converts float16 lists with ``torch.tensor``, ~11 ms per 64 x 15,724 batch on 2 cores, the numpy path
~1.6 ms. ``as_betas`` takes any form a user holds (tensor, array, rows of a dataset) plus the subject(s), and
checks everything a model needs: shape, dtype, subjects, per-subject widths and zero padding, finiteness *after*
the cast to the model's dtype (float64 values beyond float32's range become inf in the cast).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def betas_tensor(betas, dtype=None, pad_to: int | None = None):
    """A (B, V) tensor from a batch of betas as ``datasets`` returns them.

    Args:
        betas: a 2-D array, or a sequence of 1-D arrays/lists (rows of different subjects may differ in length).
        dtype: torch dtype of the result (default ``torch.float32``).
        pad_to: width of the result; rows are zero-padded on the right to it (default: the longest row).
    Returns:
        (B, V) tensor; a row shorter than V is zero-padded on the right (the padded mixed-subject form that the
        brain models read with a per-row subject list).
    """
    import torch  # here, so that building datasets does not import torch

    np_dtype = torch.empty((), dtype=dtype or torch.float32).numpy().dtype
    if isinstance(betas, np.ndarray) and betas.ndim == 2 and betas.dtype != object:
        rows = betas
        width = rows.shape[1] if pad_to is None else pad_to
        if width == rows.shape[1]:
            return torch.from_numpy(np.ascontiguousarray(rows, dtype=np_dtype))
        if width < rows.shape[1]:
            raise ValueError(f"pad_to={pad_to} is shorter than the rows ({rows.shape[1]} voxels)")
        rows = list(rows)
    else:
        rows = [np.asarray(r) for r in betas]
    lengths = [len(r) for r in rows]
    width = max(lengths, default=0) if pad_to is None else pad_to
    if lengths and max(lengths) > width:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest row ({max(lengths)} voxels)")
    out = np.zeros((len(rows), width), dtype=np_dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


def _to_tensor(betas, name: str, allow_1d: bool):
    """``betas`` as a 2-D tensor, and the rows' own lengths when they came as a sequence of rows (else None)."""
    import torch

    lengths = None
    if isinstance(betas, torch.Tensor):
        tensor = betas
    elif isinstance(betas, np.ndarray) and betas.dtype != object:
        tensor = torch.from_numpy(np.ascontiguousarray(betas))
    elif isinstance(betas, Sequence) and not isinstance(betas, (str, bytes)) and len(betas) > 0:
        rows = []
        for row in betas:
            row = np.asarray(row)
            if row.ndim != 1 or not (np.issubdtype(row.dtype, np.floating) or np.issubdtype(row.dtype, np.integer)):
                raise ValueError(f"`{name}` given as a sequence must hold 1-D rows of voxel values")
            rows.append(row)
        dtype = np.result_type(*[r.dtype for r in rows])
        lengths = [len(r) for r in rows]
        out = np.zeros((len(rows), max(lengths)), dtype=dtype)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        tensor = torch.from_numpy(out)
    else:
        raise ValueError(f"`{name}` must be a float tensor or array (B, V), or a non-empty sequence of rows; "
                         f"got {type(betas).__name__}")
    if tensor.ndim == 1 and allow_1d:
        tensor = tensor[None]
    if tensor.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D tensor or array (batch, voxels), got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"`{name}` must be floating point, got dtype {tensor.dtype}")
    if tensor.shape[0] == 0:
        raise ValueError(f"`{name}` has no rows: expected at least one brain (B >= 1)")
    return tensor, lengths


def _subjects(subject, batch: int, name: str) -> list[str]:
    if isinstance(subject, str):
        return [subject] * batch
    if isinstance(subject, Sequence) and len(subject) > 0 and all(isinstance(s, str) for s in subject):
        if len(subject) != batch:
            raise ValueError(f"`subject` lists one name per row: got {len(subject)} names for {batch} rows of {name}")
        return list(subject)
    raise ValueError(f"`subject` must be a subject name (str) or a list of one name per row, got {subject!r}")


def _check_widths(tensor, subject, subjects: list[str], voxel_counts: Mapping[str, int], name: str) -> None:
    """Known subjects; one subject: exactly its V_s columns; one name per row: at least max V_s columns and zeros
    beyond each row's own V_s."""
    import torch

    unknown = sorted(set(subjects) - set(voxel_counts))
    if unknown:
        raise ValueError(f"unknown subject {', '.join(map(repr, unknown))}; this model knows {sorted(voxel_counts)}")
    width = tensor.shape[1]
    if isinstance(subject, str):
        if width != voxel_counts[subject]:
            raise ValueError(f"{name} for {subject} have {width} voxels per row, expected {voxel_counts[subject]} "
                             f"({subject} has {voxel_counts[subject]} voxels in this model)")
        return
    need = max(voxel_counts[s] for s in set(subjects))
    if width < need:
        worst = next(s for s in subjects if voxel_counts[s] == need)
        raise ValueError(f"{name} have {width} columns but {worst} needs {need} voxels (pad rows on the right)")
    lengths = torch.tensor([voxel_counts[s] for s in subjects], device=tensor.device)
    beyond = torch.arange(width, device=tensor.device)[None, :] >= lengths[:, None]
    bad = (tensor.ne(0) & beyond).any(dim=1)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"row {i} ({subjects[i]}) has non-zero values after its {voxel_counts[subjects[i]]} voxels: a {name} "
            "length that differs from the subject's voxel count, or padding that is not zeros (pad mixed-subject "
            "rows with zeros on the right)")


def as_betas(betas, subject, *, voxel_counts: Mapping[str, int] | None = None, device=None, dtype=None,
             name: str = "betas", allow_1d: bool = True):
    """Validate betas and their subject(s); return ``(tensor (B, V), subject)``.

    Args:
        betas: a tensor or array (B, V) (or (V,) for one row, with ``allow_1d``), or a sequence of B 1-D rows (e.g.
            ``dataset[i:j]["betas"]``); rows of different lengths are zero-padded on the right (mixed subjects: they
            need one subject name per row).
        subject: one name for all rows, or a list of B names.
        voxel_counts: ``{subject: V_s}`` of the model that will read the betas: subjects must be known; with one
            name for all rows the rows must have exactly V_s values; with one name per row (padded form) at least
            max V_s, with zeros beyond each row's own V_s.
        device, dtype: where the tensor goes (default: unchanged device, float32). Finiteness is checked after
            the cast, so values that overflow the target dtype are caught.
        name: the argument's name in error messages.
        allow_1d: read a 1-D tensor or array as one row (else it is an error).
    Returns:
        The tensor, and ``subject`` as given (a str stays a str, a list becomes a list of str).
    """
    import torch

    given, lengths = _to_tensor(betas, name, allow_1d)
    subjects = _subjects(subject, given.shape[0], name)
    if isinstance(subject, str) and lengths is not None and len(set(lengths)) > 1:
        raise ValueError(f"`{name}` rows have different lengths {sorted(set(lengths))} but one subject {subject!r} "
                         "was given; rows of several subjects need `subject` as a list with one name per row")
    if voxel_counts is not None:
        _check_widths(given, subject, subjects, voxel_counts, name)
    tensor = given.to(device=device if device is not None else given.device, dtype=dtype or torch.float32)
    finite = torch.isfinite(tensor).all(dim=1)
    if not bool(finite.all()):
        rows = torch.nonzero(~finite).flatten().tolist()
        named = sorted({subjects[i] for i in rows})
        cast = ""
        if bool(torch.isfinite(given[torch.tensor(rows, device=given.device)]).all()):
            cast = (f", after the cast to the model's dtype {tensor.dtype} (largest finite value "
                    f"{torch.finfo(tensor.dtype).max:.4g}): z-score the betas")
        raise ValueError(f"{name} contain NaN or inf in rows {rows[:10]} (subject(s) {named}){cast}")
    return tensor, (subject if isinstance(subject, str) else subjects)
