"""Base-method decoders: ridge regression from betas to the feature targets of the base methods.

- ``RidgeDecoder``: cross-validated ridge (himalaya), a diffusers pipeline component (docs/decoders.md).
- ``LDMTargetExtractor`` (z, c), ``BrainDiffuserTargetExtractor`` (clip_text, clip_vision), ``extract_targets``.

Fitting a base's decoders on NSD (``recipes/fit_decoders.py``) is ``fgb2i_hf.drivers.fit.fit_decoders``.
"""

from ..core.deprecation import moved_names
from .ridge import TAKAGI_ALPHAS, RidgeDecoder
from .targets import BrainDiffuserTargetExtractor, LDMTargetExtractor, TargetExtractor, extract_targets

__all__ = ["BrainDiffuserTargetExtractor", "LDMTargetExtractor", "RidgeDecoder", "TAKAGI_ALPHAS", "TargetExtractor",
           "extract_targets"]

__getattr__ = moved_names(__name__, "fgb2i_hf.drivers.fit", ("FitDecodersConfig", "fit_decoders"))
