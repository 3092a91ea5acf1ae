"""NSD data: the SimNSD simulator, NSD file readers, the ``datasets`` builder and the stimulus store.

- ``simulate_nsd(root)`` writes SimNSD in NSD's raw layout; ``noiseless_response`` gives its ground truth.
- ``NSD`` (a ``datasets.GeneratorBasedBuilder``, configs subj01..subj08) and ``load_nsd(root, subjects=...)``
  build the rows: subject, nsd_id, coco_id, betas, captions, fine_captions, objects, trials.
- ``NSDStimuli(root)[nsd_id]`` reads a stimulus image; ``voxel_stats(dataset, subject)`` the z-scoring statistics;
  ``betas_tensor(batch["betas"])`` makes a (B, V) float tensor, zero-padding mixed subjects.
"""

from .layout import NSDDataError, NSDMissingFileError, NSDPaths, subject_id
from .normalize import VoxelStats, voxel_stats
from .nsd import NSD, NSDConfig, load_nsd
from .simulate import SimNSDConfig, load_scenes, load_simnsd_config, noiseless_response, scene_features_of, simulate_nsd
from .stimuli import NSDStimuli
from .tensors import betas_tensor

__all__ = ["NSD", "NSDConfig", "NSDDataError", "NSDMissingFileError", "NSDPaths", "NSDStimuli", "SimNSDConfig",
           "VoxelStats", "betas_tensor", "load_nsd", "load_scenes", "load_simnsd_config", "noiseless_response", "scene_features_of",
           "simulate_nsd", "subject_id", "voxel_stats"]
