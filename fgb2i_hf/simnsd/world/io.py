"""Writing world components: whole folders published atomically, float16 storage, a training record beside them."""

from __future__ import annotations

import json
import os
import shutil
import uuid

from ...core import versions

RECORD_NAME = "world_training.json"


def scratch_folder(final: str) -> str:
    """A fresh sibling folder of ``final`` to write a component into before :func:`publish_folder`."""
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(path)
    return path


def publish_folder(scratch: str, final: str) -> str:
    """Replace ``final`` by the finished ``scratch`` folder: a killed run leaves the old component or the new one,
    never a mixture (the old folder is moved aside first, then the new one renamed in, then the old one removed)."""
    final = os.path.abspath(final)
    old = None
    if os.path.exists(final):
        old = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(scratch, final)
    if old is not None:
        shutil.rmtree(old)
    return final


def halve_safetensors(folder: str) -> None:
    """Rewrite every ``*.safetensors`` under ``folder`` with its floating tensors in float16 (metadata kept).

    Loaders still compute in float32: configs keep ``dtype: float32`` (transformers' ``dtype="auto"`` reads it),
    diffusers casts to the model's default dtype, and ``load_state_dict`` copies into float32 parameters.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    for directory, _, files in os.walk(folder):
        for name in files:
            if not name.endswith(".safetensors"):
                continue
            path = os.path.join(directory, name)
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata()
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
            tmp = path + ".tmp"
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, path)


def compact_clip_tokenizer(folder: str) -> None:
    """Rewrite a saved ``CLIPTokenizer``'s ``tokenizer.json`` (3.6 MB: CLIP's 49,408-token vocabulary and 48,894
    merges, pretty-printed) as ``vocab.json`` + ``merges.txt`` (1.4 MB), the files OpenAI CLIP's repositories ship;
    ``CLIPTokenizer.from_pretrained`` builds the same tokenizer (same ids) from them."""
    path = os.path.join(folder, "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        model = json.load(f)["model"]
    if model.get("type") != "BPE" or model.get("end_of_word_suffix") != "</w>":
        raise ValueError(f"{path}: expected CLIP's BPE model (end_of_word_suffix '</w>')")
    for name, text in (("vocab.json", json.dumps(model["vocab"], ensure_ascii=False, separators=(",", ":"))),
                       ("merges.txt", "#version: 0.2\n" + "\n".join(m if isinstance(m, str) else " ".join(m)
                                                                    for m in model["merges"]) + "\n")):
        with open(os.path.join(folder, name) + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(os.path.join(folder, name) + ".tmp", os.path.join(folder, name))
    os.remove(path)


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def write_record(folder: str, record: dict) -> None:
    """``world_training.json``: the component's training config, data, metrics, time and versions."""
    path = os.path.join(folder, RECORD_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({**record, "versions": versions()}, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def read_record(folder: str) -> dict | None:
    path = os.path.join(folder, RECORD_NAME)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
