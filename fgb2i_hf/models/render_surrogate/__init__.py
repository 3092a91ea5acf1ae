"""RenderSurrogate: predicts the CLIP image embedding of a caption's rendering from the caption's CLIP text embedding."""

from .configuration_render_surrogate import RenderSurrogateConfig
from .modeling_render_surrogate import RenderSurrogate

__all__ = ["RenderSurrogate", "RenderSurrogateConfig"]
