"""BrainPrefixGPT2: voxels -> GPT-2 prefix -> caption (FgB2I stage 2a, arXiv 2505.22150).

    betas (B, V_s) --subject-specific linear--> Z (B, l, d)            [optionally V_s -> h (per subject) -> l*d (shared)]
    [Z ; Z'] (B, 2l, d), Z' learnable  --mapper: pre-LN Transformer, no positional embeddings-->  last l outputs
    prefix (B, l, d) + caption token embeddings --GPT-2--> next-token logits

The mapper reimplements ClipCap's ``TransformerMapper`` from its description (Mokady et al. 2021, arXiv 2111.09734):
pre-LayerNorm blocks, ReLU MLP of width ``mlp_ratio * d``, query/key/value projections without bias, no mask, no
positional embeddings (the constants Z' give the outputs their positions), no final LayerNorm. The subject layers
follow MindEye2's per-subject linear maps into a shared space (Scotti et al. 2024).

Mixed-subject batches: ``betas`` is (B, V_max), zero-padded on the right, with ``subject`` a list of B names; row i
uses its first ``voxel_counts[subject[i]]`` entries. Rows are grouped by subject inside the batch, one matmul per
subject present. A single-subject batch may be given as (B, V) with ``subject`` a plain string.
"""

from __future__ import annotations

import math
import os
import tempfile

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2LMHeadModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast

from ...core import as_betas, atomic_write_text, resolve_pretrained
from .beam_search import beam_search, resolve_generation_config
from .configuration_brain_prefix_gpt2 import BrainPrefixGPT2Config, check_subject_name


def _default_linear_init(layer: nn.Linear) -> None:
    """PyTorch's default ``nn.Linear`` initialisation (what ClipCap's layers get): U(+-1/sqrt(fan_in)) for weight and
    bias, so the scale suits any width, from 15,724 voxels to a 32-wide test model."""
    init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
    if layer.bias is not None:
        bound = 1 / math.sqrt(layer.in_features)
        init.uniform_(layer.bias, -bound, bound)


def decode_captions(sequences, tokenizer, eos_token_id: int | None = None) -> list[str]:
    """Captions from generated token ids: one string per row, cut at the first ``eos_token_id`` (default: the
    tokenizer's), special tokens and surrounding spaces removed.

    Args:
        sequences: LongTensor (N, T) of new tokens, or a ``GenerateOutput`` (its ``sequences``).
    """
    if not isinstance(sequences, torch.Tensor):
        sequences = sequences.sequences
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    captions = []
    for row in sequences.tolist():
        if eos in row:
            row = row[: row.index(eos)]
        captions.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return captions


class MapperAttention(nn.Module):
    """Multi-head self-attention over all 2l tokens (no mask); q/k/v without bias, output projection with bias."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, d) -> (B, N, d)
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d/heads)
        return self.dropout(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class MapperBlock(nn.Module):
    """Pre-LN Transformer block: x + attn(ln(x)), then x + mlp(ln(x)) with a ReLU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = MapperAttention(dim, heads, dropout)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class BrainMapper(nn.Module):
    """ClipCap's TransformerMapper after the input projection: Z (B, l, d) -> prefix (B, l, d)."""

    def __init__(self, config: BrainPrefixGPT2Config):
        super().__init__()
        d = config.hidden_size
        self.prefix_const = nn.Parameter(torch.empty(config.prefix_length, d))  # Z'
        self.blocks = nn.ModuleList(
            MapperBlock(d, config.mapper_heads, config.mlp_ratio, config.mapper_dropout)
            for _ in range(config.mapper_layers)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        l = z.shape[1]
        x = torch.cat([z, self.prefix_const.unsqueeze(0).expand(z.shape[0], -1, -1)], dim=1)
        for block in self.blocks:
            x = block(x)
        return x[:, l:]


class BrainPrefixGPT2(PreTrainedModel):
    """One brain-to-text model for all subjects: subject layers -> Transformer mapper -> GPT-2 prefix.

    Attributes:
        subject_proj: ``nn.ModuleDict`` subject -> ``nn.Linear(V_s, l*d)`` (or ``(V_s, h)`` when factorised).
        shared_proj: ``nn.Linear(h, l*d)`` shared by all subjects when ``config.subject_hidden_size`` is set, else None.
        mapper: ``BrainMapper`` (holds Z' as ``mapper.prefix_const``).
        gpt2: ``transformers.GPT2LMHeadModel``.
    """

    config_class = BrainPrefixGPT2Config
    base_model_prefix = "brain"
    main_input_name = "betas"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GPT2Block", "MapperBlock"]
    # forward() takes num_items_in_batch itself, so Trainer must neither drop it nor rescale the loss for
    # gradient accumulation (hf-gotchas.md §3).
    accepts_loss_kwargs = True

    def __init__(self, config: BrainPrefixGPT2Config):
        super().__init__(config)
        d, l = config.hidden_size, config.prefix_length
        width = config.subject_hidden_size or l * d
        self.subject_proj = nn.ModuleDict({s: nn.Linear(n, width) for s, n in config.voxel_counts.items()})
        self.shared_proj = nn.Linear(config.subject_hidden_size, l * d) if config.subject_hidden_size else None
        self.mapper = BrainMapper(config)
        self.gpt2 = GPT2LMHeadModel(config.gpt2_config)
        self.post_init()
        self._setup_language_model()

    def _setup_language_model(self):
        # GPT2LMHeadModel's class name does not tell transformers its loss; name it (silences a warning). The outer
        # model keeps loss_type None on purpose: Trainer then counts every label for num_items_in_batch, which is
        # right here because the last prefix position predicts the first caption token.
        self.gpt2.loss_type = "ForCausalLM"
        if self.config.freeze_language_model:
            self.gpt2.requires_grad_(False)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            _default_linear_init(module)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, BrainMapper):
            init.normal_(module.prefix_const, mean=0.0, std=1.0)  # ClipCap: torch.randn

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_language_model(
        cls, name_or_path: str, voxel_counts: dict[str, int], language_model_kwargs: dict | None = None, **config_kwargs
    ) -> "BrainPrefixGPT2":
        """Build the model around a pretrained GPT-2 (a Hub id such as ``"gpt2"``, a local folder, or ``simnsd/gpt2``).

        The subject layers and the mapper are freshly initialised; ``config_kwargs`` are ``BrainPrefixGPT2Config``
        fields (``prefix_length``, ``mapper_layers``, ``subject_hidden_size``...); ``language_model_kwargs`` go to
        ``GPT2LMHeadModel.from_pretrained`` (``revision``, ``dtype``...).
        """
        if "gpt2_config" in config_kwargs:
            raise ValueError("from_language_model takes GPT-2's config from the checkpoint; do not pass gpt2_config")
        language_model = GPT2LMHeadModel.from_pretrained(resolve_pretrained(name_or_path), **(language_model_kwargs or {}))
        config = BrainPrefixGPT2Config(
            voxel_counts=voxel_counts,
            gpt2_config=language_model.config,
            language_model_name_or_path=str(name_or_path),
            **config_kwargs,
        )
        model = cls(config).to(device=language_model.device, dtype=language_model.dtype)
        model.gpt2 = language_model  # the randomly initialised GPT-2 built by cls(config) is dropped
        model._setup_language_model()
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, after mapping ``simnsd/<component>`` to the packaged SimNSD world."""
        model = super().from_pretrained(resolve_pretrained(pretrained_model_name_or_path), *args, **kwargs)
        model._setup_language_model()  # loading swaps in new Parameters, which require grad again
        return model

    def train(self, mode: bool = True):
        """Like ``nn.Module.train``; a fully frozen GPT-2 stays in eval mode (no dropout), as in ClipCap."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.gpt2.parameters()):
            self.gpt2.eval()
            # transformers checkpoints a block only while the block's own flag says "training"; raising just that flag
            # keeps activation checkpointing usable with a frozen GPT-2 (its attention, MLP and dropout stay in eval).
            for block in self.gpt2.transformer.h:
                block.training = True
        return self

    # -- inputs ---------------------------------------------------------------------------------------------------
    def _check_brain_inputs(self, betas, subject) -> tuple[torch.Tensor, str | list[str]]:
        """Validate betas/subject (:func:`fgb2i_hf.core.as_betas`: 2-D, floating point, known subjects, widths and
        padding, finite in the model's dtype); returns betas on the model's device and dtype, and the subject(s)."""
        reference = self.mapper.prefix_const
        return as_betas(betas, subject, voxel_counts=self.config.voxel_counts, device=reference.device,
                        dtype=reference.dtype, allow_1d=False)

    def _project_subjects(self, betas: torch.Tensor, subject: str | list[str]) -> torch.Tensor:
        """(B, V) -> (B, width): one matmul per subject present, rows put back in their order."""
        if isinstance(subject, str):
            return self.subject_proj[subject](betas)
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(subject):
            groups.setdefault(s, []).append(i)
        if len(groups) == 1:
            (s,) = groups
            return self.subject_proj[s](betas[:, : self.config.voxel_counts[s]])
        rows, outputs = [], []
        for s, idx in groups.items():
            index = torch.tensor(idx, device=betas.device)
            outputs.append(self.subject_proj[s](betas.index_select(0, index)[:, : self.config.voxel_counts[s]]))
            rows.append(index)
        order = torch.cat(rows)
        return torch.cat(outputs).index_select(0, torch.argsort(order))

    # -- model ----------------------------------------------------------------------------------------------------
    def encode_brain(self, betas: torch.Tensor, subject: str | list[str]) -> torch.Tensor:
        """betas (B, V) or (B, V_max) zero-padded, subject str or list of B names -> GPT-2 prefix (B, l, n_embd)."""
        betas, subject = self._check_brain_inputs(betas, subject)
        z = self._project_subjects(betas, subject)
        if self.shared_proj is not None:
            z = self.shared_proj(z)
        prefix = self.mapper(z.view(z.shape[0], self.config.prefix_length, self.config.hidden_size))
        finite = torch.isfinite(prefix).flatten(1).all(dim=1)
        if not bool(finite.all()):  # else GPT-2 reads NaN, its argmax is token 0 (eos) and captions come out empty
            rows = torch.nonzero(~finite).flatten().tolist()
            raise ValueError(f"the GPT-2 prefix of rows {rows[:10]} is not finite in the model's dtype {prefix.dtype}: "
                             "the betas overflow it; z-score the betas, or run the model in float32")
        return prefix

    def _prefix(self, betas, subject, prefix_embeds) -> torch.Tensor:
        if prefix_embeds is not None:
            if betas is not None:
                raise ValueError("pass either betas (with subject) or prefix_embeds, not both")
            expected = (self.config.prefix_length, self.config.hidden_size)
            if prefix_embeds.ndim != 3 or tuple(prefix_embeds.shape[1:]) != expected:
                raise ValueError(f"prefix_embeds must be (B, {expected[0]}, {expected[1]}), got {tuple(prefix_embeds.shape)}")
            return prefix_embeds
        if betas is None or subject is None:
            raise ValueError("betas and subject are required (or precomputed prefix_embeds)")
        return self.encode_brain(betas, subject)

    def forward(
        self,
        betas: torch.Tensor | None = None,
        subject: str | list[str] | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        prefix_embeds: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> CausalLMOutputWithPast:
        """Next-token logits for the prefix followed by the caption tokens.

        Args:
            betas: (B, V) for one subject, or (B, V_max) zero-padded with one subject name per row.
            subject: a subject name, or a list of B names.
            input_ids: (B, T) caption tokens (``caption + eos``, padded on the right), or None for the prefix alone.
            attention_mask: (B, T), 1 for real tokens; defaults to all ones.
            labels: (B, T), usually ``input_ids`` with -100 at padded positions. Positions where ``attention_mask``
                is 0 are never counted, whatever their label; label i is predicted from the position before it (the
                last prefix position predicts the first caption token).
            num_items_in_batch: the number of counted labels across all micro-batches of an optimizer step; the
                loss is then sum / num_items_in_batch (what ``Trainer`` passes under gradient accumulation).
            prefix_embeds: (B, l, n_embd) from ``encode_brain``, instead of betas/subject.
            logits_to_keep: as in GPT-2: keep only the last N positions' logits (0 = all).

        Returns:
            ``CausalLMOutputWithPast`` with ``loss`` (caption tokens only; None without labels) and ``logits``
            (B, l + T, vocab) (or the last ``logits_to_keep`` positions).
        """
        if labels is not None and logits_to_keep:
            raise ValueError("logits_to_keep keeps only the last positions' logits; the loss needs all of them")
        prefix = self._prefix(betas, subject, prefix_embeds)
        batch, l = prefix.shape[:2]
        if input_ids is None:
            if labels is not None or attention_mask is not None:
                raise ValueError("labels and attention_mask need input_ids")
            embeds = prefix
            mask = prefix.new_ones(batch, l, dtype=torch.long)
            full_labels = None
        else:
            if input_ids.ndim != 2 or input_ids.shape[0] != batch:
                raise ValueError(
                    f"input_ids must be (B, T) with B = {batch} (the rows of betas), got {tuple(input_ids.shape)}"
                )
            input_ids = input_ids.to(prefix.device)
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            elif tuple(attention_mask.shape) != tuple(input_ids.shape):
                raise ValueError(
                    f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
                )
            attention_mask = attention_mask.to(prefix.device)
            embeds = torch.cat([prefix, self.gpt2.transformer.wte(input_ids)], dim=1)
            mask = torch.cat([attention_mask.new_ones(batch, l), attention_mask], dim=1)
            full_labels = None
            if labels is not None:
                if tuple(labels.shape) != tuple(input_ids.shape):
                    raise ValueError(f"labels must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
                labels = labels.to(prefix.device).masked_fill(attention_mask == 0, -100)
                full_labels = torch.cat([labels.new_full((batch, l), -100), labels], dim=1)
        loss_kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        out = self.gpt2(
            inputs_embeds=embeds,
            attention_mask=mask,
            labels=full_labels,
            use_cache=False,
            logits_to_keep=logits_to_keep,
            **loss_kwargs,
        )
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits)

    # -- generation -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        betas: torch.Tensor | None = None,
        subject: str | list[str] | None = None,
        prefix_embeds: torch.Tensor | None = None,
        beam_impl: str = "auto",
        **generation_kwargs,
    ):
        """Caption token ids through GPT-2's own ``generate`` (KV cache): greedy, beam search, sampling...

        ``generation_kwargs`` are ``GPT2LMHeadModel.generate``'s (``num_beams``, ``do_sample``, ``top_p``,
        ``num_return_sequences``, ``eos_token_id``, ``stopping_criteria``, ``stop_strings`` with ``tokenizer``...).
        Defaults: ``max_new_tokens = config.max_caption_tokens``, ``pad_token_id`` = the eos id.

        ``beam_impl`` chooses the beam search: ``"auto"`` (default) runs ``beam_search.beam_search`` -- the same
        algorithm and outputs as transformers' beam search on a pre-allocated KV cache, several times faster on a
        CPU -- whenever it implements the settings exactly (``num_beams > 1``, no sampling, no logits processors or
        extra stopping criteria, ``max_new_tokens``; ``beam_search.resolve_generation_config`` says why not), and
        transformers' otherwise; ``"hf"`` always transformers'; ``"fast"`` the fast one or a ``ValueError`` saying
        why it cannot. Greedy decoding and sampling always run through transformers.

        Returns:
            LongTensor (B * num_return_sequences, T) of new tokens only (rows that end early are padded with the pad
            id), or a ``GenerateOutput`` whose ``sequences`` are those when ``return_dict_in_generate=True`` (the
            fast beam search returns no ``cache`` in it).
        """
        if beam_impl not in ("auto", "fast", "hf"):
            raise ValueError(f"beam_impl must be 'auto', 'fast' or 'hf', got {beam_impl!r}")
        prefix = self._prefix(betas, subject, prefix_embeds)
        if "max_new_tokens" not in generation_kwargs and "max_length" not in generation_kwargs:
            generation_kwargs["max_new_tokens"] = self.config.max_caption_tokens
        if generation_kwargs.get("pad_token_id") is None and self.gpt2.generation_config.pad_token_id is None:
            generation_kwargs["pad_token_id"] = self.eos_token_id
        if beam_impl != "hf":
            generation_config, reason = resolve_generation_config(self.gpt2, generation_kwargs)
            if generation_config is not None:
                return beam_search(self.gpt2, prefix, generation_config)
            if beam_impl == "fast":
                raise ValueError(f"beam_impl='fast' cannot run these settings: {reason}; use beam_impl='auto' or 'hf'")
        mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        return self.gpt2.generate(inputs_embeds=prefix, attention_mask=mask, **generation_kwargs)

    @property
    def eos_token_id(self) -> int | None:
        """The language model's (first) end-of-text id."""
        eos = self.gpt2.generation_config.eos_token_id
        if eos is None:
            eos = self.config.gpt2_config.eos_token_id
        return eos[0] if isinstance(eos, (list, tuple)) else eos

    def generate_captions(self, betas, subject, tokenizer, **generation_kwargs) -> list[str]:
        """``generate`` then :func:`decode_captions`: one string per returned sequence, cut at the first eos (the
        tokenizer's, else the model's), special tokens and surrounding spaces removed."""
        sequences = self.generate(betas=betas, subject=subject, **generation_kwargs)
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else self.eos_token_id
        return decode_captions(sequences, tokenizer, eos)

    # -- subjects -------------------------------------------------------------------------------------------------
    def add_subject(self, subject: str, n_voxels: int, freeze_others: bool = True) -> nn.Linear:
        """Add a subject-specific layer (cross-subject adaptation, as in MindEye2/UMBRAE).

        With ``freeze_others`` (default) every other parameter stops requiring gradients, so training on the new
        subject's data updates only the new layer. The config's ``voxel_counts`` gains the subject, so the model
        saves and reloads with it. Returns the new layer.
        """
        check_subject_name(subject)
        if subject in self.config.voxel_counts:
            raise ValueError(f"subject {subject!r} already exists (with {self.config.voxel_counts[subject]} voxels)")
        if isinstance(n_voxels, bool) or not isinstance(n_voxels, int) or n_voxels <= 0:
            raise ValueError(f"n_voxels for {subject} must be a positive int, got {n_voxels!r}")
        width = self.config.subject_hidden_size or self.config.prefix_length * self.config.hidden_size
        layer = nn.Linear(n_voxels, width, device=self.device, dtype=self.mapper.prefix_const.dtype)
        _default_linear_init(layer)
        if freeze_others:
            self.requires_grad_(False)
        self.subject_proj[subject] = layer
        layer.requires_grad_(True)
        self.config.voxel_counts = {**self.config.voxel_counts, subject: n_voxels}
        return layer

    # -- LoRA -----------------------------------------------------------------------------------------------------
    def add_lora(self, r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.0, target_modules=None, **lora_kwargs):
        """Wrap the model in a peft ``PeftModel`` with LoRA on GPT-2 (see ``lora.py``); returns the PeftModel.

        Default targets: the attention input projections ``c_attn`` of every GPT-2 block. The subject layers, the
        shared layer and the mapper stay fully trainable and are saved with the adapter (``modules_to_save``).
        """
        from .lora import add_lora

        return add_lora(self, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules, **lora_kwargs)

    # -- Hub ------------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, model_card: dict | bool = True, **kwargs):
        """``PreTrainedModel.save_pretrained`` (safetensors, config.json), plus a README.md model card built from the
        config: pass ``model_card=dict(datasets=..., metrics=..., ...)`` (``create_model_card``'s arguments) to
        describe the data and results, or ``model_card=False`` to write none."""
        from .model_card import create_model_card

        if kwargs.pop("push_to_hub", False):
            raise ValueError("use model.push_to_hub(repo_id, model_card=...) to upload; it writes the model card")
        super().save_pretrained(save_directory, *args, **kwargs)
        if model_card is not False and kwargs.get("is_main_process", True):
            card = create_model_card(self.config, **(model_card if isinstance(model_card, dict) else {}))
            atomic_write_text(os.path.join(save_directory, "README.md"), str(card))

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
        model_card: dict | None = None,
    ) -> str:
        """Upload weights, config and the generated model card (``model_card`` as in ``save_pretrained``)."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        card = {"repo_id": repo_id, **(model_card or {})}
        if tags:
            card["tags"] = list(card.get("tags") or []) + list(tags)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, max_shard_size=max_shard_size, model_card=card)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                commit_message=commit_message or "Upload BrainPrefixGPT2",
                commit_description=commit_description,
                revision=revision,
                create_pr=create_pr,
            )


__all__ = ["BrainPrefixGPT2", "BrainMapper", "MapperBlock", "decode_captions"]
