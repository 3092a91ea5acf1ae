"""Convert MindEye1's released checkpoints (Hub dataset ``pscotti/naturalscenesdataset``, folder ``mindeye_models``;
see docs/mindeye.md) into a :class:`MindEyeModel` folder (safetensors + config.json).

    python -m fgb2i_hf.models.mindeye.convert_mindeye \\
        --prior prior_257_final_subj01_bimixco_softclip_byol/last.pth \\
        --low_level autoencoder_subj01_4x_locont_no_reconst/epoch120.pth --subject subj01 --output_dir mindeye_subj01

Inputs (read from MedARC-AI/fMRI-reconstruction-NSD at commit 6b30ea5; its code is not imported):

* the prior checkpoint: ``{"model_state_dict": BrainDiffusionPrior.state_dict(), ...}`` (Train_MindEye.py
  ``save_ckpt``): ``voxel2clip.*`` (``BrainNetwork``: ``lin0``, ``mlp.<i>``, ``lin1``, ``projector``), ``net.*``
  (``VersatileDiffusionPriorNetwork``: ``to_time_embeds``, ``learned_query``, ``null_brain_embeds``,
  ``null_image_embed``, ``causal_transformer.*``) and ``noise_scheduler.*`` (DALLE2's schedule buffers);
* optionally the low-level checkpoint: ``{"model_state_dict": Voxel2StableDiffusionModel.state_dict(), ...}``
  (train_autoencoder.py ``save_ckpt``): ``lin0``, ``mlp.<i>``, ``lin1``, ``norm``, ``upsampler.*`` (a diffusers 0.13
  ``Decoder``: its mid-block attention used ``query/key/value/proj_attn``, today's ``to_q/to_k/to_v/to_out.0``; both
  are read) and, in the released "locont" model, ``maps_projector.*``.

Every tensor is accounted for: mapped to a parameter (shape-checked), checked against what this implementation
computes (the rotary frequencies and the noise schedule, which are constants here), or, for ``maps_projector.*``
only, dropped as the training-only head of the ConvNeXt contrastive loss (listed in ``conversion.json``). Any
other key, a missing key or a wrong shape is an error naming the key.

Loading is safe: ``torch.load(weights_only=True)``; the prior's ``last.pth`` also pickles its OneCycleLR state, which
torch 2.0 saved with a bound method that the safe loader refuses, so for such files a restricted unpickler rebuilds
tensors only and replaces every other object by an inert placeholder (no class is imported, no code runs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re

import torch
from safetensors.torch import load_file

from ...core import publish_folder, scratch_folder
from .configuration_mindeye import MindEyeConfig
from .modeling_mindeye import MindEyeModel
from .prior import prior_scheduler

DROPPED_PREFIXES = ("maps_projector.",)  # low-level: the ConvNeXt-contrastive projector, unused at inference
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2", "p2_loss_weight")


class MindEyeConversionError(ValueError):
    """A checkpoint that does not have MindEye1's layout (the message names the key and what was expected)."""


# -- safe loading -----------------------------------------------------------------------------------------------
class _Inert:
    """Stands in for any non-tensor object of a checkpoint; takes any arguments and state, does nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


_TENSOR_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
                   ("torch._utils", "_rebuild_parameter"), ("collections", "OrderedDict")}


class _TensorOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _TENSOR_GLOBALS:
            return super().find_class(module, name)
        return _Inert


class _TensorOnlyPickle:
    """A ``pickle_module`` for ``torch.load`` whose unpickler rebuilds tensors and nothing else."""

    Unpickler = _TensorOnlyUnpickler

    @staticmethod
    def load(file, **kwargs):
        return _TensorOnlyUnpickler(file, **kwargs).load()


def load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The model state dict of a MindEye1 ``.pth`` (its ``model_state_dict``, or the file itself if it is a state
    dict) or of a ``.safetensors`` file, with DDP's ``module.`` prefixes removed."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MindEye checkpoint {path} does not exist")
    if path.endswith(".safetensors"):
        obj = load_file(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError:
            # a full training checkpoint (optimiser, argparse namespace...): weights_only refuses its other objects,
            # so unpickle with _TensorOnlyUnpickler, which resolves only torch's tensor-rebuild functions and
            # OrderedDict and turns every other global into an inert stand-in (nothing of the file is executed)
            obj = torch.load(path, map_location="cpu", weights_only=False, mmap=True, pickle_module=_TensorOnlyPickle)
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise MindEyeConversionError(f"{path}: expected a state dict of tensors (or a dict with 'model_state_dict'), "
                                     f"got {type(obj).__name__}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


# -- key mapping ------------------------------------------------------------------------------------------------
def _need(sd: dict, key: str, source: str) -> torch.Tensor:
    if key not in sd:
        raise MindEyeConversionError(f"{source}: missing key {key!r} (MindEye1 layout expected)")
    return sd[key]


def _count(sd: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m}
    if found and found != set(range(len(found))):
        raise MindEyeConversionError(f"non-contiguous indices for {pattern!r}: {sorted(found)}")
    return len(found)


def config_from_checkpoints(prior_sd: dict, low_sd: dict | None = None, subject: str = "subj01",
                            **overrides) -> MindEyeConfig:
    """The ``MindEyeConfig`` the official tensors describe (sizes read from shapes; ``overrides`` for what the
    weights cannot tell, e.g. ``low_level_norm_num_groups``, and dropouts)."""
    src = "prior checkpoint"
    h, voxels = _need(prior_sd, "voxel2clip.lin0.0.weight", src).shape
    dim = _need(prior_sd, "voxel2clip.projector.0.weight", src).shape[0]
    out = _need(prior_sd, "voxel2clip.lin1.weight", src).shape[0]
    if out % dim:
        raise MindEyeConversionError(f"{src}: voxel2clip.lin1.weight has {out} outputs, not a multiple of the CLIP "
                                     f"width {dim} (voxel2clip.projector.0.weight)")
    dim_head = _need(prior_sd, "net.causal_transformer.layers.0.0.null_kv", src).shape[1]
    kwargs = dict(
        voxel_counts={subject: int(voxels)}, clip_tokens=out // dim, clip_dim=int(dim), hidden_size=int(h),
        num_blocks=_count(prior_sd, r"voxel2clip\.mlp\.(\d+)\.0\.weight$"),
        projector_hidden_size=int(_need(prior_sd, "voxel2clip.projector.2.weight", src).shape[0]),
        prior_depth=_count(prior_sd, r"net\.causal_transformer\.layers\.(\d+)\.0\.to_q\.weight$"),
        prior_dim_head=int(dim_head),
        prior_heads=int(_need(prior_sd, "net.causal_transformer.layers.0.0.to_q.weight", src).shape[0] // dim_head),
        prior_ff_mult=int(_need(prior_sd, "net.causal_transformer.layers.0.1.1.weight", src).shape[0] // (2 * dim)),
        prior_rel_pos_buckets=int(_need(
            prior_sd, "net.causal_transformer.rel_pos_bias.relative_attention_bias.weight", src).shape[0]),
        prior_timesteps=int(_need(prior_sd, "noise_scheduler.betas", src).shape[0]),
        low_level=low_sd is not None)
    freqs = prior_sd.get("net.causal_transformer.layers.0.0.rotary_emb.freqs")
    if freqs is not None:
        kwargs["prior_rotary_dim"] = 2 * int(freqs.shape[0])
    if low_sd is not None:
        src = "low-level checkpoint"
        lh, lvox = _need(low_sd, "lin0.0.weight", src).shape
        if lvox != voxels:
            raise MindEyeConversionError(f"low-level checkpoint: lin0.0.weight reads {lvox} voxels, the prior "
                                         f"checkpoint {voxels}: both must be the same subject's")
        channels = _need(low_sd, "norm.weight", src).shape[0]
        grid = _need(low_sd, "lin1.weight", src).shape[0]
        side = math.isqrt(grid // channels)
        if side * side * channels != grid:
            raise MindEyeConversionError(f"low-level checkpoint: lin1.weight has {grid} outputs, not {channels} x a "
                                         "square (norm.weight's channels)")
        n_up = _count(low_sd, r"upsampler\.up_blocks\.(\d+)\.resnets\.0\.conv1\.weight$")
        widths = [int(_need(low_sd, f"upsampler.up_blocks.{i}.resnets.0.conv2.weight", src).shape[0])
                  for i in range(n_up)]
        kwargs.update(
            low_level_hidden_size=int(lh), low_level_num_blocks=_count(low_sd, r"mlp\.(\d+)\.0\.weight$"),
            low_level_channels=int(channels), low_level_side=side, low_level_block_out_channels=widths[::-1],
            low_level_layers_per_block=_count(low_sd, r"upsampler\.up_blocks\.0\.resnets\.(\d+)\.conv1\.weight$") - 1,
            latent_channels=int(_need(low_sd, "upsampler.conv_out.weight", src).shape[0]))
    kwargs.update(overrides)
    return MindEyeConfig(**kwargs)


def _backbone_rules(subject: str):
    return [(r"voxel2clip\.lin0\.0\.(weight|bias)$", rf"backbone.subject_proj.layers.{subject}.\1"),
            (r"voxel2clip\.lin0\.1\.(weight|bias)$", r"backbone.input_norm.\1"),
            (r"voxel2clip\.mlp\.(\d+)\.([01])\.(weight|bias)$", r"backbone.mlp.blocks.\1.\2.\3"),
            (r"voxel2clip\.lin1\.(weight|bias)$", r"backbone.to_tokens.\1"),
            (r"voxel2clip\.projector\.(\d+)\.(weight|bias)$", r"projector.\1.\2")]


PRIOR_RULES = [
    (r"net\.to_time_embeds\.0\.1\.net\.0\.0\.(weight|bias)$", r"prior.network.time_mlp.0.\1"),
    (r"net\.to_time_embeds\.0\.1\.net\.1\.0\.(weight|bias)$", r"prior.network.time_mlp.2.\1"),
    (r"net\.to_time_embeds\.0\.1\.net\.2\.(weight|bias)$", r"prior.network.time_mlp.4.\1"),
    (r"net\.learned_query$", "prior.network.position_embeds"),
    (r"net\.null_brain_embeds$", "prior.network.null_brain_embeds"),
    (r"net\.null_image_embed$", "prior.network.null_image_embeds"),
    (r"net\.causal_transformer\.rel_pos_bias\.relative_attention_bias\.weight$", "prior.network.transformer.rel_pos_bias.weight"),
    (r"net\.causal_transformer\.layers\.(\d+)\.0\.null_kv$", r"prior.network.transformer.layers.\1.attn.null_kv"),
    (r"net\.causal_transformer\.layers\.(\d+)\.0\.norm\.g$", r"prior.network.transformer.layers.\1.attn.norm.weight"),
    (r"net\.causal_transformer\.layers\.(\d+)\.0\.to_q\.weight$", r"prior.network.transformer.layers.\1.attn.to_q.weight"),
    (r"net\.causal_transformer\.layers\.(\d+)\.0\.to_kv\.weight$", r"prior.network.transformer.layers.\1.attn.to_kv.weight"),
    (r"net\.causal_transformer\.layers\.(\d+)\.0\.to_out\.0\.weight$", r"prior.network.transformer.layers.\1.attn.to_out.weight"),
    (r"net\.causal_transformer\.layers\.(\d+)\.0\.to_out\.1\.g$", r"prior.network.transformer.layers.\1.attn.out_norm.weight"),
    (r"net\.causal_transformer\.layers\.(\d+)\.1\.0\.g$", r"prior.network.transformer.layers.\1.ff.norm.weight"),
    (r"net\.causal_transformer\.layers\.(\d+)\.1\.1\.weight$", r"prior.network.transformer.layers.\1.ff.proj_in.weight"),
    (r"net\.causal_transformer\.layers\.(\d+)\.1\.5\.weight$", r"prior.network.transformer.layers.\1.ff.proj_out.weight"),
    (r"net\.causal_transformer\.norm\.g$", "prior.network.transformer.norm.weight"),
    (r"net\.causal_transformer\.project_out\.weight$", "prior.network.transformer.project_out.weight"),
]

_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _low_level_rules(subject: str):
    return [(r"lin0\.0\.weight$", rf"low_level.subject_proj.layers.{subject}.weight"),
            (r"lin0\.1\.(weight|bias)$", r"low_level.input_norm.\1"),
            (r"mlp\.(\d+)\.0\.weight$", r"low_level.mlp.blocks.\1.0.weight"),
            (r"mlp\.(\d+)\.1\.(weight|bias)$", r"low_level.mlp.blocks.\1.1.\2"),
            (r"lin1\.weight$", "low_level.to_grid.weight"),
            (r"norm\.(weight|bias)$", r"low_level.grid_norm.\1"),
            (r"upsampler\.(.*)\.attentions\.0\.(query|key|value|proj_attn)\.(weight|bias)$",
             lambda m: f"low_level.upsampler.{m.group(1)}.attentions.0.{_OLD_ATTENTION[m.group(2)]}.{m.group(3)}"),
            (r"upsampler\.(.*)$", r"low_level.upsampler.\1")]


def _apply_rules(sd: dict, rules, source: str, skip=()) -> tuple[dict, dict]:
    """Official key -> our key for every key of ``sd`` not in ``skip``; an unmatched key is an error."""
    mapped, names = {}, {}
    for key, tensor in sd.items():
        if key in skip:
            continue
        for pattern, target in rules:
            m = re.match(pattern, key)
            if m:
                ours = target(m) if callable(target) else m.expand(target)
                if ours in mapped:
                    raise MindEyeConversionError(f"{source}: keys {names[ours]!r} and {key!r} both map to {ours!r}")
                mapped[ours], names[ours] = tensor, key
                break
        else:
            raise MindEyeConversionError(f"{source}: unexpected key {key!r} (not part of MindEye1's layout)")
    return mapped, names


def _check_constants(prior_sd: dict, config: MindEyeConfig) -> list[str]:
    """The prior checkpoint's rotary frequencies and noise-schedule buffers equal what this implementation uses."""
    checked = []
    width = config.rotary_dim
    expected_freqs = 1.0 / (10000 ** (torch.arange(0, width, 2).float() / width))
    for key in [k for k in prior_sd if k.endswith(".rotary_emb.freqs")]:
        if not re.match(r"net\.causal_transformer\.layers\.\d+\.0\.rotary_emb\.freqs$", key):
            raise MindEyeConversionError(f"prior checkpoint: unexpected key {key!r}")
        if prior_sd[key].shape != expected_freqs.shape or not torch.allclose(prior_sd[key].float(), expected_freqs):
            raise MindEyeConversionError(f"prior checkpoint: {key} is not the rotary frequencies 10000^(-2i/{width}) "
                                         "this implementation uses")
        checked.append(key)
    scheduler = prior_scheduler(config.prior_timesteps)
    for name in SCHEDULE_BUFFERS:
        key = f"noise_scheduler.{name}"
        tensor = _need(prior_sd, key, "prior checkpoint")
        if tensor.shape != (config.prior_timesteps,):
            raise MindEyeConversionError(f"prior checkpoint: {key} has shape {tuple(tensor.shape)}, expected "
                                         f"({config.prior_timesteps},)")
        checked.append(key)
    for name, ours in (("betas", scheduler.betas), ("alphas_cumprod", scheduler.alphas_cumprod)):
        theirs = prior_sd[f"noise_scheduler.{name}"].float()
        if not torch.allclose(theirs, ours.float(), atol=1e-5, rtol=1e-4):
            raise MindEyeConversionError(f"prior checkpoint: noise_scheduler.{name} is not the cosine schedule of "
                                         f"{config.prior_timesteps} steps that the prior samples with")
    return checked


def convert_state_dicts(prior_sd: dict, low_sd: dict | None = None, subject: str = "subj01",
                        config: MindEyeConfig | None = None, **overrides) -> tuple[MindEyeModel, dict]:
    """Official state dicts -> (``MindEyeModel`` with their weights, conversion report)."""
    prior_sd = {k: v for k, v in prior_sd.items() if k != "_dummy"}
    config = config or config_from_checkpoints(prior_sd, low_sd, subject, **overrides)
    constants = [k for k in prior_sd if k.startswith("noise_scheduler.") or k.endswith(".rotary_emb.freqs")]
    checked = _check_constants(prior_sd, config)
    unknown_constants = sorted(set(constants) - set(checked))
    if unknown_constants:
        raise MindEyeConversionError(f"prior checkpoint: unexpected key {unknown_constants[0]!r}")
    mapped, names = _apply_rules(prior_sd, _backbone_rules(subject) + PRIOR_RULES, "prior checkpoint",
                                 skip=set(checked))
    dropped = []
    if low_sd is not None:
        dropped = sorted(k for k in low_sd if k.startswith(DROPPED_PREFIXES))
        low, low_names = _apply_rules(low_sd, _low_level_rules(subject), "low-level checkpoint", skip=set(dropped))
        mapped.update(low)
        names.update({k: f"low-level:{v}" for k, v in low_names.items()})
    model = MindEyeModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    if missing:
        raise MindEyeConversionError(f"no checkpoint tensor for {missing[0]!r}" +
                                     (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for ours, tensor in mapped.items():
        if ours not in expected:
            raise MindEyeConversionError(f"{names[ours]!r} maps to {ours!r}, which the model does not have")
        if tuple(tensor.shape) != tuple(expected[ours].shape):
            raise MindEyeConversionError(f"{names[ours]!r}: shape {tuple(tensor.shape)}, expected "
                                         f"{tuple(expected[ours].shape)} (for {ours})")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in mapped.items()}, strict=True)
    report = {"mapped": {names[k]: k for k in sorted(mapped)}, "checked_constants": checked,
              "dropped_training_only": dropped, "subject": subject}
    return model, report


def convert_mindeye(prior_path: str, output_dir: str, low_level_path: str | None = None, subject: str = "subj01",
                    **overrides) -> MindEyeModel:
    """Read the released files, convert, ``save_pretrained`` to ``output_dir`` (via a temporary folder) with
    ``conversion.json`` (sources and the key map)."""
    prior_sd = load_checkpoint(prior_path)
    low_sd = load_checkpoint(low_level_path) if low_level_path else None
    model, report = convert_state_dicts(prior_sd, low_sd, subject, **overrides)
    scratch = scratch_folder(output_dir)
    model.save_pretrained(scratch)
    with open(os.path.join(scratch, "conversion.json"), "w", encoding="utf-8") as f:  # inside the scratch folder
        json.dump({"sources": {"prior": os.path.abspath(prior_path),
                               "low_level": os.path.abspath(low_level_path) if low_level_path else None},
                   **report}, f, indent=1)
    publish_folder(scratch, output_dir)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description="Convert MindEye1's released checkpoints to a MindEyeModel folder.")
    parser.add_argument("--prior", required=True, help="prior_257_..._subj0X_.../last.pth (voxel2clip + prior)")
    parser.add_argument("--low_level", default=None, help="autoencoder_subj0X_4x_.../epoch120.pth (optional)")
    parser.add_argument("--subject", default="subj01", help="Subject name of the input layer (default subj01).")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    model = convert_mindeye(args.prior, args.output_dir, args.low_level, args.subject)
    print(f"wrote {args.output_dir}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"subject {args.subject}, low-level head: {model.low_level is not None}")


if __name__ == "__main__":
    main()
