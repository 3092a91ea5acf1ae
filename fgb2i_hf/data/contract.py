"""The data contract: the NSD settings that shaped an artifact, written beside it, checked by whoever reads it.

Every artifact of the chain (the brain-to-text model, the ridge decoders, the MindEye model, reconstructions,
tables) is trained or computed on rows of ``load_nsd``. Which rows, and how they were normalised, is this record:

* ``subjects``, ``sessions`` (resolved: the number of sessions actually read), the ``test_rule`` (NSD's shared
  images, ``sharedix``, repetitions averaged) and the ``validation_rule`` (below);
* ``average_train`` (single trials or per-image averages) and ``zscore`` (its source), with a fingerprint of each
  subject's training statistics (``stats``) and of its voxel selection (``voxel_mask``);
* ``layout``, ``betas_type``, ``beta_dtype``.

A downstream step takes its data settings *from its upstream artifacts* (``DataContract.load(folder)``,
``nsd_options()``), rebuilds its rows under each artifact's contract, and refuses artifacts that disagree on the
fields they must share (:meth:`DataContract.check_compatible`; the error names both artifacts and the field). Two
artifacts may differ in ``average_train`` (Takagi trains on single trials, Brain-Diffuser on averages): each then
gets its inputs normalised the way it was fit, by loading the rows under its own contract.

The validation split. ``validation_fraction`` of the training *images* (all their trials) are held out, chosen by
a hash of the image id alone: ``sha256(b"fgb2i-validation:<nsd_id>")`` read as a 64-bit fraction below
``validation_fraction``. The choice does not depend on the subject, the sessions or the seed; test images (the
shared images) are never training images, so no validation image is a test image of any subject. Monitoring and
model selection use it; the test split is read only by final evaluation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

CONTRACT_NAME = "data_contract.json"
TEST_RULE = "nsd-shared1000-sharedix-averaged"
VALIDATION_RULE = "sha256(fgb2i-validation:<nsd_id>) < fraction"
DEFAULT_VALIDATION_FRACTION = 0.05

# The fields every artifact of one chain must agree on; ``average_train`` and ``stats`` may differ between
# artifacts (each is fed rows built under its own contract).
SHARED_FIELDS = ("sessions", "test_rule", "validation_rule", "validation_fraction", "zscore", "layout", "betas_type",
                 "voxel_mask")


class ContractError(ValueError):
    """Two artifacts, or an artifact and the data, were made with different data settings."""


def is_validation_image(nsd_id: int, fraction: float) -> bool:
    """The validation rule (module docstring): a fixed function of the image id and the fraction."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"fgb2i-validation:{int(nsd_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def array_fingerprint(*arrays) -> str:
    """sha256 of arrays' dtype, shape and bytes (little-endian), first 16 hex digits."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class DataContract:
    """The data settings of an artifact (module docstring). ``voxel_mask`` and ``stats`` map subject -> fingerprint."""

    subjects: tuple[str, ...]
    sessions: int | None
    average_train: bool
    zscore: str
    validation_fraction: float
    layout: str = "raw"
    betas_type: str = ""
    beta_dtype: str = "float16"
    voxel_mask: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    test_rule: str = TEST_RULE
    validation_rule: str = VALIDATION_RULE

    # -- files -----------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["subjects"] = list(self.subjects)
        return out

    @classmethod
    def from_dict(cls, record: dict, where: str = "data contract") -> "DataContract":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                         and f.name not in record)
        unknown = sorted(set(record) - names)
        if missing or unknown:
            raise ContractError(f"{where}: not a data contract (missing {missing}, unknown {unknown})")
        values = dict(record)
        values["subjects"] = tuple(values["subjects"])
        return cls(**values)

    def save(self, folder: str) -> str:
        from ..core import atomic_write_json

        path = os.path.join(folder, CONTRACT_NAME)
        atomic_write_json(path, self.to_dict(), sort_keys=True)
        return path

    @classmethod
    def load(cls, folder: str, what: str | None = None) -> "DataContract":
        """The contract saved in ``folder`` (``data_contract.json``); ``what`` names the artifact in errors."""
        path = os.path.join(folder, CONTRACT_NAME)
        if not os.path.isfile(path):
            raise ContractError(f"{what or folder}: no {CONTRACT_NAME} in {folder}: the artifact does not say which "
                                "data made it (made by an older version, or not by this package?)")
        with open(path, encoding="utf-8") as f:
            try:
                record = json.load(f)
            except json.JSONDecodeError as e:
                raise ContractError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(record, path)

    @classmethod
    def find(cls, folder: str | None) -> "DataContract | None":
        """The contract in ``folder`` if it has one (None for no folder, a Hub id, or a folder without one)."""
        if folder and os.path.isfile(os.path.join(folder, CONTRACT_NAME)):
            return cls.load(folder)
        return None

    # -- use -------------------------------------------------------------------------------------------------------
    def nsd_options(self) -> dict:
        """``load_nsd`` options that rebuild this artifact's rows (``subjects`` apart)."""
        return {"sessions": self.sessions, "average_train": self.average_train, "zscore": self.zscore,
                "validation_fraction": self.validation_fraction, "beta_dtype": self.beta_dtype}

    def for_subjects(self, subjects) -> "DataContract":
        """This contract restricted to some of its subjects."""
        subjects = tuple(subjects)
        missing = sorted(set(subjects) - set(self.subjects))
        if missing:
            raise ContractError(f"subjects {missing} are not in this data contract (it has {list(self.subjects)})")
        return dataclasses.replace(self, subjects=subjects,
                                   voxel_mask={s: self.voxel_mask[s] for s in subjects if s in self.voxel_mask},
                                   stats={s: self.stats[s] for s in subjects if s in self.stats})

    def differences(self, other: "DataContract", fields=SHARED_FIELDS, subjects=None) -> dict:
        """``{field: (mine, theirs)}`` where the two differ, over ``fields`` (per-subject fields on ``subjects``,
        default the subjects both have)."""
        common = list(subjects) if subjects is not None else [s for s in self.subjects if s in other.subjects]
        out = {}
        for name in fields:
            mine, theirs = getattr(self, name), getattr(other, name)
            if isinstance(mine, dict):
                mine, theirs = {s: mine.get(s) for s in common}, {s: theirs.get(s) for s in common}
            if mine != theirs:
                out[name] = (mine, theirs)
        return out

    def check_compatible(self, other: "DataContract", mine: str, theirs: str, fields=SHARED_FIELDS,
                         subjects=None) -> None:
        """Raise :class:`ContractError` naming both artifacts and every field on which they disagree."""
        diff = self.differences(other, fields, subjects)
        if diff:
            lines = "; ".join(f"{name}: {a!r} ({mine}) vs {b!r} ({theirs})" for name, (a, b) in diff.items())
            raise ContractError(f"{mine} and {theirs} were made with different data settings: {lines}. Rebuild one "
                                "of them with the other's settings (they are in each folder's data_contract.json)")


def merge_contracts(parts: list[DataContract]) -> DataContract:
    """One contract for several subjects' builds made with the same options."""
    first = parts[0]
    fields = ("sessions", "average_train", "zscore", "validation_fraction", "layout", "betas_type", "beta_dtype")
    for part in parts[1:]:
        diff = first.differences(part, fields)
        if diff:
            raise ContractError(f"subjects {list(first.subjects)} and {list(part.subjects)} were built with other "
                                f"settings: {diff}")
    return dataclasses.replace(first, subjects=tuple(s for p in parts for s in p.subjects),
                               voxel_mask={k: v for p in parts for k, v in p.voxel_mask.items()},
                               stats={k: v for p in parts for k, v in p.stats.items()})


__all__ = ["CONTRACT_NAME", "ContractError", "DEFAULT_VALIDATION_FRACTION", "DataContract", "SHARED_FIELDS",
           "TEST_RULE", "VALIDATION_RULE", "array_fingerprint", "is_validation_image", "merge_contracts"]
