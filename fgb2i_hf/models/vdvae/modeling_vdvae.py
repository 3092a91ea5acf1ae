"""VDVAE: a very deep hierarchical VAE (Child 2021, arXiv 2011.10650), as a diffusers ``ModelMixin``.

Reimplemented from the paper's description and the released hyperparameters, so that the released ImageNet-64
checkpoint converts onto it (``convert_vdvae.py``); Brain-Diffuser (Ozcelik & VanRullen 2023, "Natural scene
reconstruction from fMRI signals using generative latent diffusion") uses that model for its low-level
stage.

    images (N, 3, S, S) in [0, 1] --(x * 255 - pixel_mean) / pixel_std--> encoder: bottom-up residual blocks,
        activations kept at every resolution
    decoder: top-down blocks from 1 x 1 to S x S, one latent layer each. Block i at resolution R:
        x   = state[R] (learned initial state, or zeros) + nearest-upsampled state[mixin] (first channels)
        q   = posterior(concat(x, activations[R]))  -> mean, log-std   (zdim channels each)
        p   = prior(x)                              -> mean, log-std, and a residual for x
        z   ~ q (encoding / training) or given / ~ p at a temperature (decoding)
        state[R] = resnet(x + prior residual + z_proj(z))
    output: (state[S] * gain + bias) --1x1 conv--> discretised mixture of logistics (``mixture_of_logistics``)

Every residual block is a bottleneck (GELU before each conv: 1x1 down to ``width * bottleneck_multiple``, two
3x3 (1x1 at resolutions <= 2), 1x1 back up). The training loss is the negative ELBO in nats per dimension:
reconstruction NLL + the sum over layers of KL(q || p), analytic for the diagonal Gaussians.

Brain-Diffuser's use (scripts/vdvae_extract_features.py, vdvae_reconstruct_images.py): encode each stimulus (64 px)
and keep the ``z`` of the first 31 layers (a posterior *sample*, each layer conditioned on the previous samples);
regress them from fMRI; decode with those 31 layers fixed and the rest drawn from the prior at temperature 1,
then sample the output distribution. ``encode(latent_sampling="sample")`` and ``decode(output="sample")`` do that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from ...core import resolve_pretrained
from . import mixture_of_logistics as mol
from .configuration_vdvae import (BRAIN_DIFFUSER_NUM_LAYERS, BRAIN_DIFFUSER_OUTPUT, BRAIN_DIFFUSER_TEMPERATURE,
                                  IMAGENET64_DEC_BLOCKS, IMAGENET64_ENC_BLOCKS, IMAGENET64_PIXEL_MEAN,
                                  IMAGENET64_PIXEL_STD, VDVAEArchitecture)

LATENT_SAMPLING = ("mean", "sample")
OUTPUTS = ("sample", "mean")


@dataclass
class VDVAEOutput(BaseOutput):
    """``forward``'s result; every value is a mean over the batch, in nats per image dimension.

    Attributes:
        loss: the negative ELBO, ``distortion + rate``.
        distortion: reconstruction negative log-likelihood.
        rate: the summed KL of all latent layers, divided by the image dimensions.
        kl_per_layer: ``(num_layers,)`` each layer's KL in nats per image (not per dimension).
    """

    loss: torch.Tensor
    distortion: torch.Tensor
    rate: torch.Tensor
    kl_per_layer: torch.Tensor


def _gaussian_kl(mean_q, log_std_q, mean_p, log_std_p) -> torch.Tensor:
    """KL(N(mean_q, std_q^2) || N(mean_p, std_p^2)) per element, the stds given as logs."""
    return (log_std_p - log_std_q - 0.5
            + 0.5 * (torch.exp(2 * log_std_q) + (mean_q - mean_p) ** 2) * torch.exp(-2 * log_std_p))


def _normal(shape, generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (one generator per row if a list)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([_normal((1, *shape[1:]), g, like) for g in generator])
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(like.device, like.dtype)


class BottleneckBlock(nn.Module):
    """GELU -> 1x1 (in -> mid) -> GELU -> 3x3 -> GELU -> 3x3 -> GELU -> 1x1 (mid -> out); the two middle convs are
    1x1 when ``spatial`` is False. Optionally residual (in == out), then ``pool`` x ``pool`` average pooling."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, *, residual: bool, spatial: bool,
                 pool: int | None = None):
        super().__init__()
        k = 3 if spatial else 1
        self.residual, self.pool = residual, pool
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, k, padding=k // 2)
        self.conv3 = nn.Conv2d(mid_channels, mid_channels, k, padding=k // 2)
        self.conv4 = nn.Conv2d(mid_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            h = conv(F.gelu(h))
        out = x + h if self.residual else h
        return F.avg_pool2d(out, self.pool) if self.pool else out


class VDVAEEncoder(nn.Module):
    """Bottom-up: a 3x3 stem, then residual bottleneck blocks; returns the last activation at each resolution."""

    def __init__(self, arch: VDVAEArchitecture, image_channels: int, bottleneck_multiple: float):
        super().__init__()
        self.arch = arch
        self.conv_in = nn.Conv2d(image_channels, arch.width_at(arch.image_size), 3, padding=1)
        self.blocks = nn.ModuleList()
        for res, pool in arch.enc:
            w = arch.width_at(res)
            self.blocks.append(BottleneckBlock(w, int(w * bottleneck_multiple), w, residual=True, spatial=res > 2,
                                               pool=pool))

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = self.conv_in(x)
        activations = {x.shape[-1]: x}
        for block in self.blocks:
            x = block(x)
            width = self.arch.width_at(x.shape[-1])
            if x.shape[1] < width:  # a wider resolution below: zero channels appended
                x = F.pad(x, (0, 0, 0, 0, 0, width - x.shape[1]))
            activations[x.shape[-1]] = x
        return activations


class TopDownBlock(nn.Module):
    """One latent layer: posterior and prior heads, the latent's projection back to the state, a residual block."""

    def __init__(self, width: int, zdim: int, bottleneck_multiple: float, spatial: bool):
        super().__init__()
        mid = int(width * bottleneck_multiple)
        self.zdim = zdim
        self.posterior = BottleneckBlock(2 * width, mid, 2 * zdim, residual=False, spatial=spatial)
        self.prior = BottleneckBlock(width, mid, 2 * zdim + width, residual=False, spatial=spatial)
        self.z_proj = nn.Conv2d(zdim, width, 1)
        self.resnet = BottleneckBlock(width, mid, width, residual=True, spatial=spatial)

    def prior_params(self, x):
        """``(mean, log_std, state residual)`` of the prior given the state ``x``."""
        out = self.prior(x)
        return out[:, :self.zdim], out[:, self.zdim:2 * self.zdim], out[:, 2 * self.zdim:]

    def posterior_params(self, x, activation):
        """``(mean, log_std)`` of the posterior given the state and the encoder's activation at this resolution."""
        return self.posterior(torch.cat([x, activation], 1)).chunk(2, dim=1)


class VDVAEDecoder(nn.Module):
    """The top-down blocks, the learned initial states, and the output head (gain, bias, 1x1 conv)."""

    def __init__(self, arch: VDVAEArchitecture, bottleneck_multiple: float, no_bias_above: int, num_mixtures: int):
        super().__init__()
        self.arch = arch
        self.blocks = nn.ModuleList(TopDownBlock(arch.width_at(res), arch.zdim, bottleneck_multiple, res > 2)
                                    for res, _ in arch.dec)
        self.state_resolutions = [res for res in arch.resolutions if res <= no_bias_above]
        self.initial_states = nn.ParameterList(nn.Parameter(torch.zeros(1, arch.width_at(res), res, res))
                                               for res in self.state_resolutions)
        top = arch.width_at(arch.image_size)
        self.out_gain = nn.Parameter(torch.ones(1, top, 1, 1))
        self.out_bias = nn.Parameter(torch.zeros(1, top, 1, 1))
        self.out_conv = nn.Conv2d(top, 10 * num_mixtures, 1)


class VDVAEModel(ModelMixin, ConfigMixin):
    r"""A very deep VAE (Child 2021) over ``image_size`` RGB images; defaults: the ImageNet-64 model.

    Args:
        image_size: side of the (square) images, the last decoder resolution.
        image_channels: 3.
        width: channels of the residual stream (at every resolution without a ``custom_width_str`` entry; it
            must be the width at ``image_size``).
        zdim: channels of each latent layer.
        enc_blocks, dec_blocks: the block strings (``configuration_vdvae``).
        custom_width_str: ``"R:W,..."`` widths per resolution (the released FFHQ-1024 model uses it).
        bottleneck_multiple: bottleneck channels / residual channels.
        no_bias_above: resolutions up to this one start from a learned state, others from zeros.
        num_mixtures: components of the output distribution.
        pixel_mean, pixel_std: input normalisation on the 0-255 scale (the training data's statistics).
        num_target_layers: k, how many of the first latent layers are the Brain-Diffuser regression target
            (31 at ImageNet-64; ``encode``/``flatten_latents`` default to it).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, image_size: int = 64, image_channels: int = 3, width: int = 512, zdim: int = 16,
                 enc_blocks: str = IMAGENET64_ENC_BLOCKS, dec_blocks: str = IMAGENET64_DEC_BLOCKS,
                 custom_width_str: str = "", bottleneck_multiple: float = 0.25, no_bias_above: int = 64,
                 num_mixtures: int = 10, pixel_mean: float = IMAGENET64_PIXEL_MEAN,
                 pixel_std: float = IMAGENET64_PIXEL_STD, num_target_layers: int = BRAIN_DIFFUSER_NUM_LAYERS):
        super().__init__()
        arch = VDVAEArchitecture.from_config(image_size, width, zdim, enc_blocks, dec_blocks, custom_width_str)
        if arch.width_at(arch.image_size) != arch.width:
            raise ValueError(f"custom_width_str may not change the width at the image size {image_size}: the output "
                             f"head is {width} wide")
        if not 1 <= int(num_target_layers) <= arch.num_layers:
            raise ValueError(f"num_target_layers must be in 1..{arch.num_layers}, got {num_target_layers}")
        self.arch = arch
        self.encoder = VDVAEEncoder(arch, image_channels, bottleneck_multiple)
        self.decoder = VDVAEDecoder(arch, bottleneck_multiple, no_bias_above, num_mixtures)
        self._init_weights()

    def _init_weights(self):
        """VDVAE's initialisation (Child 2021): zero biases; the last conv of each residual block, and each
        latent projection, scaled by 1 / sqrt(number of blocks of its network); the prior's last conv zero, so an
        untrained prior is N(0, 1) and adds nothing to the state."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    module.bias.zero_()
            for block in self.encoder.blocks:
                block.conv4.weight.mul_(math.sqrt(1 / len(self.encoder.blocks)))
            scale = math.sqrt(1 / len(self.decoder.blocks))
            for block in self.decoder.blocks:
                block.prior.conv4.weight.zero_()
                block.z_proj.weight.mul_(scale)
                block.resnet.conv4.weight.mul_(scale)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """diffusers' loader; ``simnsd/vdvae`` names the VDVAE of the shipped SimNSD world."""
        return super().from_pretrained(resolve_pretrained(pretrained_model_name_or_path), *args, **kwargs)

    # -- shapes ------------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.arch.num_layers

    def latent_shapes(self, num_layers: int | None = None) -> list[tuple[int, int, int]]:
        """``(zdim, R, R)`` of each of the first ``num_layers`` latent layers (all by default)."""
        return self.arch.latent_shapes(num_layers)

    def flatten_latents(self, latents: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-layer latents ``[(N, zdim, R_i, R_i)] * k`` -> ``(N, D_k)``, layer after layer, each in C order
        (Brain-Diffuser's ``np.hstack`` of ``z.reshape(N, -1)``). k = 31 at ImageNet-64 gives D = 91,168."""
        shapes = self.latent_shapes(len(latents))
        for i, (z, shape) in enumerate(zip(latents, shapes)):
            if tuple(z.shape[1:]) != shape:
                raise ValueError(f"latent layer {i} must have shape (N, {', '.join(map(str, shape))}), got "
                                 f"{tuple(z.shape)}")
        return torch.cat([z.reshape(z.shape[0], -1) for z in latents], dim=1)

    def unflatten_latents(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``(N, D_k)`` -> the k per-layer latents (k found from D_k); the inverse of ``flatten_latents``."""
        flat = torch.as_tensor(flat)
        if flat.ndim != 2:
            raise ValueError(f"flattened latents must be (N, D), got shape {tuple(flat.shape)}")
        shapes = self.latent_shapes(self.arch.layers_for_size(flat.shape[1]))
        sizes = [math.prod(s) for s in shapes]
        return [part.reshape(flat.shape[0], *s) for part, s in zip(flat.split(sizes, dim=1), shapes)]

    # -- the passes --------------------------------------------------------------------------------------------
    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        images = torch.as_tensor(images)
        size = self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (self.config.image_channels, size, size):
            raise ValueError(f"images must be (N, {self.config.image_channels}, {size}, {size}) floats in [0, 1], "
                             f"got {tuple(images.shape)}")
        x = images.to(self.device, self.dtype)
        return (x * 255.0 - self.config.pixel_mean) / self.config.pixel_std

    def _top_down(self, batch_size: int, *, activations=None, latents=(), latent_sampling="mean", generator=None,
                  temperature: float = 1.0, stop_after: int | None = None):
        """Run the top-down blocks. With ``activations``: latents from the posterior (its mean or a sample). Without:
        the given ``latents`` for the first layers, then samples of the prior at ``temperature``.

        Returns ``(final state or None if stopped early, [z per layer], [KL per layer (N,) or None])``."""
        dec = self.decoder
        ref = dec.out_gain
        states = {res: s.expand(batch_size, -1, -1, -1) for res, s in zip(dec.state_resolutions, dec.initial_states)}
        zs, kls = [], []
        for i, (block, (res, mixin)) in enumerate(zip(dec.blocks, self.arch.dec)):
            x = states.get(res)
            if x is None:
                x = ref.new_zeros(batch_size, self.arch.width_at(res), res, res)
            if mixin is not None:
                x = x + F.interpolate(states[mixin][:, :x.shape[1]], scale_factor=res // mixin, mode="nearest")
            prior_mean, prior_log_std, residual = block.prior_params(x)
            kl = None
            if activations is not None:
                mean, log_std = block.posterior_params(x, activations[res])
                z = mean
                if latent_sampling == "sample":
                    z = mean + torch.exp(log_std) * _normal(mean.shape, generator, mean)
                kl = _gaussian_kl(mean, log_std, prior_mean, prior_log_std).flatten(1).sum(1)
            elif i < len(latents):
                z = latents[i].to(ref.device, ref.dtype)
            else:
                std = torch.exp(prior_log_std) * temperature
                z = prior_mean + std * _normal(prior_mean.shape, generator, prior_mean)
            states[res] = block.resnet(x + residual + block.z_proj(z))
            zs.append(z)
            kls.append(kl)
            if stop_after is not None and i + 1 >= stop_after:
                return None, zs, kls
        return states[self.arch.image_size], zs, kls

    def _output_params(self, state: torch.Tensor) -> torch.Tensor:
        dec = self.decoder
        return dec.out_conv(state * dec.out_gain + dec.out_bias)

    def forward(self, images: torch.Tensor, generator=None) -> VDVAEOutput:
        """The negative ELBO of ``images`` ``(N, 3, S, S)`` in [0, 1] (8-bit values), posterior samples drawn with
        ``generator``. Returns a :class:`VDVAEOutput` (nats per dimension)."""
        x = self._normalise(images)
        target = torch.as_tensor(images).to(x.device, x.dtype) * 2.0 - 1.0
        state, _, kls = self._top_down(x.shape[0], activations=self.encoder(x), latent_sampling="sample",
                                       generator=generator)
        distortion = mol.negative_log_likelihood(self._output_params(state), target, self.config.num_mixtures)
        kl = torch.stack(kls, 1)  # (N, layers)
        rate = kl.sum(1) / target[0].numel()
        return VDVAEOutput(loss=(distortion + rate).mean(), distortion=distortion.mean(), rate=rate.mean(),
                           kl_per_layer=kl.mean(0))

    @torch.no_grad()
    def encode(self, images: torch.Tensor, *, num_layers: int | None = None, latent_sampling: str = "mean",
               generator=None) -> list[torch.Tensor]:
        """Latents of the first ``num_layers`` layers (default ``config.num_target_layers``).

        Args:
            images: ``(N, 3, S, S)`` in [0, 1].
            latent_sampling: ``"mean"``: each layer's posterior mean, every later layer conditioned on those means;
                ``"sample"``: a posterior sample per layer, later layers conditioned on the samples (what
                Brain-Diffuser stores: ``stats[i]["z"]`` of the released model's ``forward_get_latents``).
            generator: a ``torch.Generator`` (or one per image) for ``"sample"``.

        Returns:
            ``[(N, zdim, R_i, R_i)]`` for i < num_layers; ImageNet-64, k = 31: 2 x 1 x 1, 4 x 4 x 4, 8 x 8 x 8,
            16 x 16 x 16, 1 x 32 x 32 (times zdim = 16 channels).
        """
        if latent_sampling not in LATENT_SAMPLING:
            raise ValueError(f"latent_sampling must be one of {LATENT_SAMPLING}, got {latent_sampling!r}")
        k = self.config.num_target_layers if num_layers is None else int(num_layers)
        self.latent_shapes(k)  # checks the range
        x = self._normalise(images)
        _, zs, _ = self._top_down(x.shape[0], activations=self.encoder(x), latent_sampling=latent_sampling,
                                  generator=generator, stop_after=k)
        return zs[:k]

    @torch.no_grad()
    def decode(self, latents, *, generator=None, temperature: float = BRAIN_DIFFUSER_TEMPERATURE,
               output: str = BRAIN_DIFFUSER_OUTPUT) -> torch.Tensor:
        """Images ``(N, 3, S, S)`` in [0, 1] from the latents of the first k layers; the other layers are drawn from
        the prior, each conditioned on the layers above.

        Args:
            latents: ``[(N, zdim, R_i, R_i)] * k`` or their flattened ``(N, D_k)`` (``flatten_latents``), k >= 1.
            generator: a ``torch.Generator`` (or one per image) for the prior and output samples.
            temperature: the prior's standard deviation is multiplied by this (Brain-Diffuser: 1, the released
                model's ``t=None``).
            output: ``"sample"`` draws each pixel from the output distribution (Brain-Diffuser's
                ``out_net.sample``); ``"mean"`` returns its mean (deterministic given all latents).
        """
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if torch.is_tensor(latents) and latents.ndim == 2:
            latents = self.unflatten_latents(latents)
        latents = list(latents)
        if not latents:
            raise ValueError("decode needs the latents of at least the first layer (sample() draws them all)")
        self.flatten_latents(latents)  # checks the shapes
        return self._decode(latents[0].shape[0], latents, generator, temperature, output)

    @torch.no_grad()
    def sample(self, batch_size: int, *, generator=None, temperature: float = BRAIN_DIFFUSER_TEMPERATURE,
               output: str = BRAIN_DIFFUSER_OUTPUT):
        """Unconditional samples ``(batch_size, 3, S, S)`` in [0, 1]: every layer drawn from the prior."""
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        return self._decode(int(batch_size), [], generator, temperature, output)

    def _decode(self, batch_size, latents, generator, temperature, output):
        state, _, _ = self._top_down(batch_size, latents=latents, generator=generator, temperature=float(temperature))
        params = self._output_params(state)
        n = self.config.num_mixtures
        x = mol.sample(params, n, generator) if output == "sample" else mol.mean(params, n)
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, *, num_layers: int | None = None, generator=None,
                    temperature: float = BRAIN_DIFFUSER_TEMPERATURE, output: str = "mean") -> torch.Tensor:
        """``decode(encode(images, num_layers))`` with posterior means; all layers by default."""
        k = self.num_layers if num_layers is None else num_layers
        return self.decode(self.encode(images, num_layers=k), generator=generator, temperature=temperature,
                           output=output)
