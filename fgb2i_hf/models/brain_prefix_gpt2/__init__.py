"""BrainPrefixGPT2: the brain-to-text model (voxels -> ClipCap-style mapper -> GPT-2 prefix)."""

from .configuration_brain_prefix_gpt2 import BrainPrefixGPT2Config
from .modeling_brain_prefix_gpt2 import BrainPrefixGPT2, decode_captions

__all__ = ["BrainPrefixGPT2", "BrainPrefixGPT2Config", "decode_captions"]
