"""The ground floor of fgb2i_hf: what every other layer may use and which imports nothing of the package.

- :mod:`.names`: ``simnsd/<name>`` -> the shipped SimNSD world folder; anything else -> a Hub id or a path;
  ``TINY_RANDOM``, the name of the random tiny stand-in models.
- :mod:`.io`: atomic writes (text, JSON, bytes, ``.npy``, PNG, safetensors, whole folders).
- :mod:`.tensors`: the one conversion and validation of betas into a (B, V) tensor.
- :mod:`.subjects`: subject names and per-subject voxel counts (the brain models' configs).
- :mod:`.versions`: the library versions recorded beside every artifact.
- :mod:`.checkpoints`: training checkpoints written whole, found and read with damaged files named.
- :mod:`.deprecation`: deprecated aliases of moved names (``moved_names``), resolved when used.
"""

from .io import (
    append_jsonl,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    publish_folder,
    save_npy_atomic,
    save_png_atomic,
    save_safetensors_atomic,
    scratch_folder,
)
from .names import TINY_RANDOM, WORLD_PREFIX, loading_config_field, resolve_pretrained, world_dir
from .subjects import check_subject_name, check_voxel_counts
from .tensors import as_betas, betas_tensor
from .versions import versions

__all__ = [
    "TINY_RANDOM", "WORLD_PREFIX", "append_jsonl", "as_betas", "atomic_path", "atomic_write_bytes",
    "atomic_write_json", "atomic_write_text", "betas_tensor", "check_subject_name", "check_voxel_counts",
    "loading_config_field", "publish_folder", "resolve_pretrained",
    "save_npy_atomic", "save_png_atomic", "save_safetensors_atomic", "scratch_folder", "versions", "world_dir",
]
