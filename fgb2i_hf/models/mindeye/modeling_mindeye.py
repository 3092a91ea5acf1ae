"""MindEye (Scotti et al., NeurIPS 2023, arXiv 2305.18274) as a transformers ``PreTrainedModel``.

    betas (B, V_s) --subject linear--> LN-GELU-Dropout --4 residual blocks--> Linear --> backbone tokens (B, T, D)
        backbone tokens --MLP projector (per token)--> retrieval tokens (B, T, D)   (contrastive: BiMixCo / SoftCLIP)
        backbone tokens --diffusion prior (prior.py)--> CLIP image tokens (B, T, D)  (what Versatile Diffusion reads)
    betas --subject linear--> LN-SiLU-Dropout --4 residual blocks--> (C, S, S) --GroupNorm, diffusers Decoder-->
        SD VAE latents (B, 4, 64, 64) --the pipeline's VAE--> blurry image (B, 3, 512, 512) in [0, 1]

T x D = 257 x 768 are CLIP ViT-L/14's image hidden states after ``post_layernorm`` and ``visual_projection`` (MindEye's
``Clipper(hidden_state=True)``). The low-level head is MindEye1's separate ``Voxel2StableDiffusionModel`` (4x
upsampler); it shares no weights with the rest, so training both in one model is training two models side by side.

Mixed-subject batches: ``betas`` (B, V_max) zero-padded on the right with ``subject`` a list of B names (row i uses
its first ``voxel_counts[subject[i]]`` columns); or (B, V) with one subject name. MindEye1 is single-subject; the
per-subject input layers follow MindEye2 (Scotti et al. 2024), everything after them is shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ...core import as_betas
from .configuration_mindeye import MindEyeConfig
from .prior import MindEyeDiffusionPrior, MindEyePriorNetwork, PriorAttention, PriorLayerNorm


@dataclass
class MindEyeOutput(ModelOutput):
    """
    Args:
        backbone_embeds: (B, T, D) the backbone's direct output (MindEye's ``clip_voxels``), the prior's condition.
        retrieval_embeds: (B, T, D) the projector's output (``clip_voxels_proj``); flattened and L2-normalised it is
            the retrieval embedding the contrastive losses train.
        prior_embeds: (B, T, D) the prior's x0 prediction at a random timestep (``aligned_clip_voxels``), only when
            ``clip_image_embeds`` (the targets) were given; use ``generate_embeddings`` to sample.
        prior_loss: the prior's MSE in its scaled space (scalar), with the targets.
        blurry_latents: (B, 4, 64, 64) predicted SD VAE latents (scaled by 0.18215), when the model has a low-level
            head.
    """

    backbone_embeds: torch.Tensor | None = None
    retrieval_embeds: torch.Tensor | None = None
    prior_embeds: torch.Tensor | None = None
    prior_loss: torch.Tensor | None = None
    blurry_latents: torch.Tensor | None = None


class SubjectLayers(nn.Module):
    """One ``nn.Linear(V_s, width)`` per subject; rows of a mixed batch go through their own subject's layer."""

    def __init__(self, voxel_counts: dict[str, int], width: int, bias: bool = True):
        super().__init__()
        self.voxel_counts = dict(voxel_counts)
        self.layers = nn.ModuleDict({s: nn.Linear(n, width, bias=bias) for s, n in voxel_counts.items()})

    def forward(self, betas: torch.Tensor, subject: str | list[str]) -> torch.Tensor:
        """(B, V) -> (B, width): one matmul per subject present, rows put back in their order."""
        if isinstance(subject, str):
            return self.layers[subject](betas[:, : self.voxel_counts[subject]])
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(subject):
            groups.setdefault(s, []).append(i)
        if len(groups) == 1:
            (s,) = groups
            return self.layers[s](betas[:, : self.voxel_counts[s]])
        out = None
        for s, rows in groups.items():
            index = torch.tensor(rows, device=betas.device)
            values = self.layers[s](betas.index_select(0, index)[:, : self.voxel_counts[s]])
            if out is None:
                out = values.new_empty((betas.shape[0], values.shape[1]))
            out[index] = values
        return out


class ResidualMLP(nn.Module):
    """MindEye's residual MLP after the input layer: x <- x + Dropout(Act(Norm(Linear(x)))), ``num_blocks`` times."""

    def __init__(self, width: int, num_blocks: int, dropout: float, activation: type[nn.Module], bias: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width, bias=bias), nn.LayerNorm(width), activation(), nn.Dropout(dropout))
            for _ in range(num_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


class MindEyeBackbone(nn.Module):
    """voxels -> (B, T, D) backbone tokens (MindEye1 ``BrainNetwork`` without its projector; models.py l.171-230)."""

    def __init__(self, config: MindEyeConfig):
        super().__init__()
        h = config.hidden_size
        self.tokens, self.dim = config.clip_tokens, config.clip_dim
        self.subject_proj = SubjectLayers(config.voxel_counts, h)
        self.input_norm = nn.LayerNorm(h)
        self.input_act = nn.GELU()
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.mlp = ResidualMLP(h, config.num_blocks, config.block_dropout, nn.GELU, bias=True)
        self.to_tokens = nn.Linear(h, config.clip_tokens * config.clip_dim)

    def forward(self, betas, subject):
        x = self.input_dropout(self.input_act(self.input_norm(self.subject_proj(betas, subject))))
        return self.to_tokens(self.mlp(x)).view(-1, self.tokens, self.dim)


def mlp_projector(dim: int, hidden: int) -> nn.Sequential:
    """MindEye's projector, per token: (LN, GELU, Linear) x 3: D -> hidden -> hidden -> D (models.py l.196-206)."""
    return nn.Sequential(nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, hidden),
                         nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, hidden),
                         nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, dim))


class MindEyeLowLevel(nn.Module):
    """voxels -> SD VAE latents (B, latent_channels, L, L) (MindEye1 ``Voxel2StableDiffusionModel``, ups_mode '4x')."""

    def __init__(self, config: MindEyeConfig):
        super().__init__()
        from diffusers.models.autoencoders.vae import Decoder

        h, c, s = config.low_level_hidden_size, config.low_level_channels, config.low_level_side
        self.channels, self.side = c, s
        self.subject_proj = SubjectLayers(config.voxel_counts, h, bias=False)
        self.input_norm = nn.LayerNorm(h)
        self.input_act = nn.SiLU()
        self.input_dropout = nn.Dropout(config.low_level_input_dropout)
        self.mlp = ResidualMLP(h, config.low_level_num_blocks, config.low_level_block_dropout, nn.SiLU, bias=False)
        self.to_grid = nn.Linear(h, c * s * s, bias=False)
        self.grid_norm = nn.GroupNorm(1, c)
        self.upsampler = Decoder(in_channels=c, out_channels=config.latent_channels,
                                 up_block_types=("UpDecoderBlock2D",) * len(config.low_level_block_out_channels),
                                 block_out_channels=tuple(config.low_level_block_out_channels),
                                 layers_per_block=config.low_level_layers_per_block,
                                 norm_num_groups=config.low_level_norm_num_groups)

    def forward(self, betas, subject):
        x = self.input_dropout(self.input_act(self.input_norm(self.subject_proj(betas, subject))))
        grid = self.to_grid(self.mlp(x)).view(-1, self.channels, self.side, self.side)
        return self.upsampler(self.grid_norm(grid))


def _torch_default_init(module: nn.Module) -> None:
    """PyTorch's own ``nn.Linear``/``nn.Conv2d`` initialisation (what MindEye1's layers get)."""
    init.kaiming_uniform_(module.weight, a=math.sqrt(5))
    if module.bias is not None:
        bound = 1 / math.sqrt(module.weight[0].numel())
        init.uniform_(module.bias, -bound, bound)


class MindEyeModel(PreTrainedModel):
    """MindEye: backbone + projector (retrieval), diffusion prior (CLIP image tokens), low-level head (blurry image).

    Attributes:
        backbone: ``MindEyeBackbone`` (holds the subject layers ``backbone.subject_proj.layers[subject]``).
        projector: ``nn.Sequential`` MLP projector, per token.
        prior: ``MindEyeDiffusionPrior`` or None (``config.use_prior=False``).
        low_level: ``MindEyeLowLevel`` or None (``config.low_level=False``).
    """

    config_class = MindEyeConfig
    base_model_prefix = "mindeye"
    main_input_name = "betas"
    _no_split_modules = ["PriorLayer"]

    def __init__(self, config: MindEyeConfig):
        super().__init__(config)
        self.backbone = MindEyeBackbone(config)
        self.projector = mlp_projector(config.clip_dim, config.projector_hidden_size)
        self.prior = MindEyeDiffusionPrior(config) if config.use_prior else None
        self.low_level = MindEyeLowLevel(config) if config.low_level else None
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            _torch_default_init(module)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, PriorLayerNorm):
            init.ones_(module.weight)
        elif isinstance(module, PriorAttention):
            init.normal_(module.null_kv, mean=0.0, std=1.0)
        elif isinstance(module, MindEyePriorNetwork):
            # DALLE2/MindEye: null tokens ~ N(0, 1); learned positions ~ N(0, 1) * dim**-0.5 (models.py l.685-693)
            init.normal_(module.null_brain_embeds, mean=0.0, std=1.0)
            init.normal_(module.null_image_embeds, mean=0.0, std=1.0)
            init.normal_(module.position_embeds, mean=0.0, std=module.dim ** -0.5)

    # -- inputs -----------------------------------------------------------------------------------------------
    def _check_brain_inputs(self, betas: torch.Tensor, subject: str | list[str]):
        """Validate betas/subject (:func:`fgb2i_hf.core.as_betas`); betas on the model's device and dtype."""
        reference = self.backbone.to_tokens.weight
        return as_betas(betas, subject, voxel_counts=self.config.voxel_counts, device=reference.device,
                        dtype=reference.dtype, allow_1d=False)

    # -- model ------------------------------------------------------------------------------------------------
    def encode(self, betas: torch.Tensor, subject: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """betas (B, V) -> (backbone tokens (B, T, D), retrieval tokens (B, T, D))."""
        betas, subject = self._check_brain_inputs(betas, subject)
        backbone = self.backbone(betas, subject)
        return backbone, self.projector(backbone)

    def forward(self, betas: torch.Tensor, subject: str | list[str], clip_image_embeds: torch.Tensor | None = None,
                low_level_betas: torch.Tensor | None = None, generator: torch.Generator | None = None) -> MindEyeOutput:
        """All heads in one pass (the training forward).

        Args:
            betas: (B, V) for one subject, or (B, V_max) zero-padded with one subject name per row.
            subject: a subject name, or a list of B names.
            clip_image_embeds: (B, T, D) target CLIP image tokens; with them the prior's loss and x0 prediction are
                computed (random timestep, noise and condition dropout from the global RNG or ``generator``).
            low_level_betas: the low-level head's input, same shape as ``betas`` (default: ``betas``). Training feeds
                the backbone MixCo-mixed voxels but the low-level head the unmixed ones, as MindEye1, which trained
                the two apart.
        """
        betas, subject = self._check_brain_inputs(betas, subject)
        backbone = self.backbone(betas, subject)
        out = MindEyeOutput(backbone_embeds=backbone, retrieval_embeds=self.projector(backbone))
        if clip_image_embeds is not None and self.prior is not None:
            target = clip_image_embeds.to(backbone.device, backbone.dtype)
            if target.shape != backbone.shape:
                raise ValueError(f"clip_image_embeds must be {tuple(backbone.shape)}, got {tuple(target.shape)}")
            out.prior_loss, out.prior_embeds = self.prior.loss(backbone, target, generator=generator)
        if self.low_level is not None:
            if low_level_betas is not None:
                if low_level_betas.shape != betas.shape:
                    raise ValueError(f"low_level_betas must have betas' shape {tuple(betas.shape)}, got "
                                     f"{tuple(low_level_betas.shape)}")
                betas = low_level_betas.to(betas.device, betas.dtype)
            out.blurry_latents = self.low_level(betas, subject)
        return out

    @torch.no_grad()
    def generate_embeddings(self, betas: torch.Tensor, subject: str | list[str], num_inference_steps: int | None = None,
                            generator: torch.Generator | None = None, guidance_scale: float = 1.0) -> torch.Tensor:
        """The prior's samples: (B, T, D) CLIP image tokens for Versatile Diffusion, unnormalised (MindEye's
        reconstruction divides each by its first token's norm, as ``MindEyeInputs``/the pipeline do).

        ``num_inference_steps`` defaults to ``config.prior_timesteps`` (MindEye1: 100); ``guidance_scale`` 1 is
        MindEye1's (no classifier-free guidance).
        """
        if self.prior is None:
            raise ValueError("this MindEye has no diffusion prior (config.use_prior=False)")
        backbone, _ = self.encode(betas, subject)
        return self.prior.sample(backbone, num_inference_steps=num_inference_steps, generator=generator,
                                 guidance_scale=guidance_scale)

    @torch.no_grad()
    def retrieval_embeddings(self, betas: torch.Tensor, subject: str | list[str]) -> torch.Tensor:
        """(B, T*D) flattened, L2-normalised retrieval embeddings (what retrieval and best-of-N compare)."""
        return F.normalize(self.encode(betas, subject)[1].flatten(1), dim=-1)

    @torch.no_grad()
    def blurry_latents(self, betas: torch.Tensor, subject: str | list[str]) -> torch.Tensor:
        """(B, latent_channels, L, L) predicted SD VAE latents, already multiplied by ``vae_scaling_factor``."""
        if self.low_level is None:
            raise ValueError("this MindEye has no low-level head (config.low_level=False)")
        return self.low_level(*self._check_brain_inputs(betas, subject))

    @torch.no_grad()
    def decode_blurry(self, latents: torch.Tensor, vae) -> torch.Tensor:
        """Latents -> (B, 3, H, W) images in [0, 1] with an SD ``AutoencoderKL`` (Reconstructions.py l.370, clamped)."""
        latents = latents.to(vae.device, vae.dtype) / self.config.vae_scaling_factor
        return (vae.decode(latents).sample / 2 + 0.5).clamp(0, 1).float()

    @torch.no_grad()
    def reconstruction_inputs(self, betas: torch.Tensor, subject: str | list[str], vae=None,
                              num_inference_steps: int | None = None, generator: torch.Generator | None = None,
                              guidance_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the MindEye base of a Versatile Diffusion pipeline needs, from betas:
        ``(clip_image_embeds (B, T, D) unnormalised prior samples, blurry images (B, 3, H, W) in [0, 1] or None)``.
        Blurry images need the pipeline's ``vae`` and a low-level head; otherwise None."""
        embeds = self.generate_embeddings(betas, subject, num_inference_steps=num_inference_steps, generator=generator,
                                          guidance_scale=guidance_scale)
        images = None
        if vae is not None and self.low_level is not None:
            images = self.decode_blurry(self.blurry_latents(betas, subject), vae)
        return embeds, images

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, after mapping ``simnsd/<component>`` to the packaged SimNSD world."""
        from ...core import resolve_pretrained

        return super().from_pretrained(resolve_pretrained(pretrained_model_name_or_path), *args, **kwargs)


__all__ = ["MindEyeModel", "MindEyeOutput"]
