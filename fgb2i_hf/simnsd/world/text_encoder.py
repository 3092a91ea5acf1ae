"""An open_clip text tower as a transformers ``CLIPTextModel``, and the matching offline ``CLIPTokenizer``.

Stable Diffusion conditions its UNet on the last hidden state of OpenAI CLIP's text transformer (77 x 768), run
as a transformers ``CLIPTextModel``. The SimNSD world trains its CLIP with open_clip, so its diffusion model's
text encoder is the world CLIP's text tower converted to that class:

    token_embedding          -> text_model.embeddings.token_embedding
    positional_embedding     -> text_model.embeddings.position_embedding
    transformer.resblocks.i  -> text_model.encoder.layers.i   (ln_1/ln_2 -> layer_norm1/2; attn.in_proj split
                                                                 into q/k/v_proj; attn.out_proj; mlp.c_fc/c_proj
                                                                 -> mlp.fc1/fc2)
    ln_final                 -> text_model.final_layer_norm
    text_projection          -> text_projection (``CLIPTextModelWithProjection`` only; transposed)

(transformers 5 names ``CLIPTextModel``'s parameters without the ``text_model.`` prefix of SD checkpoints.)

Both run the same computation (pre-LN blocks, causal mask, QuickGELU for OpenAI-style models), so the HF
model's ``last_hidden_state`` equals open_clip's token features (``ln_final`` output) to float rounding.

Padding. open_clip pads token ids with 0 (the token "!"); transformers' ``CLIPTokenizer`` pads with
``<|endoftext|>`` (49407) by default. The padded positions' hidden states are part of SD's conditioning (the UNet
attends to all positions), so the world tokenizer pads with "!" (id 0), as Stable Diffusion 2's tokenizer does:
its ids are then identical to open_clip's, and the text encoder sees at inference what it saw in training.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from fgb2i_hf.clip import openai_clip_tokenizer as clip_tokenizer

PAD_TOKEN = "!"  # id 0 in CLIP's BPE vocabulary: open_clip's padding


def world_clip_tokenizer(context_length: int = 77):
    """OpenAI CLIP's BPE as a ``CLIPTokenizer`` (offline, from open_clip's bundled vocabulary), padding with "!"
    (id 0) and ``model_max_length=context_length``: ``tok(texts, padding="max_length", truncation=True)`` gives
    the same ids as ``open_clip.tokenizer.SimpleTokenizer(context_length)(texts)``."""
    tokenizer = clip_tokenizer(model_max_length=context_length)
    tokenizer.pad_token = PAD_TOKEN
    if tokenizer.pad_token_id != 0:
        raise RuntimeError(f"expected {PAD_TOKEN!r} to be token 0 of CLIP's vocabulary, got {tokenizer.pad_token_id}")
    return tokenizer


def _open_clip_model(model) -> nn.Module:
    """Accept an open_clip ``CLIP`` or a ``fgb2i_hf.clip.CLIPScorer`` wrapping one."""
    model = getattr(model, "model", model)
    for name in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
        if not hasattr(model, name):
            raise TypeError(f"expected an open_clip CLIP with a built-in text tower (no {name!r} on "
                            f"{type(model).__name__}); CustomTextCLIP / HF text towers are not supported")
    return model


def check_resblocks(blocks, tower: str, target: str):
    """The first of an open_clip tower's blocks, after checking that they convert to a transformers CLIP layer."""
    # imported here: open_clip is a heavy import, needed only on this path
    from open_clip.transformer import ResidualAttentionBlock

    first = blocks[0]
    if not isinstance(first, ResidualAttentionBlock):
        raise ValueError(f"{tower} blocks are {type(first).__name__}: only open_clip's default ResidualAttentionBlock "
                         f"(no qk-norm, scaled cosine attention or extra norms) converts to {target}")
    if not isinstance(first.ls_1, nn.Identity) or hasattr(first, "ln_1_kv"):
        raise ValueError(f"{tower} blocks with layer scale or cross-attention do not convert to {target}")
    return first


def uses_quick_gelu(block, quick_gelu: bool | None, tower: str) -> bool:
    """Whether a block's MLP uses QuickGELU (checked against ``quick_gelu`` when given)."""
    # imported here: open_clip is a heavy import, needed only on this path
    from open_clip.transformer import QuickGELU

    act = block.mlp.gelu
    if quick_gelu is not None and quick_gelu != isinstance(act, QuickGELU):
        raise ValueError(f"quick_gelu={quick_gelu} but the {tower} tower uses {type(act).__name__}")
    return isinstance(act, QuickGELU)


def resblocks_state(blocks, width: int, prefix: str) -> dict:
    """transformers ``CLIPEncoderLayer`` tensors of open_clip residual attention blocks, layer ``i`` under
    ``f"{prefix}{i}."``: ln_1/ln_2 -> layer_norm1/2, attn.in_proj split into q/k/v_proj, attn.out_proj,
    mlp.c_fc/c_proj -> mlp.fc1/fc2."""
    state = {}
    for i, block in enumerate(blocks):
        layer = f"{prefix}{i}."
        q, k, v = block.attn.in_proj_weight.split(width)
        qb, kb, vb = block.attn.in_proj_bias.split(width)
        state.update({
            layer + "layer_norm1.weight": block.ln_1.weight, layer + "layer_norm1.bias": block.ln_1.bias,
            layer + "self_attn.q_proj.weight": q, layer + "self_attn.q_proj.bias": qb,
            layer + "self_attn.k_proj.weight": k, layer + "self_attn.k_proj.bias": kb,
            layer + "self_attn.v_proj.weight": v, layer + "self_attn.v_proj.bias": vb,
            layer + "self_attn.out_proj.weight": block.attn.out_proj.weight,
            layer + "self_attn.out_proj.bias": block.attn.out_proj.bias,
            layer + "layer_norm2.weight": block.ln_2.weight, layer + "layer_norm2.bias": block.ln_2.bias,
            layer + "mlp.fc1.weight": block.mlp.c_fc.weight, layer + "mlp.fc1.bias": block.mlp.c_fc.bias,
            layer + "mlp.fc2.weight": block.mlp.c_proj.weight, layer + "mlp.fc2.bias": block.mlp.c_proj.bias,
        })
    return state


def open_clip_text_config(model, quick_gelu: bool | None = None, with_projection: bool = False):
    """The ``CLIPTextConfig`` describing ``model``'s text tower; raises for features CLIPTextModel lacks."""
    model = _open_clip_model(model)
    blocks = list(model.transformer.resblocks)
    first = check_resblocks(blocks, "text", "CLIPTextModel")
    if getattr(model, "attn_mask", None) is None:
        raise ValueError("the text tower has no causal mask (no_causal_mask=True); CLIPTextModel is causal")
    if getattr(model, "text_pool_type", "argmax") not in ("argmax", "eos"):
        raise ValueError(f"text pooling {model.text_pool_type!r}: CLIPTextModel pools at the end-of-text token")
    quick_gelu = uses_quick_gelu(first, quick_gelu, "text")
    width = model.token_embedding.weight.shape[1]
    eps = {first.ln_1.eps, first.ln_2.eps, model.ln_final.eps}
    if len(eps) != 1:
        raise ValueError(f"layer norms with different eps {sorted(eps)} cannot share CLIPTextConfig.layer_norm_eps")
    projection = model.text_projection
    projection_dim = (projection.out_features if isinstance(projection, nn.Linear)
                      else projection.shape[1] if projection is not None else width)
    if with_projection and isinstance(projection, nn.Linear) and projection.bias is not None:
        raise ValueError("a text projection with a bias does not convert (CLIPTextModelWithProjection has none)")
    return CLIPTextConfig(
        vocab_size=model.token_embedding.weight.shape[0], hidden_size=width,
        intermediate_size=first.mlp.c_fc.out_features, projection_dim=projection_dim,
        num_hidden_layers=len(blocks), num_attention_heads=first.attn.num_heads,
        max_position_embeddings=model.positional_embedding.shape[0],
        hidden_act="quick_gelu" if quick_gelu else "gelu", layer_norm_eps=eps.pop(),
        attention_dropout=0.0, dropout=0.0, bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    )


@torch.no_grad()
def convert_open_clip_text_to_hf(model, with_projection: bool = False):
    """A transformers ``CLIPTextModel`` (``CLIPTextModelWithProjection`` with ``with_projection``) holding the
    weights of an open_clip CLIP's text tower; float32, eval mode.

    ``hf(ids).last_hidden_state`` equals :func:`open_clip_token_features` of the same ids, and (with projection)
    ``hf(ids).text_embeds`` equals ``model.encode_text(ids)`` when each sequence has one end-of-text token.
    """
    model = _open_clip_model(model)
    config = open_clip_text_config(model, with_projection=with_projection)
    hf = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    width = config.hidden_size
    state = {
        "embeddings.token_embedding.weight": model.token_embedding.weight,
        "embeddings.position_embedding.weight": model.positional_embedding,
        "final_layer_norm.weight": model.ln_final.weight,
        "final_layer_norm.bias": model.ln_final.bias,
    }
    state.update(resblocks_state(model.transformer.resblocks, width, "encoder.layers."))
    state = {k: v.detach().float().clone() for k, v in state.items()}
    # transformers 5: CLIPTextModel holds the text transformer's modules itself, the projection model wraps it
    transformer = hf.text_model if with_projection else hf
    expected = set(transformer.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise RuntimeError(f"conversion mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    transformer.load_state_dict(state, strict=True)
    if with_projection:
        projection = model.text_projection
        hf.text_projection.weight.copy_(projection.weight if isinstance(projection, nn.Linear) else projection.T)
    return hf.eval()


@torch.no_grad()
def open_clip_token_features(model, ids: torch.Tensor) -> torch.Tensor:
    """open_clip's per-token text features (B, L, width): token + positional embedding, the causal transformer,
    ``ln_final`` — what SD calls the text encoder's last hidden state (hf-gotchas §9)."""
    model = _open_clip_model(model)
    x = model.token_embedding(ids) + model.positional_embedding[: ids.shape[1]]
    x = model.transformer(x, attn_mask=model.attn_mask[: ids.shape[1], : ids.shape[1]])
    return model.ln_final(x)
