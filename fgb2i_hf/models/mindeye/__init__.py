"""MindEye (Scotti et al., NeurIPS 2023): fMRI -> CLIP image tokens (diffusion prior), retrieval embeddings and SD VAE
latents, as a transformers model (``MindEyeConfig``, ``MindEyeModel``); losses, retrieval metrics and a converter for
MindEye1's released checkpoints live beside it (``losses.py``, ``retrieval.py``, ``convert_mindeye.py``)."""

from .configuration_mindeye import MindEyeConfig
from .modeling_mindeye import MindEyeModel, MindEyeOutput

__all__ = ["MindEyeConfig", "MindEyeModel", "MindEyeOutput"]
