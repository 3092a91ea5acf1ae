"""Base-method decoders: ridge regression from betas to the feature targets of the base methods.

- ``RidgeDecoder``: cross-validated ridge (himalaya), a diffusers pipeline component (docs/decoders.md).
- ``LDMTargetExtractor`` (z, c), ``BrainDiffuserTargetExtractor`` (clip_text, clip_vision), ``extract_targets``.

Fitting a base's decoders on NSD (``recipes/fit_decoders.py``) is ``fgb2i_hf.drivers.fit.fit_decoders``.
"""

import importlib
import warnings

from .ridge import TAKAGI_ALPHAS, RidgeDecoder
from .targets import BrainDiffuserTargetExtractor, LDMTargetExtractor, TargetExtractor, extract_targets

__all__ = ["BrainDiffuserTargetExtractor", "LDMTargetExtractor", "RidgeDecoder", "TAKAGI_ALPHAS", "TargetExtractor",
           "extract_targets"]


def __getattr__(name):
    # Deprecated aliases (removed in the next release), resolved at attribute access so that this layer keeps no
    # import of the drivers above it.
    if name in ("FitDecodersConfig", "fit_decoders"):
        warnings.warn(f"fgb2i_hf.decoders.{name} moved to fgb2i_hf.drivers.fit.{name}; the old name will be removed "
                      "in the next release", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("fgb2i_hf.drivers.fit"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
