"""The fine-captions JSONL cache: one record per captioned image, safe to resume after a kill.

Format (the interface the NSD builder reads back as ``fine_captions``): one JSON object per line, UTF-8,
``'\\n'``-terminated::

    {"nsd_id": 123, "caption": "...", "model": "llava-hf/llava-1.5-7b-hf", "revision": "main",
     "settings_hash": "<hex>", "truncated": false}

``nsd_id`` (int, 0-based 73k id) and ``caption`` (str) are required; other keys are allowed (``flagged``
from the audit's filter, ...).

Kill safety: records are appended a batch at a time with one ``write`` followed by ``flush`` and ``fsync``,
so a kill loses at most the batch in flight. A line that is nevertheless torn or corrupt (power loss, a
disk filling up, a hand edit) is reported when the cache is opened, dropped from the file (which is rewritten
through a temporary file and an atomic rename) and its image captioned again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Iterable, Sequence

logger = logging.getLogger(__name__)


class CaptionCacheError(ValueError):
    """A fine-captions cache cannot be used as asked (other settings, a record of the wrong shape, ...)."""


def settings_hash(model: str, revision: str | None, prompt: str, generation_kwargs: dict,
                  max_clip_tokens: int | None) -> str:
    """Hex digest identifying what produced a caption: model id, revision, prompt, generation settings, length cap."""
    payload = {"model": model, "revision": revision, "prompt": prompt,
               "generation_kwargs": generation_kwargs, "max_clip_tokens": max_clip_tokens}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def validate_record(record, where: str) -> dict:
    """Check the two required keys of a fine-caption record; raise :class:`CaptionCacheError` naming ``where``."""
    if not isinstance(record, dict):
        raise CaptionCacheError(f"{where}: expected a JSON object, got {type(record).__name__}")
    nsd_id, caption = record.get("nsd_id"), record.get("caption")
    if isinstance(nsd_id, bool) or not isinstance(nsd_id, int) or nsd_id < 0:
        raise CaptionCacheError(f"{where}: 'nsd_id' must be a non-negative int (0-based 73k id), got {nsd_id!r}")
    if not isinstance(caption, str):
        raise CaptionCacheError(f"{where}: 'caption' must be a string, got {caption!r}")
    return record


@dataclass
class CacheScan:
    """What :func:`read_cache` found in a file."""

    records: list[dict] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (1-based line number, why)

    def settings(self) -> dict[str | None, int]:
        """``{settings_hash: number of records}`` (``None`` for records without one)."""
        out: dict[str | None, int] = {}
        for r in self.records:
            out[r.get("settings_hash")] = out.get(r.get("settings_hash"), 0) + 1
        return out


def read_cache(path: str) -> CacheScan:
    """Read a fine-captions JSONL, sorting its lines into valid records and bad lines (never raises on content).

    A line is bad when it is not '\\n'-terminated (torn by a kill), is not valid UTF-8 JSON, or is not an object
    with an int ``nsd_id`` >= 0 and a str ``caption``. Blank lines are ignored.
    """
    scan = CacheScan()
    if not os.path.exists(path):
        return scan
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    last = len(lines) - 1  # after the final '\n' comes an empty piece; anything else there is a torn line
    for i, raw in enumerate(lines):
        lineno = i + 1
        if i == last:
            if raw.strip():
                scan.bad_lines.append((lineno, f"torn last line without a newline ({len(raw)} bytes)"))
            break
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
            validate_record(record, f"{path}:{lineno}")
        except (UnicodeDecodeError, json.JSONDecodeError, CaptionCacheError) as e:
            scan.bad_lines.append((lineno, str(e).split(": ", 1)[-1] if isinstance(e, CaptionCacheError) else
                                   f"not a JSON record ({type(e).__name__}: {e})"))
            continue
        scan.records.append(record)
    return scan


def encode_records(records: Iterable[dict]) -> bytes:
    """JSON lines (UTF-8, non-ASCII kept, one '\\n' each) for ``records``."""
    return b"".join((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8") for r in records)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_records_atomic(path: str, records: Sequence[dict]) -> None:
    """Replace ``path`` by ``records`` through a temporary file in the same folder and an atomic rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encode_records(records))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path)


class CaptionCache:
    """An open fine-captions cache for one set of generation settings.

    ``CaptionCache.open(path, settings_hash, allow_mixed_settings=False)`` reads the file, reports and drops
    bad lines (rewriting the file without them), and refuses records of other settings unless
    ``allow_mixed_settings``. ``done`` is the set of ids that have a record with these settings;
    ``append(records)`` adds a batch durably.
    """

    def __init__(self, path: str, settings: str, scan: CacheScan):
        self.path = path
        self.settings_hash = settings
        self.scan = scan
        self.done: set[int] = {r["nsd_id"] for r in scan.records if r.get("settings_hash") == settings}
        self._file = None
        self._lock = None

    @classmethod
    def open(cls, path: str, settings: str, allow_mixed_settings: bool = False) -> "CaptionCache":
        path = os.fspath(path)
        if os.path.isdir(path):
            raise CaptionCacheError(f"{path}: is a folder; the fine-captions cache is a .jsonl file")
        cache = cls(path, settings, CacheScan())
        cache._acquire_lock()
        try:
            scan = read_cache(path)
            others = {h: n for h, n in scan.settings().items() if h != settings}
            if others and not allow_mixed_settings:
                found = ", ".join(f"{h or 'none'} ({n} records)" for h, n in others.items())
                models = sorted({str(r.get("model")) for r in scan.records if r.get("settings_hash") != settings})
                raise CaptionCacheError(
                    f"{path}: holds captions written with other settings (settings_hash {found}; model "
                    f"{', '.join(models)}), but this run's settings_hash is {settings}. Write to a new file, or "
                    "pass allow_mixed_settings=True (--allow_mixed_settings) to add this run's captions beside them")
            if scan.bad_lines:
                shown = "; ".join(f"line {n}: {why}" for n, why in scan.bad_lines[:5])
                more = f" (and {len(scan.bad_lines) - 5} more)" if len(scan.bad_lines) > 5 else ""
                logger.warning("%s: dropping %d torn or corrupt line(s), their images will be captioned again: %s%s",
                               path, len(scan.bad_lines), shown, more)
                write_records_atomic(path, scan.records)
            cache.scan = scan
            cache.done = {r["nsd_id"] for r in scan.records if r.get("settings_hash") == settings}
        except BaseException:
            cache.close()
            raise
        return cache

    def _acquire_lock(self) -> None:
        """Refuse a second process appending to the same cache (advisory lock; POSIX only)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        lock = open(os.path.abspath(self.path) + ".lock", "a")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise CaptionCacheError(f"{self.path}: another process is writing this cache (lock {lock.name} is held)")
        self._lock = lock

    def append(self, records: Sequence[dict]) -> None:
        """Append a batch of records as complete lines, then flush and fsync."""
        if not records:
            return
        for r in records:
            validate_record(r, f"record for {self.path}")
        if self._file is None:
            self._file = open(self.path, "ab")
        self._file.write(encode_records(records))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.update(r["nsd_id"] for r in records if r.get("settings_hash") == self.settings_hash)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock is not None:  # the lock file stays: unlinking it would let two processes lock two inodes
            self._lock.close()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
