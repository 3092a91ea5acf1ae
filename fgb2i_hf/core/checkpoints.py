"""Reading training checkpoints (the CE ``Trainer``'s and the REINFORCE trainer's): every damaged file is named.

The loaders underneath (safetensors, ``json``, ``torch.load``, accelerate) raise without the path, or, for the
random states, carry on without them. A checkpoint file that exists but cannot be read raises
:class:`CheckpointError` naming it; a missing random-state file resumes with a ``UserWarning`` saying that the run
will not reproduce the uninterrupted one (delete a damaged one to get that behaviour).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
import zipfile


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be read (truncated, corrupt, not what the trainer wrote)."""


@contextlib.contextmanager
def reading(path: str, what: str):
    """Re-raise any failure inside the block as a CheckpointError naming ``path`` and ``what`` was being loaded."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load the {what} ({type(e).__name__}: {str(e)[:300]}); the checkpoint "
                              "is damaged: resume from another checkpoint, or start again") from e


def read_json_state(path: str, required_key: str) -> dict:
    """A checkpoint's JSON state file, which must exist, parse, and hold ``required_key``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing: {os.path.dirname(path)} is not a complete checkpoint")
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the checkpoint is damaged") from None
    if not isinstance(state, dict) or required_key not in state:
        raise CheckpointError(f"{path}: no {required_key!r}; not a state this trainer wrote, or a damaged one")
    return state


def check_random_states(path: str) -> bool:
    """False (with a warning) if the random-state file is missing; CheckpointError if it cannot be read.

    ``torch.save`` writes a zip archive, so a truncated or foreign file is caught here by the archive's checksums,
    without unpickling anything."""
    if not os.path.isfile(path):
        warnings.warn(f"{path} is missing: the resumed run starts from other random states and will not reproduce "
                      "the uninterrupted run (sampling, dropout and data order may differ)", UserWarning, stacklevel=3)
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
        if broken is not None:
            raise zipfile.BadZipFile(f"member {broken} fails its checksum")
    except (OSError, zipfile.BadZipFile) as e:
        raise damaged_random_states(path, e) from e
    return True


def damaged_random_states(path: str, error: Exception) -> CheckpointError:
    return CheckpointError(f"{path}: cannot be read ({type(error).__name__}: {str(error)[:200]}); delete it to resume "
                           "without the random states (the run will then not reproduce the uninterrupted one), or "
                           "resume from another checkpoint")
