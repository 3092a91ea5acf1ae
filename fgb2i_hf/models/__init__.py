"""Model classes of fgb2i_hf, one folder per model in transformers' layout."""

from .brain_prefix_gpt2 import BrainPrefixGPT2, BrainPrefixGPT2Config
from .render_surrogate import RenderSurrogate, RenderSurrogateConfig

__all__ = ["BrainPrefixGPT2", "BrainPrefixGPT2Config", "RenderSurrogate", "RenderSurrogateConfig"]
