"""Subject names and per-subject voxel counts, as the brain models' configs hold them."""

from __future__ import annotations

import re

SUBJECT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def check_subject_name(subject) -> str:
    """A subject name must be usable as a module name (no dots, not empty): ``subj01``, ``sub-03``..."""
    if not isinstance(subject, str) or not SUBJECT_NAME.match(subject):
        raise ValueError(f"subject names must be strings of letters, digits, '_' or '-' that start with a letter or "
                         f"'_' (e.g. 'subj01'), got {subject!r}")
    return subject


def check_voxel_counts(voxel_counts) -> dict[str, int]:
    """``{subject: V_s}`` (None: empty) with every name checked and every count a positive int; a new dict."""
    counts = dict(voxel_counts or {})
    for subject, n in counts.items():
        check_subject_name(subject)
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"voxel_counts[{subject!r}] must be a positive int (the subject's voxel count), got {n!r}")
    return counts
