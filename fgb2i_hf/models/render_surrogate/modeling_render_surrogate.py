"""RenderSurrogate: CLIP text embedding of a caption -> predicted CLIP image embedding of its rendering.

A linear map plus an MLP (LayerNorm, ``num_layers`` x (Linear, GELU), Linear) whose last layer starts at zero, so the
untrained model is the linear map; the output is L2-normalised, as CLIP embeddings are. Fitted with a cosine loss
by ``fgb2i_hf.rewards.render_surrogate.fit_render_surrogate``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration_render_surrogate import RenderSurrogateConfig


class RenderSurrogate(PreTrainedModel):
    config_class = RenderSurrogateConfig
    base_model_prefix = "render_surrogate"
    main_input_name = "text_embeds"

    def __init__(self, config: RenderSurrogateConfig):
        super().__init__(config)
        self.linear = nn.Linear(config.text_dim, config.image_dim)
        self.mlp = None
        if config.num_layers:
            layers: list[nn.Module] = [nn.LayerNorm(config.text_dim)]
            width = config.text_dim
            for _ in range(config.num_layers):
                layers += [nn.Linear(width, config.hidden_size), nn.GELU()]
                width = config.hidden_size
            layers.append(nn.Linear(width, config.image_dim))
            self.mlp = nn.Sequential(*layers)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            if self.mlp is not None and module is self.mlp[-1]:
                init.zeros_(module.weight)
                init.zeros_(module.bias)
            else:  # PyTorch's own nn.Linear initialisation
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                init.uniform_(module.bias, -1 / math.sqrt(module.in_features), 1 / math.sqrt(module.in_features))
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def forward(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """text_embeds (N, text_dim) -> predicted image embeddings (N, image_dim), unit vectors."""
        if text_embeds.ndim != 2 or text_embeds.shape[1] != self.config.text_dim:
            raise ValueError(f"text_embeds must be (N, {self.config.text_dim}), got {tuple(text_embeds.shape)}")
        x = text_embeds.to(self.linear.weight.dtype)
        out = self.linear(x)
        if self.mlp is not None:
            out = out + self.mlp(x)
        return F.normalize(out, dim=-1)
