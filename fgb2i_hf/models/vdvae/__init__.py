"""VDVAE (Child 2021): the hierarchical VAE of Brain-Diffuser's low-level stage, as a diffusers model."""

from .configuration_vdvae import BRAIN_DIFFUSER_NUM_LAYERS, VDVAEArchitecture, parse_block_string
from .modeling_vdvae import VDVAEModel, VDVAEOutput

__all__ = ["BRAIN_DIFFUSER_NUM_LAYERS", "VDVAEArchitecture", "VDVAEModel", "VDVAEOutput", "parse_block_string"]
