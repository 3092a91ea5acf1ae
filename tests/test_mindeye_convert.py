"""The converter from MindEye1's released checkpoints, on state dicts built here with the official key names and
shapes at small width. The official layout below is written from MedARC-AI/fMRI-reconstruction-NSD (src/models.py:
BrainNetwork, VersatileDiffusionPriorNetwork, FlaggedCausalTransformer, Voxel2StableDiffusionModel) and DALLE2-pytorch
1.14.2 (Attention, FeedForward, MLP, NoiseScheduler); the official code is not imported."""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from fgb2i_hf.models.mindeye import MindEyeModel
from fgb2i_hf.models.mindeye.convert_mindeye import (MindEyeConversionError, convert_mindeye, convert_state_dicts,
                                                     load_checkpoint)

V, H, BLOCKS, T, D, P = 20, 16, 2, 5, 12, 10  # voxels, hidden, residual blocks, tokens, CLIP width, projector width
DEPTH, HEADS, DIM_HEAD, FF, STEPS, ROT = 2, 3, 4, 4, 10, 4
LH, LBLOCKS, C, S, WIDTHS, GROUPS, M = 8, 1, 8, 2, [8, 8, 16], 4, 6  # low-level sizes; M: maps_projector width


def _rand(gen, *shape):
    return torch.randn(*shape, generator=gen) * 0.2


def dalle2_schedule_buffers(steps):
    """DALLE2 NoiseScheduler(beta_schedule='cosine', loss_type='l2') buffers, from its published definitions."""
    x = torch.linspace(0, steps, steps + 1, dtype=torch.float64)
    abar = torch.cos(((x / steps) + 0.008) / 1.008 * math.pi * 0.5) ** 2
    abar = abar / abar[0]
    betas = torch.clip(1 - abar[1:] / abar[:-1], 0, 0.999)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
    post_var = betas * (1 - prev) / (1 - alphas_cumprod)
    buffers = {"betas": betas, "alphas_cumprod": alphas_cumprod, "alphas_cumprod_prev": prev,
               "sqrt_alphas_cumprod": alphas_cumprod.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
               "log_one_minus_alphas_cumprod": (1 - alphas_cumprod).log(),
               "sqrt_recip_alphas_cumprod": (1 / alphas_cumprod).sqrt(),
               "sqrt_recipm1_alphas_cumprod": (1 / alphas_cumprod - 1).sqrt(), "posterior_variance": post_var,
               "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
               "posterior_mean_coef1": betas * prev.sqrt() / (1 - alphas_cumprod),
               "posterior_mean_coef2": (1 - prev) * (1 - betas).sqrt() / (1 - alphas_cumprod),
               "p2_loss_weight": torch.ones(steps, dtype=torch.float64)}
    return {f"noise_scheduler.{k}": v.float() for k, v in buffers.items()}


def official_prior_state_dict(seed=0):
    """BrainDiffusionPrior(net=VersatileDiffusionPriorNetwork(pos_emb), voxel2clip=BrainNetwork(use_projector))."""
    g = torch.Generator().manual_seed(seed)
    sd = {"voxel2clip.lin0.0.weight": _rand(g, H, V), "voxel2clip.lin0.0.bias": _rand(g, H),  # Linear(V, h)
          "voxel2clip.lin0.1.weight": 1 + _rand(g, H), "voxel2clip.lin0.1.bias": _rand(g, H)}  # LayerNorm(h)
    for i in range(BLOCKS):  # mlp[i] = Sequential(Linear(h, h), LayerNorm(h), GELU, Dropout)
        sd.update({f"voxel2clip.mlp.{i}.0.weight": _rand(g, H, H), f"voxel2clip.mlp.{i}.0.bias": _rand(g, H),
                   f"voxel2clip.mlp.{i}.1.weight": 1 + _rand(g, H), f"voxel2clip.mlp.{i}.1.bias": _rand(g, H)})
    sd.update({"voxel2clip.lin1.weight": _rand(g, T * D, H), "voxel2clip.lin1.bias": _rand(g, T * D)})
    # projector = Sequential(LN(D), GELU, Linear(D, P), LN(P), GELU, Linear(P, P), LN(P), GELU, Linear(P, D))
    for i, (out, inp) in {0: (D, None), 2: (P, D), 3: (P, None), 5: (P, P), 6: (P, None), 8: (D, P)}.items():
        sd[f"voxel2clip.projector.{i}.weight"] = _rand(g, out, inp) if inp else 1 + _rand(g, out)
        sd[f"voxel2clip.projector.{i}.bias"] = _rand(g, out)
    # to_time_embeds = Sequential(Sequential(SinusoidalPosEmb(D), MLP(D, D)), Rearrange); MLP: expansion 2, depth 2
    mlp = "net.to_time_embeds.0.1.net"
    sd.update({f"{mlp}.0.0.weight": _rand(g, 2 * D, D), f"{mlp}.0.0.bias": _rand(g, 2 * D),
               f"{mlp}.1.0.weight": _rand(g, 2 * D, 2 * D), f"{mlp}.1.0.bias": _rand(g, 2 * D),
               f"{mlp}.2.weight": _rand(g, D, 2 * D), f"{mlp}.2.bias": _rand(g, D)})
    sd.update({"net.learned_query": _rand(g, T, D), "net.null_brain_embeds": _rand(g, T, D),
               "net.null_image_embed": _rand(g, T, D),
               "net.causal_transformer.rel_pos_bias.relative_attention_bias.weight": _rand(g, 32, HEADS),
               "net.causal_transformer.norm.g": 1 + _rand(g, D),
               "net.causal_transformer.project_out.weight": _rand(g, D, D)})
    freqs = 1.0 / (10000 ** (torch.arange(0, ROT, 2).float() / ROT))  # RotaryEmbedding(dim=min(32, dim_head))
    for i in range(DEPTH):
        a, f = f"net.causal_transformer.layers.{i}.0", f"net.causal_transformer.layers.{i}.1"
        sd.update({f"{a}.null_kv": _rand(g, 2, DIM_HEAD), f"{a}.norm.g": 1 + _rand(g, D),
                   f"{a}.to_q.weight": _rand(g, HEADS * DIM_HEAD, D), f"{a}.to_kv.weight": _rand(g, 2 * DIM_HEAD, D),
                   f"{a}.to_out.0.weight": _rand(g, D, HEADS * DIM_HEAD), f"{a}.to_out.1.g": 1 + _rand(g, D),
                   f"{a}.rotary_emb.freqs": freqs.clone(),
                   # FeedForward = Sequential(LayerNorm, Linear(D, 2 * FF * D), SwiGLU, Identity, Dropout, Linear)
                   f"{f}.0.g": 1 + _rand(g, D), f"{f}.1.weight": _rand(g, 2 * FF * D, D),
                   f"{f}.5.weight": _rand(g, D, FF * D)})
    sd.update(dalle2_schedule_buffers(STEPS))
    return sd


def official_low_level_state_dict(seed=1):
    """Voxel2StableDiffusionModel(ups_mode='4x', use_cont=True) with a diffusers-0.13 Decoder (old attention names)."""
    from diffusers.models.autoencoders.vae import Decoder

    g = torch.Generator().manual_seed(seed)
    sd = {"lin0.0.weight": _rand(g, LH, V), "lin0.1.weight": 1 + _rand(g, LH), "lin0.1.bias": _rand(g, LH)}
    for i in range(LBLOCKS):
        sd.update({f"mlp.{i}.0.weight": _rand(g, LH, LH), f"mlp.{i}.1.weight": 1 + _rand(g, LH),
                   f"mlp.{i}.1.bias": _rand(g, LH)})
    sd.update({"lin1.weight": _rand(g, C * S * S, LH), "norm.weight": 1 + _rand(g, C), "norm.bias": _rand(g, C)})
    torch.manual_seed(seed)
    decoder = Decoder(in_channels=C, out_channels=4, up_block_types=("UpDecoderBlock2D",) * len(WIDTHS),
                      block_out_channels=tuple(WIDTHS), layers_per_block=1, norm_num_groups=GROUPS)
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    for key, value in decoder.state_dict().items():
        for new, name in old.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{name}.")
        sd[f"upsampler.{key}"] = value + _rand(g, *value.shape)
    sd.update({"maps_projector.0.weight": _rand(g, M, C, 1, 1), "maps_projector.1.weight": _rand(g, M),
               "maps_projector.1.bias": _rand(g, M), "maps_projector.3.weight": _rand(g, M, M, 1, 1),
               "maps_projector.4.weight": _rand(g, M), "maps_projector.4.bias": _rand(g, M),
               "maps_projector.6.weight": _rand(g, M, M, 1, 1), "maps_projector.6.bias": _rand(g, M)})
    return sd


def reference_voxel2clip(sd, x):
    """BrainNetwork.forward (eval) on the official tensors."""
    p = "voxel2clip."
    x = F.linear(x, sd[p + "lin0.0.weight"], sd[p + "lin0.0.bias"])
    x = F.gelu(F.layer_norm(x, (H,), sd[p + "lin0.1.weight"], sd[p + "lin0.1.bias"]))
    for i in range(BLOCKS):
        y = F.linear(x, sd[f"{p}mlp.{i}.0.weight"], sd[f"{p}mlp.{i}.0.bias"])
        x = x + F.gelu(F.layer_norm(y, (H,), sd[f"{p}mlp.{i}.1.weight"], sd[f"{p}mlp.{i}.1.bias"]))
    tokens = F.linear(x, sd[p + "lin1.weight"], sd[p + "lin1.bias"]).view(-1, T, D)
    y = tokens
    for ln, lin, width in ((0, 2, D), (3, 5, P), (6, 8, P)):
        y = F.gelu(F.layer_norm(y, (width,), sd[f"{p}projector.{ln}.weight"], sd[f"{p}projector.{ln}.bias"]))
        y = F.linear(y, sd[f"{p}projector.{lin}.weight"], sd[f"{p}projector.{lin}.bias"])
    return tokens, y


def reference_low_level(sd, x):
    """Voxel2StableDiffusionModel.forward (eval) on the official tensors; the upsampler is a diffusers Decoder."""
    from diffusers.models.autoencoders.vae import Decoder

    x = F.silu(F.layer_norm(F.linear(x, sd["lin0.0.weight"]), (LH,), sd["lin0.1.weight"], sd["lin0.1.bias"]))
    for i in range(LBLOCKS):
        y = F.layer_norm(F.linear(x, sd[f"mlp.{i}.0.weight"]), (LH,), sd[f"mlp.{i}.1.weight"], sd[f"mlp.{i}.1.bias"])
        x = x + F.silu(y)
    grid = F.group_norm(F.linear(x, sd["lin1.weight"]).view(-1, C, S, S), 1, sd["norm.weight"], sd["norm.bias"])
    decoder = Decoder(in_channels=C, out_channels=4, up_block_types=("UpDecoderBlock2D",) * len(WIDTHS),
                      block_out_channels=tuple(WIDTHS), layers_per_block=1, norm_num_groups=GROUPS).eval()
    new = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
    state = {}
    for key, value in sd.items():
        if key.startswith("upsampler."):
            key = key[len("upsampler."):]
            for name, renamed in new.items():
                key = key.replace(f"attentions.0.{name}.", f"attentions.0.{renamed}.")
            state[key] = value
    decoder.load_state_dict(state)
    return decoder(grid)


@pytest.fixture(scope="module")
def official():
    return official_prior_state_dict(), official_low_level_state_dict()


def test_every_tensor_lands_where_it_belongs(official):
    prior_sd, low_sd = official
    model, report = convert_state_dicts(prior_sd, low_sd, "subj07", low_level_norm_num_groups=GROUPS)
    c = model.config
    assert (c.voxel_counts, c.clip_tokens, c.clip_dim, c.hidden_size, c.num_blocks) == ({"subj07": V}, T, D, H, BLOCKS)
    assert (c.prior_depth, c.prior_heads, c.prior_dim_head, c.prior_ff_mult, c.prior_timesteps) == (
        DEPTH, HEADS, DIM_HEAD, FF, STEPS)
    assert (c.low_level_channels, c.low_level_side, c.low_level_block_out_channels) == (C, S, WIDTHS)
    ours = model.state_dict()
    for official_key, key in report["mapped"].items():
        source = low_sd[official_key.split(":", 1)[1]] if official_key.startswith("low-level:") else prior_sd[official_key]
        assert torch.equal(ours[key], source), official_key
    accounted = len(report["mapped"]) + len(report["checked_constants"]) + len(report["dropped_training_only"])
    assert accounted == len(prior_sd) + len(low_sd)  # every tensor used, checked or (maps_projector) dropped
    assert report["dropped_training_only"] == sorted(k for k in low_sd if k.startswith("maps_projector."))
    assert set(report["mapped"].values()) == set(ours)


def test_converted_model_computes_what_the_official_modules_compute(official):
    prior_sd, low_sd = official
    model, _ = convert_state_dicts(prior_sd, low_sd, "subj01", low_level_norm_num_groups=GROUPS)
    model.eval()
    x = torch.randn(3, V, generator=torch.Generator().manual_seed(5))
    tokens, projected = reference_voxel2clip(prior_sd, x)
    backbone, retrieval = model.encode(x, "subj01")
    # same operations, reordered by module boundaries: float32 tolerance
    torch.testing.assert_close(backbone, tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(retrieval, projected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model.blurry_latents(x, "subj01"), reference_low_level(low_sd, x),
                                   atol=1e-4, rtol=1e-4)
    sample = model.generate_embeddings(x, "subj01", generator=torch.Generator().manual_seed(0))
    assert sample.shape == (3, T, D) and torch.isfinite(sample).all()


class _Recorder:
    """Unpickling this object appends to CALLS: a loader that ran pickled code would show it."""

    def __reduce__(self):
        return (_record_call, ("unpickled",))


CALLS = []


def _record_call(tag):
    CALLS.append(tag)
    return tag


def test_files_round_trip_and_refuse_to_run_pickled_code(official, tmp_path):
    prior_sd, low_sd = official
    prior_path, low_path = tmp_path / "last.pth", tmp_path / "epoch120.pth"
    # Train_MindEye.save_ckpt also pickles its OneCycleLR state, whose torch-2.0 'anneal_func' is a bound method
    torch.save({"epoch": 239, "model_state_dict": prior_sd, "lr_scheduler": {"anneal_func": _Recorder()},
                "train_losses": [1.0, 0.5]}, prior_path)
    torch.save({"epoch": 119, "model_state_dict": {f"module.{k}": v for k, v in low_sd.items()}}, low_path)
    with pytest.raises(Exception):
        torch.load(prior_path, weights_only=True)  # the safe loader refuses it ...
    loaded = load_checkpoint(str(prior_path))  # ... and ours rebuilds only the tensors
    assert CALLS == [] and loaded.keys() == prior_sd.keys()
    assert all(torch.equal(loaded[k], v) for k, v in prior_sd.items())
    assert load_checkpoint(str(low_path)).keys() == low_sd.keys()  # DDP's "module." prefix removed

    out = tmp_path / "converted"
    model = convert_mindeye(str(prior_path), str(out), str(low_path), subject="subj01",
                            low_level_norm_num_groups=GROUPS)
    assert CALLS == []
    assert {"config.json", "model.safetensors", "conversion.json"} <= set(os.listdir(out))
    reloaded = MindEyeModel.from_pretrained(out)
    for k, v in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v), k


@pytest.mark.parametrize("damage, message", [
    (lambda p, l: p.pop("voxel2clip.lin1.bias"), "no checkpoint tensor for 'backbone.to_tokens.bias'"),
    (lambda p, l: p.__setitem__("voxel2clip.extra.weight", torch.zeros(2)), "unexpected key 'voxel2clip.extra.weight'"),
    (lambda p, l: p.__setitem__("voxel2clip.projector.8.bias", torch.zeros(D + 1)),
     r"'voxel2clip.projector.8.bias': shape \(13,\), expected \(12,\)"),
    (lambda p, l: p.__setitem__("noise_scheduler.betas", torch.linspace(1e-4, 0.02, STEPS)),
     "noise_scheduler.betas is not the cosine schedule"),
    (lambda p, l: p.__setitem__("net.causal_transformer.layers.1.0.rotary_emb.freqs", torch.ones(ROT // 2)),
     "layers.1.0.rotary_emb.freqs is not the rotary frequencies"),
    (lambda p, l: l.__setitem__("lin0.0.weight", torch.zeros(LH, V + 3)), "both must be the same subject's"),
    (lambda p, l: l.__setitem__("upsampler.conv_in.extra", torch.zeros(1)), "no tensor|unexpected|model does not have"),
])
def test_bad_checkpoints_name_the_key(official, damage, message):
    prior_sd, low_sd = dict(official[0]), dict(official[1])
    damage(prior_sd, low_sd)
    with pytest.raises(MindEyeConversionError, match=message):
        convert_state_dicts(prior_sd, low_sd, "subj01", low_level_norm_num_groups=GROUPS)


def test_not_a_mindeye_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(MindEyeConversionError, match="missing key 'voxel2clip.lin0.0.weight'"):
        convert_state_dicts(load_checkpoint(str(path)))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(MindEyeConversionError, match="expected a state dict of tensors"):
        load_checkpoint(str(tmp_path / "list.pth"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pth"))
