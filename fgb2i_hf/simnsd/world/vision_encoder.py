"""An open_clip ViT image tower as a transformers ``CLIPVisionModelWithProjection``, and its ``CLIPImageProcessor``.

Versatile Diffusion conditions its image stream on every token of OpenAI CLIP's image tower, run as a transformers
``CLIPVisionModelWithProjection``: ``visual_projection(post_layernorm(last_hidden_state))``, divided by the class
token's norm (diffusers' ``_encode_image_prompt``). The SimNSD world trains its CLIP with open_clip, so the world
Versatile Diffusion's image encoder is the world CLIP's ViT converted to that class:

    conv1                    -> vision_model.embeddings.patch_embedding   (no bias in either)
    class_embedding          -> vision_model.embeddings.class_embedding
    positional_embedding     -> vision_model.embeddings.position_embedding
    ln_pre                   -> vision_model.pre_layrnorm                 (transformers' spelling)
    transformer.resblocks.i  -> vision_model.encoder.layers.i             (as the text tower: ``text_encoder.py``)
    ln_post                  -> vision_model.post_layernorm
    proj                     -> visual_projection                         (transposed)

Both compute the same thing (pre-LN blocks, no mask, QuickGELU for OpenAI-style models): the HF model's
``visual_projection(post_layernorm(last_hidden_state))`` equals open_clip's ``ln_post(transformer(...)) @ proj`` over
all tokens (class token first), and its ``image_embeds`` equal ``encode_image``, to float rounding. Only the
class-token ViT converts (``pool_type='tok'``, LayerNorm before the blocks and after them, no attentional pooler).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from .text_encoder import check_resblocks, resblocks_state, uses_quick_gelu


def _open_clip_visual(model) -> nn.Module:
    """The ViT of an open_clip ``CLIP`` or a ``fgb2i_hf.clip.CLIPScorer``, checked to convert."""
    visual = getattr(getattr(model, "model", model), "visual", None)
    if visual is None:
        raise TypeError(f"expected an open_clip CLIP (or a CLIPScorer) with an image tower, got {type(model).__name__}")
    for name in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj"):
        if getattr(visual, name, None) is None:
            raise ValueError(f"the image tower ({type(visual).__name__}) has no {name!r}: only open_clip's "
                             "VisionTransformer with a projection converts to CLIPVisionModelWithProjection")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise ValueError("the image tower pools with an attentional pooler or by averaging; "
                         "CLIPVisionModelWithProjection pools the class token")
    if getattr(visual, "final_ln_after_pool", False):
        raise ValueError("final_ln_after_pool=True normalises after pooling; CLIPVisionModel normalises every token")
    if not isinstance(visual.ln_pre, nn.LayerNorm):
        raise ValueError("the image tower has no LayerNorm before its blocks (no_ln_pre=True); CLIPVisionModel has one")
    if visual.conv1.bias is not None:
        raise ValueError("a patch embedding with a bias does not convert (CLIPVisionModel's has none)")
    return visual


def open_clip_vision_config(model, quick_gelu: bool | None = None):
    """The ``CLIPVisionConfig`` describing ``model``'s ViT; raises for features ``CLIPVisionModel`` lacks."""
    visual = _open_clip_visual(model)
    blocks = list(visual.transformer.resblocks)
    first = check_resblocks(blocks, "image", "CLIPVisionModel")
    quick_gelu = uses_quick_gelu(first, quick_gelu, "image")
    image_size, patch_size = visual.image_size, visual.patch_size
    if image_size[0] != image_size[1] or patch_size[0] != patch_size[1]:
        raise ValueError(f"only square images and patches convert, got image {image_size}, patch {patch_size}")
    eps = {first.ln_1.eps, first.ln_2.eps, visual.ln_pre.eps, visual.ln_post.eps}
    if len(eps) != 1:
        raise ValueError(f"layer norms with different eps {sorted(eps)} cannot share CLIPVisionConfig.layer_norm_eps")
    width = visual.conv1.out_channels
    return CLIPVisionConfig(
        hidden_size=width, intermediate_size=first.mlp.c_fc.out_features, projection_dim=visual.proj.shape[1],
        num_hidden_layers=len(blocks), num_attention_heads=first.attn.num_heads, num_channels=3,
        image_size=image_size[0], patch_size=patch_size[0], hidden_act="quick_gelu" if quick_gelu else "gelu",
        layer_norm_eps=eps.pop(), attention_dropout=0.0, dropout=0.0,
    )


@torch.no_grad()
def convert_open_clip_vision_to_hf(model):
    """A transformers ``CLIPVisionModelWithProjection`` holding the weights of an open_clip CLIP's ViT; float32,
    eval mode. Every tensor of the HF model is set (a missing or left-over tensor is an error)."""
    visual = _open_clip_visual(model)
    config = open_clip_vision_config(model)
    hf = CLIPVisionModelWithProjection(config)
    prefix = "vision_model."
    state = {
        prefix + "embeddings.patch_embedding.weight": visual.conv1.weight,
        prefix + "embeddings.class_embedding": visual.class_embedding,
        prefix + "embeddings.position_embedding.weight": visual.positional_embedding,
        prefix + "pre_layrnorm.weight": visual.ln_pre.weight, prefix + "pre_layrnorm.bias": visual.ln_pre.bias,
        prefix + "post_layernorm.weight": visual.ln_post.weight, prefix + "post_layernorm.bias": visual.ln_post.bias,
        "visual_projection.weight": visual.proj.T,
        **resblocks_state(visual.transformer.resblocks, config.hidden_size, prefix + "encoder.layers."),
    }
    state = {k: v.detach().float().clone() for k, v in state.items()}
    expected = set(hf.state_dict()) - {name for name, _ in hf.named_buffers()}  # position_ids: a fixed arange
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise RuntimeError(f"conversion mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    for name, tensor in state.items():
        target = hf.get_parameter(name)
        if target.shape != tensor.shape:
            raise RuntimeError(f"conversion mismatch: {name} is {tuple(target.shape)}, got {tuple(tensor.shape)}")
        target.copy_(tensor)
    return hf.eval()


def world_clip_image_processor(scorer):
    """The ``CLIPImageProcessor`` that feeds a ``CLIPScorer``'s ViT as the scorer does: bicubic resize of the
    shortest edge and centre crop to its image size, its mean and std."""
    size = int(scorer.image_size)
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=[float(v) for v in scorer.mean.flatten()],
                              image_std=[float(v) for v in scorer.std.flatten()], resample=3)


def normalized_image_tokens(image_encoder, pixel_values: torch.Tensor) -> torch.Tensor:
    """Versatile Diffusion's image context (B, 1 + patches, projection_dim): projected post-LN tokens over the class
    token's norm (diffusers' ``_encode_image_prompt``, ``BrainDiffuserTargetExtractor``)."""
    hidden = image_encoder(pixel_values).last_hidden_state
    embeds = image_encoder.visual_projection(image_encoder.vision_model.post_layernorm(hidden))
    return embeds / embeds[:, :1].norm(dim=-1, keepdim=True)
