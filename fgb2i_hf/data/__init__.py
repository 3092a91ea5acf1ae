"""NSD data: file readers, the ``datasets`` builder, the stimulus store and the collator.

- ``NSD`` (a ``datasets.GeneratorBasedBuilder``, configs subj01..subj08) and ``load_nsd(root, subjects=...)``
  build the rows: subject, nsd_id, coco_id, betas, captions, fine_captions, objects, trials.
- ``NSDStimuli(root)[nsd_id]`` reads a stimulus image; ``voxel_stats(dataset, subject)`` the z-scoring statistics;
  ``betas_tensor(batch["betas"])`` makes a (B, V) float tensor, zero-padding mixed subjects.

The SimNSD simulator lives in :mod:`fgb2i_hf.simnsd` (``from fgb2i_hf.simnsd import simulate_nsd``); its old names
here still work for one release, with a ``DeprecationWarning``.
"""

from ..core.deprecation import moved_names
from ..core.tensors import betas_tensor
from .contract import ContractError, DataContract
from .layout import NSDDataError, NSDMissingFileError, NSDPaths, subject_id
from .normalize import VoxelStats, voxel_stats
from .nsd import NSD, NSDConfig, data_contract, load_nsd
from .stimuli import NSDStimuli

__all__ = ["ContractError", "DataContract", "NSD", "NSDConfig", "data_contract", "NSDDataError", "NSDMissingFileError", "NSDPaths", "NSDStimuli", "VoxelStats",
           "betas_tensor", "load_nsd", "subject_id", "voxel_stats"]

_MOVED_TO_SIMNSD = ("SimNSDConfig", "load_scenes", "load_simnsd_config", "noiseless_response", "scene_features_of",
                    "simulate_nsd")

__getattr__ = moved_names(__name__, "fgb2i_hf.simnsd", _MOVED_TO_SIMNSD)
