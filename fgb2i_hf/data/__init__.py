"""NSD data: the SimNSD simulator, NSD file readers, the ``datasets`` builder and the stimulus store."""

from .layout import NSDDataError, NSDMissingFileError, NSDPaths, subject_id
from .simulate import SimNSDConfig, load_scenes, load_simnsd_config, noiseless_response, scene_features_of, simulate_nsd
