"""Atomic writes: every file and folder the package produces appears whole or not at all.

Each writer writes to a temporary sibling (same folder, so the final ``os.replace`` is an atomic rename on one
file system) and renames it into place; a killed process leaves the old file or the new one, never a torn one.
The temporary name is unique per process and call, so concurrent writers never share a temporary file. A
replaced file keeps the permission bits of the file it replaces (a new file gets the usual ``0o666 & ~umask``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import uuid

import numpy as np
from safetensors.torch import save_file


def _mode_for(path: str) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error remove it.

    ``suffix`` ends the temporary name (some writers pick the format from it, e.g. ``".png"``, ``".npy"``).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
    mode = _mode_for(path)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value, indent: int | None = 2, **kwargs) -> None:
    """JSON with a trailing newline (``kwargs`` go to ``json.dumps``, e.g. ``default=str``)."""
    atomic_write_text(path, json.dumps(value, indent=indent, **kwargs) + "\n")


def save_npy_atomic(path: str | os.PathLike, array) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def save_png_atomic(image, path: str | os.PathLike) -> None:
    """A PIL image as PNG."""
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """torch tensors as safetensors (contiguous copies where needed)."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def append_jsonl(path: str | os.PathLike, records) -> None:
    """Append whole lines of JSON (one per record), flushed and synced: a crash can lose a line, not tear one."""
    lines = "".join(json.dumps(r) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())


# -- whole folders ------------------------------------------------------------------------------------------------


def scratch_folder(final: str | os.PathLike) -> str:
    """A fresh sibling folder of ``final`` to write into before :func:`publish_folder`."""
    final = os.path.abspath(os.fspath(final))
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(path)
    return path


def publish_folder(scratch: str | os.PathLike, final: str | os.PathLike) -> str:
    """Replace ``final`` by the finished ``scratch`` folder: a killed run leaves the old folder or the new one,
    never a mixture (the old folder is moved aside first, the new one renamed in, then the old one removed)."""
    final = os.path.abspath(os.fspath(final))
    old = None
    if os.path.exists(final):
        old = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(os.fspath(scratch), final)
    if old is not None:
        shutil.rmtree(old)
    return final
