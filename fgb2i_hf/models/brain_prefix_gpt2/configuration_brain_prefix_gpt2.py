"""Configuration of BrainPrefixGPT2, the brain-to-text model of FgB2I (arXiv 2505.22150, stage 2a).

The model (see ``modeling_brain_prefix_gpt2.py``) maps each subject's voxels with a subject-specific linear layer
to Z (``prefix_length`` x ``n_embd``), concatenates learnable constants Z' of the same shape, runs a ClipCap-style
Transformer mapper (Mokady et al. 2021, arXiv 2111.09734) over the 2l tokens and hands the last l outputs to GPT-2
as a prefix. This config describes all of it, the language model included (as a nested ``GPT2Config``).
"""

from __future__ import annotations

import os

from transformers import GPT2Config, PreTrainedConfig

from ...core.subjects import check_subject_name, check_voxel_counts  # noqa: F401  (re-exported)


class BrainPrefixGPT2Config(PreTrainedConfig):
    r"""
    Args:
        voxel_counts (`dict[str, int]`):
            Each subject's number of voxels, e.g. ``{"subj01": 15724, "subj02": 14278, "subj05": 13039,
            "subj07": 12682}`` (NSD nsdgeneral). One subject-specific linear layer is built per entry.
        prefix_length (`int`, defaults to 10):
            l: Z and the learnable constants Z' are both l x ``n_embd``; GPT-2 receives l prefix embeddings.
        mapper_layers (`int`, defaults to 8):
            Depth of the Transformer mapper (ClipCap: 8; the FgB2I summary mentions 32).
        mapper_heads (`int`, defaults to 8):
            Attention heads of the mapper (ClipCap: 8). Must divide ``n_embd``.
        mlp_ratio (`float`, defaults to 2.0):
            Width of the mapper's MLP as a multiple of ``n_embd`` (ClipCap: 2).
        mapper_dropout (`float`, defaults to 0.0):
            Dropout in the mapper's attention output and MLP (ClipCap: 0).
        subject_hidden_size (`int`, *optional*):
            ``None`` maps each subject's voxels straight to l x ``n_embd`` (the paper's design; 15,724 x 7,680 floats
            = 480 MB per NSD subject). An int factorises it: voxels -> ``subject_hidden_size`` (per subject) ->
            l x ``n_embd`` (one linear layer shared by all subjects).
        gpt2_config (`GPT2Config` or `dict`, *optional*):
            The language model. Defaults to GPT-2 base (124M).
        freeze_language_model (`bool`, defaults to `True`):
            Prefix tuning, as in the paper: GPT-2's weights get no gradient and GPT-2 stays in eval mode (no dropout)
            while none of its parameters is trainable (ClipCap's ``ClipCaptionPrefix``).
        max_caption_tokens (`int`, defaults to 77):
            Default ``max_new_tokens`` of `generate` and the caption length the training collator truncates to.
        language_model_name_or_path (`str`, *optional*):
            Where GPT-2 came from (set by ``BrainPrefixGPT2.from_language_model``); recorded in the model card.
    """

    model_type = "brain_prefix_gpt2"
    sub_configs_defaults = {"gpt2_config": GPT2Config}

    voxel_counts: dict | None = None
    prefix_length: int = 10
    mapper_layers: int = 8
    mapper_heads: int = 8
    mlp_ratio: float = 2.0
    mapper_dropout: float = 0.0
    subject_hidden_size: int | None = None
    gpt2_config: dict | PreTrainedConfig | None = None
    freeze_language_model: bool = True
    max_caption_tokens: int = 77
    language_model_name_or_path: str | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.voxel_counts = check_voxel_counts(self.voxel_counts)
        for name in ("prefix_length", "mapper_layers", "mapper_heads", "max_caption_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "mapper_layers" else 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.subject_hidden_size is not None and (not isinstance(self.subject_hidden_size, int) or self.subject_hidden_size < 1):
            raise ValueError(f"subject_hidden_size must be None or a positive int, got {self.subject_hidden_size!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        n_embd = self.gpt2_config.n_embd
        if n_embd % self.mapper_heads:
            raise ValueError(f"mapper_heads ({self.mapper_heads}) must divide the language model's n_embd ({n_embd})")

    @property
    def hidden_size(self) -> int:
        """The language model's embedding width d (GPT-2's ``n_embd``)."""
        return self.gpt2_config.n_embd

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        found = config_dict.get("model_type")
        if found is not None and found != cls.model_type:
            raise ValueError(
                f"{pretrained_model_name_or_path}: config.json describes a {found!r} model, expected "
                f"model_type {cls.model_type!r} (a BrainPrefixGPT2 checkpoint). To build a BrainPrefixGPT2 around a "
                f"pretrained GPT-2, use BrainPrefixGPT2.from_language_model({str(pretrained_model_name_or_path)!r}, "
                "voxel_counts=...)."
            )
        return config_dict, kwargs


__all__ = ["BrainPrefixGPT2Config"]
