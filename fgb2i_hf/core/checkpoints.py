"""Training checkpoints (the CE ``Trainer``'s, the REINFORCE and MindEye trainers'): written whole, found, read
with every damaged file named.

Writing (the accelerate trainers): :func:`save_accelerate_checkpoint` puts ``accelerator.save_state`` and the
trainer's JSON state in ``<root>/checkpoint-<step>``, swapped in whole; :func:`list_checkpoints` /
:func:`find_checkpoint` find the complete ones; :func:`truncate_log` drops the log lines a killed run wrote after
its last checkpoint.

Reading: the loaders underneath (safetensors, ``json``, ``torch.load``, accelerate) raise without the path, or, for
the random states, carry on without them. A checkpoint file that exists but cannot be read raises
:class:`CheckpointError` naming it; a missing random-state file resumes with a ``UserWarning`` saying that the run
will not reproduce the uninterrupted one (delete a damaged one to get that behaviour).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
import zipfile

from .io import atomic_write_text, publish_folder

STATE_NAME = "trainer_state.json"


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


# -- writing and finding (accelerate trainers) ---------------------------------------------------------------------


def list_checkpoints(root: str, state_name: str = STATE_NAME) -> list[str]:
    """The complete ``checkpoint-<step>`` folders under ``root`` (those holding ``state_name``), oldest first."""
    if not os.path.isdir(root):
        return []
    found = [os.path.join(root, d) for d in os.listdir(root) if d.startswith("checkpoint-")
             and not d.endswith(".tmp") and os.path.exists(os.path.join(root, d, state_name))]
    return sorted(found, key=lambda p: int(p.rsplit("-", 1)[1]))


def find_checkpoint(path: str, root: str, state_name: str = STATE_NAME) -> str:
    """``path``, or for ``"latest"`` the newest complete checkpoint under ``root``; FileNotFoundError when there is
    none, or when ``path`` has no ``state_name``."""
    if path == "latest":
        found = list_checkpoints(root, state_name)
        if not found:
            raise FileNotFoundError(f"resume_from_checkpoint='latest' but {root} holds no complete checkpoint")
        path = found[-1]
    if not os.path.exists(os.path.join(path, state_name)):
        raise FileNotFoundError(f"{path} is not a complete checkpoint: {state_name} is missing")
    return path


def save_accelerate_checkpoint(accelerator, root: str, step: int, state: dict, keep: int,
                               state_name: str = STATE_NAME) -> str:
    """``accelerator.save_state`` and ``state`` (JSON, as ``state_name``) as ``<root>/checkpoint-<step>``, swapped
    in whole when complete; then only the newest ``keep`` checkpoints stay. Call it on every process."""
    final = os.path.join(root, f"checkpoint-{step}")
    # Not scratch_folder's random name: every process writes its part of the state to the same folder.
    tmp = final + ".tmp"
    if accelerator.is_main_process and os.path.exists(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    if accelerator.is_main_process:
        with open(os.path.join(tmp, state_name), "w", encoding="utf-8") as f:  # inside the folder published next
            json.dump(state, f, indent=2, default=str)
        publish_folder(tmp, final)
        for old in list_checkpoints(root, state_name)[: -keep or None]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def truncate_log(path: str, step: int) -> None:
    """Keep the records of a JSON-lines log whose ``step`` is <= ``step`` (those a checkpoint has seen): the steps a
    killed run logged after its last checkpoint are trained and logged again by the resumed run. A torn last line is
    dropped; any other line that is not JSON is an error."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a record torn by the kill
                continue
            raise ValueError(f"{path}: line {number} is not JSON; cannot resume its log") from None
        if record.get("step", 0) <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    atomic_write_text(path, "".join(kept))
