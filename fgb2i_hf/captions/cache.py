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
through a temporary file and an atomic rename, keeping the file's permissions) and its image captioned again.
A second record of an image with the same settings is reported and dropped the same way (the first is kept).
While a cache is open for writing, ``<cache>.lock`` holds an advisory lock; it is removed on close.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..core import atomic_write_bytes
from ..data.coco import check_fine_caption_record

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
    """Check the two required keys of a fine-caption record (:func:`fgb2i_hf.data.coco.check_fine_caption_record`);
    raise :class:`CaptionCacheError` naming ``where``."""
    return check_fine_caption_record(record, where, CaptionCacheError)


@dataclass
class CacheScan:
    """What :func:`read_cache` found in a file."""

    records: list[dict] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (1-based line number, why)
    record_lines: list[int] = field(default_factory=list)  # the 1-based line number of each record

    def duplicates(self) -> list[tuple[int, int, int]]:
        """``(line, nsd_id, first line)`` of each record repeating an earlier one's ``nsd_id`` and settings."""
        first: dict[tuple, int] = {}
        found = []
        for record, line in zip(self.records, self.record_lines):
            key = (record["nsd_id"], record.get("settings_hash"))
            if key in first:
                found.append((line, record["nsd_id"], first[key]))
            else:
                first[key] = line
        return found

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
        scan.record_lines.append(lineno)
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
    """Replace ``path`` by ``records`` (:func:`fgb2i_hf.core.atomic_write_bytes`: a temporary file in the same
    folder renamed into place, the file's permissions kept), then sync the folder so the rename itself is durable."""
    atomic_write_bytes(path, encode_records(records))
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
        self._lock_path = None

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
            repeats = scan.duplicates()
            if repeats:
                shown = "; ".join(f"line {n} repeats nsd_id {i} of line {f}" for n, i, f in repeats[:5])
                more = f" (and {len(repeats) - 5} more)" if len(repeats) > 5 else ""
                logger.warning("%s: dropping %d duplicate record(s) (an image captioned twice with the same settings; "
                               "the first record is kept): %s%s", path, len(repeats), shown, more)
                dropped = {n for n, _, _ in repeats}
                keep = [(r, n) for r, n in zip(scan.records, scan.record_lines) if n not in dropped]
                scan.records, scan.record_lines = [r for r, _ in keep], [n for _, n in keep]
            if scan.bad_lines or repeats:
                write_records_atomic(path, scan.records)
            cache.scan = scan
            cache.done = {r["nsd_id"] for r in scan.records if r.get("settings_hash") == settings}
        except BaseException:
            cache.close()
            raise
        return cache

    def _acquire_lock(self) -> None:
        """Refuse a second process appending to the same cache (advisory lock on ``<cache>.lock``; POSIX only).

        The lock file is removed on close, while still locked. A process that opened it just before and locks it
        just after then holds a lock on a file no longer at that path: it sees so (another inode, or none) and
        opens the path afresh, so two writers never hold the lock of the file at the path."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        lock_path = os.path.abspath(self.path) + ".lock"
        for _ in range(100):
            lock = open(lock_path, "a")
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                raise CaptionCacheError(f"{self.path}: another process is writing this cache "
                                        f"(lock {lock_path} is held)")
            try:
                at_path = os.stat(lock_path)
                held = os.fstat(lock.fileno())
                current = (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)
            except FileNotFoundError:
                current = False
            if current:
                self._lock, self._lock_path = lock, lock_path
                return
            lock.close()  # removed by a writer that was closing: try the path again
        raise CaptionCacheError(f"{self.path}: could not take the lock {lock_path}")

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
        if self._lock is not None:  # removed while still locked (see _acquire_lock), then released
            try:
                os.unlink(self._lock_path)
            except FileNotFoundError:
                pass
            self._lock.close()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
