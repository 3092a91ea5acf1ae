"""Writing world components: float16 storage, a compact CLIP tokenizer, a training record beside them (whole folders
are published with :func:`fgb2i_hf.core.scratch_folder` / :func:`~fgb2i_hf.core.publish_folder`)."""

from __future__ import annotations

import json
import os

from safetensors import safe_open

from ...core import atomic_write_json, atomic_write_text, save_safetensors_atomic, versions

RECORD_NAME = "world_training.json"


def halve_safetensors(folder: str) -> None:
    """Rewrite every ``*.safetensors`` under ``folder`` with its floating tensors in float16 (metadata kept).

    Loaders still compute in float32: configs keep ``dtype: float32`` (transformers' ``dtype="auto"`` reads it),
    diffusers casts to the model's default dtype, and ``load_state_dict`` copies into float32 parameters.
    """
    for directory, _, files in os.walk(folder):
        for name in files:
            if not name.endswith(".safetensors"):
                continue
            path = os.path.join(directory, name)
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata()
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            save_safetensors_atomic({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, path,
                                    metadata=metadata)


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
        atomic_write_text(os.path.join(folder, name), text)
    os.remove(path)


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def write_record(folder: str, record: dict) -> None:
    """``world_training.json``: the component's training config, data, metrics, time and versions."""
    atomic_write_json(os.path.join(folder, RECORD_NAME), {**record, "versions": versions()}, indent=1)


def read_record(folder: str) -> dict | None:
    path = os.path.join(folder, RECORD_NAME)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
