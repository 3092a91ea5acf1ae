"""Configuration of RenderSurrogate, the learned stand-in for rendering in FgB2I's image-image reward.

The image-image reward renders each sampled caption with a text-to-image model and compares the rendering's CLIP
image embedding with the stimulus'. The surrogate predicts that embedding from the caption's CLIP text embedding, so
most samples need no rendering. It is only valid for the renderer and the CLIP model it was fitted with: the config
records both (their identities and hashes), and ``fgb2i_hf.rewards.render_surrogate.load_render_surrogate`` refuses
a surrogate offered to another renderer or another CLIP.
"""

from __future__ import annotations

from transformers import PreTrainedConfig


class RenderSurrogateConfig(PreTrainedConfig):
    r"""
    Args:
        text_dim (`int`, defaults to 768):
            Width of the CLIP text embedding (the input; ViT-L/14: 768).
        image_dim (`int`, defaults to 768):
            Width of the CLIP image embedding (the output; ViT-L/14: 768).
        hidden_size (`int`, defaults to 1024):
            Width of the MLP's hidden layers.
        num_layers (`int`, defaults to 2):
            Hidden layers of the MLP that is added to a linear map (0: the linear map alone).
        renderer (`dict`, *optional*):
            The identity of the renderer whose renderings were fitted (``TextToImageRenderer.identity()``: settings,
            pipeline and scheduler, weights SHA-256).
        renderer_key (`str`, *optional*):
            The hash of ``renderer`` (``fgb2i_hf.rewards.rendering.identity_key``).
        clip (`dict`, *optional*):
            The CLIP model whose embeddings are the input and the target: ``{"name": ..., "weights_sha256": ...}``.
        fit (`dict`, *optional*):
            How it was fitted and how well: captions, epochs, held-out cosine and reward correlation.
    """

    model_type = "render_surrogate"

    def __init__(self, text_dim: int = 768, image_dim: int = 768, hidden_size: int = 1024, num_layers: int = 2,
                 renderer: dict | None = None, renderer_key: str | None = None, clip: dict | None = None,
                 fit: dict | None = None, **kwargs):
        for name, value, least in (("text_dim", text_dim, 1), ("image_dim", image_dim, 1),
                                   ("hidden_size", hidden_size, 1), ("num_layers", num_layers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"RenderSurrogateConfig.{name} must be an int >= {least}, got {value!r}")
        self.text_dim, self.image_dim = text_dim, image_dim
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.renderer, self.renderer_key, self.clip, self.fit = renderer, renderer_key, clip, fit
        super().__init__(**kwargs)
