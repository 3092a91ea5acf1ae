"""Base-method decoders: ridge regression from betas to the feature targets of LDM and Brain-Diffuser.

- ``RidgeDecoder``: cross-validated ridge (himalaya), a diffusers pipeline component (docs/decoders.md).
- ``LDMTargetExtractor`` (z, c), ``BrainDiffuserTargetExtractor`` (clip_text, clip_vision), ``extract_targets``.
- ``FitDecodersConfig``, ``fit_decoders``: what ``recipes/fit_decoders.py`` runs.
"""

from .fit import FitDecodersConfig, fit_decoders
from .ridge import TAKAGI_ALPHAS, RidgeDecoder
from .targets import BrainDiffuserTargetExtractor, LDMTargetExtractor, TargetExtractor, extract_targets

__all__ = ["BrainDiffuserTargetExtractor", "FitDecodersConfig", "LDMTargetExtractor", "RidgeDecoder", "TAKAGI_ALPHAS",
           "TargetExtractor", "extract_targets", "fit_decoders"]
