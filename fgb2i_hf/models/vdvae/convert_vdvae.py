"""Convert a released VDVAE checkpoint (openai/vdvae, a plain PyTorch state dict) to a ``VDVAEModel`` folder.

    python -m fgb2i_hf.models.vdvae.convert_vdvae --checkpoint imagenet64-iter-1600000-model-ema.th \\
        --output_dir vdvae-imagenet64

The checkpoint is read with ``torch.load(..., weights_only=True)`` (tensors only, no pickled code). Every tensor
must map onto a parameter of the model built from the config (default: ImageNet-64, the model Brain-Diffuser
uses), with the same shape, and every parameter must be filled: anything else stops the conversion with the
offending key named. The folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) is written to a
scratch name and renamed into place. How to obtain the checkpoint: docs/vdvae.md.

Names, released -> ours (the released module layout: ``encoder.in_conv``, ``encoder.enc_blocks.<i>.c1..c4``,
``decoder.dec_blocks.<i>.{enc,prior,resnet}.c1..c4`` and ``.z_proj``, ``decoder.bias_xs.<j>``, ``decoder.gain``,
``decoder.bias``, ``decoder.out_net.out_conv``) are the table ``NAME_MAP``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from ...core import publish_folder, scratch_folder
from .modeling_vdvae import VDVAEModel

# (released name, our name); {i} a block index, {c} a conv of a bottleneck block, {p} weight or bias
NAME_MAP = (
    ("encoder.in_conv.{p}", "encoder.conv_in.{p}"),
    ("encoder.enc_blocks.{i}.c{c}.{p}", "encoder.blocks.{i}.conv{c}.{p}"),
    ("decoder.dec_blocks.{i}.enc.c{c}.{p}", "decoder.blocks.{i}.posterior.conv{c}.{p}"),
    ("decoder.dec_blocks.{i}.prior.c{c}.{p}", "decoder.blocks.{i}.prior.conv{c}.{p}"),
    ("decoder.dec_blocks.{i}.resnet.c{c}.{p}", "decoder.blocks.{i}.resnet.conv{c}.{p}"),
    ("decoder.dec_blocks.{i}.z_proj.{p}", "decoder.blocks.{i}.z_proj.{p}"),
    ("decoder.bias_xs.{i}", "decoder.initial_states.{i}"),
    ("decoder.gain", "decoder.out_gain"),
    ("decoder.bias", "decoder.out_bias"),
    ("decoder.out_net.out_conv.{p}", "decoder.out_conv.{p}"),
)
_FIELDS = {"i": r"\d+", "c": "[1-4]", "p": "weight|bias"}
DDP_PREFIX = "module."  # the non-EMA checkpoints were saved from DistributedDataParallel


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w)\}", template)
    regex = "".join(re.escape(part) if n % 2 == 0 else f"(?P<{part}>{_FIELDS[part]})" for n, part in enumerate(parts))
    return re.compile(f"^{regex}$")


_RULES = [(_pattern(released), ours, _pattern(ours), released) for released, ours in NAME_MAP]


def to_our_name(released_name: str) -> str | None:
    """Our parameter name for a released one (None if no rule matches)."""
    for pattern, template, _, _ in _RULES:
        match = pattern.match(released_name)
        if match:
            return template.format(**match.groupdict())
    return None


def to_released_name(our_name: str) -> str | None:
    """The released name of one of our parameters (None if no rule matches)."""
    for _, _, pattern, template in _RULES:
        match = pattern.match(our_name)
        if match:
            return template.format(**match.groupdict())
    return None


def _expected_shapes(config: dict) -> dict[str, torch.Size]:
    with torch.device("meta"):  # shapes only: no memory for the weights
        model = VDVAEModel(**config)
    return {name: t.shape for name, t in model.state_dict().items()}


def _listing(keys, limit=5) -> str:
    keys = sorted(keys)
    return ", ".join(repr(k) for k in keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def convert_state_dict(released: dict, config: dict | None = None) -> dict[str, torch.Tensor]:
    """Released-name state dict -> our names, checked against the model the ``VDVAEModel`` config describes.

    Raises ``KeyError`` naming unexpected and missing keys (released names) and ``ValueError`` naming a key whose
    shape differs from the model's; every released tensor is used exactly once.
    """
    config = dict(config or {})
    if released and all(k.startswith(DDP_PREFIX) for k in released):
        released = {k[len(DDP_PREFIX):]: v for k, v in released.items()}
    expected = _expected_shapes(config)
    ours, unexpected = {}, []
    for name, tensor in released.items():
        target = to_our_name(name)
        if target is None or target not in expected:
            unexpected.append(name)
            continue
        if not torch.is_tensor(tensor):
            raise ValueError(f"checkpoint entry {name!r} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != tuple(expected[target]):
            raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}; the model of this config "
                             f"expects {tuple(expected[target])} (for {target!r})")
        ours[target] = tensor
    if unexpected:
        raise KeyError(f"unexpected key(s) in the checkpoint, not part of this VDVAE config: {_listing(unexpected)}")
    missing = [to_released_name(k) or k for k in expected if k not in ours]
    if missing:
        raise KeyError(f"missing key(s) in the checkpoint: {_listing(missing)}")
    return ours


def to_released_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict under the released names (the inverse of ``convert_state_dict``)."""
    out = {}
    for name, tensor in state_dict.items():
        released = to_released_name(name)
        if released is None:
            raise KeyError(f"{name!r} has no released name")
        out[released] = tensor
    return out


def load_released_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """A released ``*.th`` state dict, tensors only (``weights_only=True``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no VDVAE checkpoint at {path} (see docs/vdvae.md for the download links)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got a {type(state).__name__}")
    return state


def convert_checkpoint(checkpoint: str, output_dir: str, config: dict | None = None,
                       dtype: torch.dtype = torch.float32) -> VDVAEModel:
    """Convert ``checkpoint`` into a ``VDVAEModel`` saved at ``output_dir`` (replaced whole if it exists)."""
    weights = convert_state_dict(load_released_checkpoint(checkpoint), config)
    with torch.device("meta"):
        model = VDVAEModel(**(config or {}))
    model.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=True, assign=True)
    scratch = scratch_folder(output_dir)
    model.save_pretrained(scratch)
    publish_folder(scratch, output_dir)
    return model.eval()


@dataclass
class ConvertVDVAEArguments:
    """``python -m fgb2i_hf.models.vdvae.convert_vdvae``."""

    checkpoint: str = field(metadata={"help": "The released state dict, e.g. imagenet64-iter-1600000-model-ema.th."})
    output_dir: str = field(metadata={"help": "Where to write the VDVAEModel folder."})
    config: str | None = field(default=None, metadata={
        "help": "JSON file of VDVAEModel config values overriding the ImageNet-64 defaults (other released models)."})
    dtype: str = field(default="float32", metadata={"help": "Stored dtype.", "choices": ["float32", "float16"]})


def main(argv=None):
    (args,) = HfArgumentParser(ConvertVDVAEArguments).parse_args_into_dataclasses(argv)
    config = None
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            config = json.load(f)
    model = convert_checkpoint(args.checkpoint, args.output_dir, config, getattr(torch, args.dtype))
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {args.checkpoint} -> {args.output_dir}: {n:,} parameters, {model.num_layers} latent layers")
    return model


if __name__ == "__main__":
    main()
