"""Row selections of an NSD ``Dataset`` that runs share (quick runs, evaluation subsets)."""

from __future__ import annotations

import numpy as np


def first_rows_per_subject(dataset, n: int | None):
    """The first ``n`` rows of each subject, in dataset order (all rows when ``n`` is falsy)."""
    if not n:
        return dataset
    column = np.asarray(dataset["subject"])
    keep = np.concatenate([np.flatnonzero(column == s)[:n] for s in dict.fromkeys(column.tolist())])
    return dataset.select(np.sort(keep))
