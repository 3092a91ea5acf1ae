"""VDVAE's output distribution: a discretised mixture of logistics over 8-bit RGB (PixelCNN++).

Salimans et al. (2017), "PixelCNN++: Improving the PixelCNN with Discretized Logistic Mixture Likelihood and Other
Modifications" (arXiv 1701.05517), the output layer VDVAE uses (Child 2021). Per pixel, M
mixture components; each has a mean and a log-scale per channel and three coefficients that make the green mean
depend linearly on the red value and the blue mean on red and green. Values live in [-1, 1]; the 256 levels are
bins of width 2/255, the two end bins extend to -inf and +inf.

The parameter tensor ``params`` is ``(N, 10 M, H, W)``, channels laid out as the released VDVAE head writes them:
``[0, M)`` mixture logits, then for each colour channel c = 0, 1, 2 a run of 3 M values: M means, M log-scales,
M coefficient pre-activations (tanh). Channel c's coefficient slot holds: c = 0 -> red->green, c = 1 ->
red->blue, c = 2 -> green->blue.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MIN_LOG_SCALE = -7.0
HALF_BIN = 1.0 / 255.0


def split_params(params: torch.Tensor, num_mixtures: int):
    """``(logits (N, M, H, W), means, log_scales, coeffs)``, the last three ``(N, 3, M, H, W)``."""
    n, channels, h, w = params.shape
    m = int(num_mixtures)
    if channels != 10 * m:
        raise ValueError(f"expected {10 * m} parameter channels for {m} mixtures, got {channels}")
    logits = params[:, :m]
    rest = params[:, m:].reshape(n, 3, 3 * m, h, w)
    means = rest[:, :, :m]
    log_scales = rest[:, :, m:2 * m].clamp(min=MIN_LOG_SCALE)
    coeffs = torch.tanh(rest[:, :, 2 * m:])
    return logits, means, log_scales, coeffs


def _channel_means(means, coeffs, x0, x1):
    """Means of the three channels given the red and green values ``x0``, ``x1`` (broadcast over mixtures)."""
    return torch.stack([means[:, 0],
                        means[:, 1] + coeffs[:, 0] * x0,
                        means[:, 2] + coeffs[:, 1] * x0 + coeffs[:, 2] * x1], dim=1)


def negative_log_likelihood(params: torch.Tensor, target: torch.Tensor, num_mixtures: int) -> torch.Tensor:
    """Per-image negative log-likelihood in nats per sub-pixel: ``(N,)``.

    Args:
        params: ``(N, 10 M, H, W)``.
        target: ``(N, 3, H, W)`` 8-bit values scaled to [-1, 1] (``x / 127.5 - 1``).
    """
    logits, means, log_scales, coeffs = split_params(params, num_mixtures)
    x = target.unsqueeze(2)  # (N, 3, 1, H, W), broadcast over mixtures
    centred = x - _channel_means(means, coeffs, x[:, 0], x[:, 1])
    inv_scale = torch.exp(-log_scales)
    upper = inv_scale * (centred + HALF_BIN)
    lower = inv_scale * (centred - HALF_BIN)
    bin_mass = torch.sigmoid(upper) - torch.sigmoid(lower)
    log_cdf_upper = upper - F.softplus(upper)  # log sigmoid: the bin of -1 extends to -inf
    log_survival_lower = -F.softplus(lower)  # log (1 - sigmoid): the bin of +1 extends to +inf
    mid = inv_scale * centred
    # where the bin mass underflows, the density at the bin centre times the bin width
    log_density_mid = mid - log_scales - 2.0 * F.softplus(mid) - math.log(127.5)
    log_bin = torch.where(bin_mass > 1e-5, torch.log(bin_mass.clamp(min=1e-12)), log_density_mid)
    log_prob = torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_survival_lower, log_bin))
    log_prob = log_prob.sum(1) + torch.log_softmax(logits, dim=1)  # (N, M, H, W)
    per_pixel = torch.logsumexp(log_prob, dim=1)
    return -per_pixel.flatten(1).sum(1) / target[0].numel()


def _uniform(shape, generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform noise in (1e-5, 1 - 1e-5), drawn on the generator's device (one generator per row if a list)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([_uniform((1, *shape[1:]), g, like) for g in generator])
    device = generator.device if generator is not None else like.device
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return (u * (1 - 2e-5) + 1e-5).to(like.device, like.dtype)


def sample(params: torch.Tensor, num_mixtures: int, generator=None) -> torch.Tensor:
    """One draw per pixel, clipped to [-1, 1]: ``(N, 3, H, W)`` (not rounded to the 8-bit grid)."""
    logits, means, log_scales, coeffs = split_params(params, num_mixtures)
    n, m, h, w = logits.shape
    gumbel = -torch.log(-torch.log(_uniform(logits.shape, generator, logits)))
    pick = F.one_hot((logits + gumbel).argmax(1), m).permute(0, 3, 1, 2).unsqueeze(1).to(means.dtype)  # (N,1,M,H,W)
    mu, log_s, coef = ((t * pick).sum(2) for t in (means, log_scales, coeffs))  # (N, 3, H, W)
    u = _uniform(mu.shape, generator, mu)
    x = mu + torch.exp(log_s) * (torch.log(u) - torch.log1p(-u))
    x0 = x[:, 0].clamp(-1, 1)
    x1 = (x[:, 1] + coef[:, 0] * x0).clamp(-1, 1)
    x2 = (x[:, 2] + coef[:, 1] * x0 + coef[:, 2] * x1).clamp(-1, 1)
    return torch.stack([x0, x1, x2], 1)


def mean(params: torch.Tensor, num_mixtures: int) -> torch.Tensor:
    """The mean of the (unclipped, continuous) mixture, then clipped to [-1, 1]: ``(N, 3, H, W)``.

    Within a component the channel means chain as the sampler does (green's mean uses red's mean, ...); the
    components are then averaged with the softmax weights. Deterministic: what ``decode(output="mean")`` returns.
    """
    logits, means, _, coeffs = split_params(params, num_mixtures)
    m0 = means[:, 0]
    m1 = means[:, 1] + coeffs[:, 0] * m0
    m2 = means[:, 2] + coeffs[:, 1] * m0 + coeffs[:, 2] * m1
    weights = torch.softmax(logits, dim=1)
    return torch.stack([(weights * mc).sum(1) for mc in (m0, m1, m2)], 1).clamp(-1, 1)
