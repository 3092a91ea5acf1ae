"""Base-method decoders: ridge regression from betas to the feature targets of LDM and Brain-Diffuser."""

from .ridge import TAKAGI_ALPHAS, RidgeDecoder

__all__ = ["RidgeDecoder", "TAKAGI_ALPHAS"]
