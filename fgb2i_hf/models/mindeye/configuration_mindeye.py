"""Configuration of MindEye (Scotti et al., NeurIPS 2023, "Reconstructing the Mind's Eye: fMRI-to-Image with
Contrastive Learning and Diffusion Priors", arXiv 2305.18274), as a transformers ``PreTrainedConfig``.

Defaults are MindEye1's released settings for the Versatile Diffusion (257 x 768) model, read from
MedARC-AI/fMRI-reconstruction-NSD (commit 6b30ea5): ``src/models.py`` (``BrainNetwork``,
``VersatileDiffusionPriorNetwork``, ``Voxel2StableDiffusionModel``), ``src/Train_MindEye.py`` (prior settings) and
the DALLE2-pytorch 1.14.2 ``DiffusionPrior`` it builds on. The field docs name the line each default comes from.
"""

from __future__ import annotations

import math
import os

from transformers import PreTrainedConfig

from ...core.subjects import check_voxel_counts


class MindEyeConfig(PreTrainedConfig):
    r"""
    Args:
        voxel_counts (`dict[str, int]`):
            Each subject's number of voxels (NSD nsdgeneral: subj01 15724, subj02 14278, subj05 13039, subj07 12682;
            Train_MindEye.py l.269-284). One input ``nn.Linear`` per subject, for the backbone and the low-level head.
        clip_tokens (`int`, defaults to 257) and clip_dim (`int`, defaults to 768):
            Shape of the CLIP ViT-L/14 image hidden states Versatile Diffusion conditions on (``out_dim = 257 *
            clip_size``, Train_MindEye.py l.259).
        hidden_size (`int`, defaults to 4096):
            Width h of the residual MLP backbone (``BrainNetwork(h=4096)``, models.py l.172).
        num_blocks (`int`, defaults to 4):
            Residual blocks of the backbone (``n_blocks=4``, models.py l.172).
        input_dropout (`float`, defaults to 0.5) and block_dropout (`float`, defaults to 0.15):
            Dropout after the input layer and in each residual block (models.py l.181, l.187).
        projector_hidden_size (`int`, defaults to 2048):
            Width of the MLP projector (LN-GELU-Linear x 3, applied per token; models.py l.196-206).
        use_prior (`bool`, defaults to `True`):
            Build the diffusion prior.
        prior_depth (6), prior_heads (12), prior_dim_head (64), prior_ff_mult (4):
            The prior's transformer (Train_MindEye.py l.301-303; ``FlaggedCausalTransformer`` default ff_mult 4,
            models.py l.807). ``prior_heads * prior_dim_head`` need not equal ``clip_dim``.
        prior_rotary_dim (`int`, *optional*):
            Rotary embedding width on queries and keys (``min(32, dim_head)``, models.py l.822).
        prior_rel_pos_buckets (32) and prior_rel_pos_max_distance (128):
            T5-style relative position bias (DALLE2-pytorch ``RelPosBias`` defaults).
        prior_cosine_sim_scale (`float`, defaults to 16.0):
            Attention is cosine similarity times this scale (DALLE2-pytorch ``Attention(cosine_sim_scale=16)``).
        prior_timesteps (`int`, defaults to 100):
            Diffusion steps of the prior (Train_MindEye.py l.306), cosine schedule (DALLE2 default, = diffusers'
            ``squaredcos_cap_v2``), x0 prediction with an MSE loss (DALLE2 defaults ``predict_x_start=True``,
            ``loss_type="l2"``).
        prior_cond_drop_prob (`float`, defaults to 0.2):
            Probability of replacing the brain tokens, and independently the noisy image tokens, by learned null
            tokens in training (``cond_drop_prob=0.2``, Train_MindEye.py l.324).
        prior_image_embed_scale (`float`, *optional*):
            The prior diffuses ``target * scale``; default ``sqrt(clip_dim)`` (DALLE2 ``image_embed_scale=None``).
        low_level (`bool`, defaults to `True`):
            Build the low-level head (voxels -> SD VAE latents, MindEye1's ``Voxel2StableDiffusionModel``).
        low_level_hidden_size (4096), low_level_num_blocks (4), low_level_input_dropout (0.5),
        low_level_block_dropout (0.25):
            Its residual MLP (models.py l.553-569: bias-free linears, LayerNorm, SiLU).
        low_level_channels (64) and low_level_side (16):
            The MLP's output is reshaped to (channels, side, side) (``lin1: h -> 16384``, ``GroupNorm(1, 64)``,
            ``ups_mode='4x'``, models.py l.571-573, l.645-653).
        low_level_block_out_channels (`list[int]`, defaults to [64, 128, 256]) and low_level_layers_per_block (1),
        low_level_norm_num_groups (32):
            The diffusers ``Decoder`` that upsamples to the latent (models.py l.575-581); it upsamples
            ``len(block_out_channels) - 1`` times: 16 -> 64.
        latent_channels (`int`, defaults to 4) and vae_scaling_factor (`float`, defaults to 0.18215):
            The SD VAE latent (4 x 64 x 64 for a 512 px image) and its scale (Reconstructions.py l.370).
    """

    model_type = "mindeye"

    voxel_counts: dict | None = None
    clip_tokens: int = 257
    clip_dim: int = 768
    hidden_size: int = 4096
    num_blocks: int = 4
    input_dropout: float = 0.5
    block_dropout: float = 0.15
    projector_hidden_size: int = 2048
    use_prior: bool = True
    prior_depth: int = 6
    prior_heads: int = 12
    prior_dim_head: int = 64
    prior_ff_mult: int = 4
    prior_rotary_dim: int | None = None
    prior_rel_pos_buckets: int = 32
    prior_rel_pos_max_distance: int = 128
    prior_cosine_sim_scale: float = 16.0
    prior_timesteps: int = 100
    prior_cond_drop_prob: float = 0.2
    prior_image_embed_scale: float | None = None
    low_level: bool = True
    low_level_hidden_size: int = 4096
    low_level_num_blocks: int = 4
    low_level_input_dropout: float = 0.5
    low_level_block_dropout: float = 0.25
    low_level_channels: int = 64
    low_level_side: int = 16
    low_level_block_out_channels: list | None = None
    low_level_layers_per_block: int = 1
    low_level_norm_num_groups: int = 32
    latent_channels: int = 4
    vae_scaling_factor: float = 0.18215

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.voxel_counts = check_voxel_counts(self.voxel_counts)
        if self.low_level_block_out_channels is None:
            self.low_level_block_out_channels = [64, 128, 256]
        self.low_level_block_out_channels = [int(c) for c in self.low_level_block_out_channels]
        positive = ("clip_tokens", "clip_dim", "hidden_size", "projector_hidden_size", "prior_depth", "prior_heads",
                    "prior_dim_head", "prior_ff_mult", "prior_rel_pos_buckets", "prior_rel_pos_max_distance",
                    "prior_timesteps", "low_level_hidden_size", "low_level_channels", "low_level_side",
                    "low_level_layers_per_block", "low_level_norm_num_groups", "latent_channels")
        for name in positive + ("num_blocks", "low_level_num_blocks"):
            value = getattr(self, name)
            low = 0 if name in ("num_blocks", "low_level_num_blocks") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        for name in ("input_dropout", "block_dropout", "low_level_input_dropout", "low_level_block_dropout",
                     "prior_cond_drop_prob"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)!r}")
        rotary = self.rotary_dim
        if rotary % 2 or rotary > self.prior_dim_head:
            raise ValueError(f"prior_rotary_dim must be even and <= prior_dim_head ({self.prior_dim_head}), got {rotary}")
        if self.low_level and any(c % self.low_level_norm_num_groups for c in self.low_level_block_out_channels):
            raise ValueError(f"low_level_block_out_channels {self.low_level_block_out_channels} must all be multiples "
                             f"of low_level_norm_num_groups ({self.low_level_norm_num_groups})")

    @property
    def rotary_dim(self) -> int:
        """Width rotated by the prior's rotary embedding (``min(32, dim_head)`` unless set)."""
        return int(self.prior_rotary_dim) if self.prior_rotary_dim is not None else min(32, self.prior_dim_head)

    @property
    def image_embed_scale(self) -> float:
        """The factor the prior's diffusion space is scaled by (DALLE2: ``image_embed_dim ** 0.5``)."""
        return float(self.prior_image_embed_scale) if self.prior_image_embed_scale else math.sqrt(self.clip_dim)

    @property
    def latent_size(self) -> int:
        """Side of the predicted VAE latent: ``low_level_side * 2 ** (len(block_out_channels) - 1)`` (64)."""
        return self.low_level_side * 2 ** (len(self.low_level_block_out_channels) - 1)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        found = config_dict.get("model_type")
        if found is not None and found != cls.model_type:
            raise ValueError(f"{pretrained_model_name_or_path}: config.json describes a {found!r} model, expected "
                             f"model_type {cls.model_type!r} (a MindEye checkpoint; convert MindEye1's released .pth "
                             "files with fgb2i_hf.models.mindeye.convert_mindeye)")
        return config_dict, kwargs


__all__ = ["MindEyeConfig"]
