"""MindEye's diffusion prior: brain tokens (B, T, D) -> CLIP image tokens (B, T, D).

Reimplemented from MindEye1's description (Scotti et al. 2023, the diffusion prior of the high-level pipeline) and
its released structure (MedARC-AI/fMRI-reconstruction-NSD ``src/models.py``: ``VersatileDiffusionPriorNetwork``,
``FlaggedCausalTransformer``; the ``DiffusionPrior`` of lucidrains' DALLE2-pytorch 1.14.2), module for module, so
MindEye1's released weights load (``convert_mindeye.py``):

* the denoiser reads ``[brain tokens (T); time token (1); noisy image tokens + learned positions (T)]`` and its last
  T outputs are the predicted clean image tokens x0 (``learned_query_mode="pos_emb"``);
* a non-causal pre-norm transformer: multi-query attention (one shared key/value head) with cosine-similarity
  logits times 16, a learned null key/value, rotary embeddings on the first ``rotary_dim`` query/key features and a
  T5-style relative position bias; a SwiGLU feed-forward; bias-free LayerNorms; a final "stable" LayerNorm and
  projection;
* training: x0 = target * sqrt(D) is noised at a uniform timestep of a 100-step cosine schedule and the MSE to x0 is
  the loss; with probability 0.2 each, the brain tokens and (independently) the noisy image tokens are replaced by
  learned null tokens (classifier-free guidance dropout).

Why written here and not ``dalle2-pytorch``: that package pins a dozen libraries (x-clip, coca-pytorch, kornia,
resize-right, an old pydantic...) for the few hundred lines MindEye uses, and it is no longer maintained. The noise
schedule and ancestral sampling are diffusers' ``DDPMScheduler`` (``squaredcos_cap_v2`` = DALLE2's cosine schedule,
``prediction_type="sample"``, ``variance_type="fixed_small"`` = DALLE2's clipped posterior variance), so only the
network is ours.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def prior_scheduler(num_train_timesteps: int):
    """DALLE2's prior diffusion as a diffusers scheduler: cosine betas (capped at 0.999), x0 prediction, no clipping,
    posterior variance as the sampling variance."""
    # imported here: diffusers is a heavy import, needed only on this path
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type="sample", clip_sample=False, variance_type="fixed_small")


class PriorLayerNorm(nn.Module):
    """LayerNorm without bias (DALLE2); ``stable`` first divides by the row's max (detached), as its output norm."""

    def __init__(self, dim: int, stable: bool = False):
        super().__init__()
        self.stable = stable
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        if self.stable:
            x = x / x.amax(dim=-1, keepdim=True).detach()
        var, mean = torch.var_mean(x, dim=-1, unbiased=False, keepdim=True)
        return (x - mean) * (var + eps).rsqrt() * self.weight


def rotate_interleaved(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on the first ``angles.shape[-1]`` features of x (..., n, d), in adjacent pairs."""
    width = angles.shape[-1]
    x_rot, x_pass = x[..., :width], x[..., width:]
    x1, x2 = x_rot.unflatten(-1, (-1, 2)).unbind(-1)
    turned = torch.stack((-x2, x1), dim=-1).flatten(-2)
    return torch.cat([x_rot * angles.cos() + turned * angles.sin(), x_pass], dim=-1)


def relative_position_buckets(n_queries: int, n_keys: int, num_buckets: int, max_distance: int, device) -> torch.Tensor:
    """T5-style buckets of (query - key), clamped at 0: keys after (or at) the query share bucket 0 (DALLE2's
    ``RelPosBias``, built for causal attention and used unchanged by MindEye's non-causal prior)."""
    q = torch.arange(n_queries, device=device)[:, None]
    k = torch.arange(n_keys, device=device)[None, :]
    n = (q - k).clamp(min=0)
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(n.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return torch.where(n < max_exact, n, large)


class PriorAttention(nn.Module):
    """Pre-norm multi-query attention: ``heads`` queries, one key/value head, a learned null key/value, cosine logits."""

    def __init__(self, dim: int, heads: int, dim_head: int, cosine_sim_scale: float):
        super().__init__()
        self.heads, self.dim_head, self.scale = heads, dim_head, cosine_sim_scale
        self.norm = PriorLayerNorm(dim)
        self.null_kv = nn.Parameter(torch.empty(2, dim_head))
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.out_norm = PriorLayerNorm(dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """x (B, N, dim), bias (heads, N, N + 1), angles (N, rotary_dim) -> (B, N, dim)."""
        b, n, _ = x.shape
        x = self.norm(x)
        q = self.to_q(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q, k = rotate_interleaved(q, angles), rotate_interleaved(k, angles)
        null_k, null_v = (t.expand(b, 1, self.dim_head) for t in self.null_kv.unbind(0))
        k = F.normalize(torch.cat([null_k, k], dim=1), dim=-1)
        v = torch.cat([null_v, v], dim=1)
        q = F.normalize(q, dim=-1)
        expand = (b, self.heads, n + 1, self.dim_head)
        out = F.scaled_dot_product_attention(q, k[:, None].expand(expand), v[:, None].expand(expand),
                                             attn_mask=bias.to(q.dtype), scale=self.scale)
        return self.out_norm(self.to_out(out.transpose(1, 2).reshape(b, n, -1)))


class PriorFeedForward(nn.Module):
    """Pre-norm SwiGLU MLP of width ``mult * dim`` (no biases)."""

    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.norm = PriorLayerNorm(dim)
        self.proj_in = nn.Linear(dim, 2 * mult * dim, bias=False)
        self.proj_out = nn.Linear(mult * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        return self.proj_out(h * F.silu(gate))


class PriorLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn = PriorAttention(config.clip_dim, config.prior_heads, config.prior_dim_head,
                                   config.prior_cosine_sim_scale)
        self.ff = PriorFeedForward(config.clip_dim, config.prior_ff_mult)

    def forward(self, x, bias, angles):
        x = x + self.attn(x, bias, angles)
        return x + self.ff(x)


class PriorTransformer(nn.Module):
    """Layers -> stable LayerNorm -> projection; shared relative position bias and rotary angles."""

    def __init__(self, config):
        super().__init__()
        self.num_buckets, self.max_distance = config.prior_rel_pos_buckets, config.prior_rel_pos_max_distance
        self.rel_pos_bias = nn.Embedding(config.prior_rel_pos_buckets, config.prior_heads)
        self.layers = nn.ModuleList(PriorLayer(config) for _ in range(config.prior_depth))
        self.norm = PriorLayerNorm(config.clip_dim, stable=True)
        self.project_out = nn.Linear(config.clip_dim, config.clip_dim, bias=False)
        width = config.rotary_dim
        inv_freq = 1.0 / (10000 ** (torch.arange(0, width, 2).float() / width))
        self.register_buffer("rotary_inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        buckets = relative_position_buckets(n, n + 1, self.num_buckets, self.max_distance, x.device)
        bias = self.rel_pos_bias(buckets).permute(2, 0, 1)  # (heads, n, n + 1)
        positions = torch.arange(n, device=x.device, dtype=self.rotary_inv_freq.dtype)
        angles = torch.outer(positions, self.rotary_inv_freq).repeat_interleave(2, dim=-1).to(x.dtype)
        for layer in self.layers:
            x = layer(x, bias, angles)
        return self.project_out(self.norm(x))


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) float timesteps -> (B, dim): [sin, cos] of t at frequencies 10000^(-i/(dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=t.dtype) * -(math.log(10000) / (half - 1)))
    angles = t[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class MindEyePriorNetwork(nn.Module):
    """The denoiser: (noisy image tokens (B, T, D), timesteps (B,), brain tokens (B, T, D)) -> x0 (B, T, D)."""

    def __init__(self, config):
        super().__init__()
        t, d = config.clip_tokens, config.clip_dim
        self.dim = d
        self.time_mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.SiLU(), nn.Linear(2 * d, 2 * d), nn.SiLU(),
                                      nn.Linear(2 * d, d))
        self.position_embeds = nn.Parameter(torch.empty(t, d))
        self.null_brain_embeds = nn.Parameter(torch.empty(t, d))
        self.null_image_embeds = nn.Parameter(torch.empty(t, d))
        self.transformer = PriorTransformer(config)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, brain: torch.Tensor,
                brain_drop_prob: float = 0.0, image_drop_prob: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        b, t, _ = noisy.shape
        if brain_drop_prob > 0:
            drop = torch.rand(b, generator=generator, device=brain.device) < brain_drop_prob
            brain = torch.where(drop[:, None, None], self.null_brain_embeds.to(brain.dtype), brain)
        if image_drop_prob > 0:
            drop = torch.rand(b, generator=generator, device=noisy.device) < image_drop_prob
            noisy = torch.where(drop[:, None, None], self.null_image_embeds.to(noisy.dtype), noisy)
        time = self.time_mlp(sinusoidal_embedding(timesteps.float(), self.dim)).to(noisy.dtype)
        tokens = torch.cat([brain, time[:, None], noisy + self.position_embeds], dim=1)
        return self.transformer(tokens)[:, -t:]


class MindEyeDiffusionPrior(nn.Module):
    """The denoiser plus the diffusion around it (training loss and ancestral sampling), in unscaled CLIP units."""

    def __init__(self, config):
        super().__init__()
        self.network = MindEyePriorNetwork(config)
        self.num_timesteps = config.prior_timesteps
        self.cond_drop_prob = config.prior_cond_drop_prob
        self.scale = config.image_embed_scale
        self.scheduler = prior_scheduler(config.prior_timesteps)

    def loss(self, brain: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None):
        """MSE between the predicted and true x0 = target * scale at a uniform random timestep.

        Returns ``(loss, predicted target (B, T, D) in unscaled units)`` (MindEye's ``aligned_clip_voxels``).
        """
        x0 = target * self.scale
        b = x0.shape[0]
        timesteps = torch.randint(0, self.num_timesteps, (b,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        noisy = self.scheduler.add_noise(x0, noise, timesteps)
        pred = self.network(noisy, timesteps, brain, self.cond_drop_prob, self.cond_drop_prob, generator=generator)
        return F.mse_loss(pred, x0), pred / self.scale

    def _denoise(self, x, t, brain, guidance_scale):
        timesteps = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        pred = self.network(x, timesteps, brain)
        if guidance_scale != 1.0:
            null = self.network(x, timesteps, brain, brain_drop_prob=1.0, image_drop_prob=1.0)
            pred = null + guidance_scale * (pred - null)
        return pred

    @torch.no_grad()
    def sample(self, brain: torch.Tensor, num_inference_steps: int | None = None,
               generator: torch.Generator | None = None, guidance_scale: float = 1.0) -> torch.Tensor:
        """Ancestral DDPM sampling from N(0, I), conditioned on brain tokens (B, T, D) -> (B, T, D) unscaled.

        ``num_inference_steps`` defaults to all ``prior_timesteps`` (MindEye1: 100 of 100, Reconstructions.py
        ``timesteps_prior=100``); fewer steps use diffusers' strided DDPM (DALLE2 would switch to DDIM).
        ``guidance_scale`` 1 = no classifier-free guidance (MindEye1's ``cond_scale=1``).
        """
        scheduler = prior_scheduler(self.num_timesteps)
        scheduler.set_timesteps(num_inference_steps or self.num_timesteps, device=brain.device)
        x = torch.randn(brain.shape, generator=generator, device=brain.device, dtype=brain.dtype)
        for t in scheduler.timesteps:
            pred = self._denoise(x, t, brain, guidance_scale)
            x = scheduler.step(pred, t, x, generator=generator).prev_sample
        return x / self.scale


__all__ = ["MindEyeDiffusionPrior", "MindEyePriorNetwork", "prior_scheduler"]
