"""Beam search for BrainPrefixGPT2 on a pre-allocated KV cache: transformers' beam search, made cheap on a CPU.

Same algorithm as ``GenerationMixin._beam_search`` (transformers 5.24, ``generation/utils.py``), step by step: each
step keeps the ``max(2, 1 + n_eos) * num_beams`` best continuations of the running beams by accumulated
log-probability; those that end (eos or the length limit) and rank among the first ``num_beams`` join the pool of
finished hypotheses, scored ``sum log p / length ** length_penalty``; the best ``num_beams`` others keep running;
the search ends by HF's rules (``early_stopping`` True, False or "never", with its length heuristic). The returned
sequences, padding, ``sequences_scores`` and ``beam_indices`` are HF's.

What differs is how GPT-2 is run (the profiles are in docs/model.md, "Decoding"):

* The prefix goes through GPT-2 once per brain, not once per beam (all beams start from it).
* Keys and values of every layer live in one buffer allocated once for the whole search (HF: ``torch.cat`` of the
  whole cache every step, then ``index_select`` of it to reorder the beams).
* A beam's keys and values stay where they are: a new beam takes over its parent's cache row; when a parent has
  several children, the others get rows of beams that have none, and only the positions where the two rows'
  histories differ are copied (beams share most of their past: 2.7 positions per copy, random GPT-2 base).
* Only the last position's logits are computed; the tanh-approximate GELU runs as one fused kernel; on a CPU in
  float32, the linear layers run through oneDNN with weights packed once per call (torch's default matrix product
  goes through MKL, measured 1.6x (blocks) and 2.2x (LM head) slower on the AMD EPYC this was developed on).

The rows of the cache are in "physical" order; the bookkeeping keeps HF's order (beams sorted by score), and the
last hidden states are put in HF's order before the language-model head, so scores, ties and outputs follow it.
Bit-exactness with HF does not hold (other kernels and matrix shapes: logits agree to ~1e-6); tests compare
tokens, and scores with a tolerance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig
from transformers.pytorch_utils import Conv1D
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput

# Fields of a resolved GenerationConfig that this beam search implements; any other field that differs from
# transformers' global defaults (a logits processor, a stopping criterion, another decoding mode) sends the call to
# transformers' own beam search.
SUPPORTED_FIELDS = {
    "max_new_tokens", "max_length", "num_beams", "eos_token_id", "pad_token_id", "bos_token_id",
    "decoder_start_token_id", "length_penalty", "early_stopping", "num_return_sequences", "return_dict_in_generate",
    "output_scores", "output_logits", "output_attentions", "output_hidden_states", "use_cache",
    "transformers_version", "_from_model_config",
}
# sampling settings: ignored by transformers unless do_sample=True (which is never the fast path)
SAMPLING_FIELDS = {"temperature", "top_k", "top_p", "min_p", "typical_p", "top_h", "epsilon_cutoff", "eta_cutoff"}
TANH_GELUS = {"gelu_new", "gelu_pytorch_tanh"}  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))


def resolve_generation_config(gpt2, generation_kwargs: dict) -> tuple[GenerationConfig | None, str | None]:
    """transformers' own merge of ``gpt2.generation_config``, its global defaults and ``generation_kwargs``.

    Returns ``(config, None)`` when the fast beam search implements these settings exactly, else ``(None, reason)``.
    """
    kwargs = dict(generation_kwargs)
    if "generation_config" in kwargs:
        return None, "a generation_config object was passed"
    if (kwargs.get("num_beams", gpt2.generation_config.num_beams) or 1) < 2:
        return None, "not beam search (num_beams < 2)"
    if "max_length" in kwargs:
        return None, "max_length was passed (the fast path counts new tokens: use max_new_tokens)"
    try:
        config, model_kwargs = gpt2._prepare_generation_config(None, **kwargs)
    except Exception as err:  # noqa: BLE001 - transformers decides; its own generate will raise it again
        return None, f"transformers rejects these settings ({err})"
    if model_kwargs:
        return None, f"arguments other than generation settings: {sorted(model_kwargs)}"
    if not config.num_beams or config.num_beams < 2:
        return None, "not beam search (num_beams < 2)"
    if config.do_sample:
        return None, "beam sampling (do_sample=True)"
    if config.max_new_tokens is None or config.max_new_tokens < 1:
        return None, "max_new_tokens is not set"
    if config.num_return_sequences > config.num_beams:
        return None, "num_return_sequences > num_beams"
    if not config.use_cache or config.output_attentions or config.output_hidden_states:
        return None, "use_cache=False or output_attentions/output_hidden_states requested"
    defaults = GenerationConfig(**GenerationConfig._get_default_generation_params()).to_dict()
    differing = {k for k, v in config.to_dict().items() if defaults.get(k) != v}
    unsupported = sorted(differing - SUPPORTED_FIELDS - SAMPLING_FIELDS)
    if unsupported:
        return None, f"settings the fast path does not implement: {unsupported}"
    reason = _model_unsupported_reason(gpt2)
    if reason:
        return None, reason
    return config, None


def _model_unsupported_reason(gpt2) -> str | None:
    config = gpt2.config
    if getattr(config, "add_cross_attention", False):
        return "GPT-2 with cross-attention"
    if config.reorder_and_upcast_attn and config._attn_implementation == "eager":
        return "reorder_and_upcast_attn"
    if gpt2.training and any(config_p > 0 for config_p in (config.resid_pdrop, config.embd_pdrop, config.attn_pdrop)):
        return "GPT-2 is in training mode with dropout"
    return None


class BeamKVCache:
    """Keys and values of every layer for ``rows`` sequences, allocated once for ``max_length`` positions.

    ``storage``: (rows, n_layer, 2, max_length, heads, head_dim), ``[:, :, 0]`` keys and ``[:, :, 1]`` values
    (positions before heads: measured faster for attention than heads before positions, on a CPU). ``length``
    positions are filled, as many in every row. ``history`` (rows, max_length), on the CPU: an id of the token
    (hypothesis and position) each position holds; two rows hold the same keys and values where their ids agree.
    """

    def __init__(self, rows, n_layer, heads, max_length, head_dim, dtype, device):
        self.storage = torch.empty(rows, n_layer, 2, max_length, heads, head_dim, dtype=dtype, device=device)
        self.history = torch.zeros(rows, max_length, dtype=torch.long)
        self.length = 0

    def keys_values(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views (rows, heads, length, head_dim) of one layer's keys and values."""
        kv = self.storage[:, layer, :, : self.length]
        return kv[:, 0].transpose(1, 2), kv[:, 1].transpose(1, 2)

    def copy_rows(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """Rows ``target`` become copies of rows ``source`` (no target is a source); only the positions from the
        first one where their histories differ are copied."""
        if source.numel() == 0:
            return
        source, target = source.cpu(), target.cpu()
        differs = self.history[target, : self.length] != self.history[source, : self.length]
        starts = differs.int().argmax(dim=1)  # every pair differs somewhere: two live beams are two hypotheses
        for s, t, start in zip(source.tolist(), target.tolist(), starts.tolist()):
            self.storage[t, :, :, start : self.length].copy_(self.storage[s, :, :, start : self.length])
        self.history[target] = self.history[source]  # equal before `start` already


def _linear(module: nn.Module, rows: int, pack: bool):
    """``module`` as a callable; with ``pack``, a plain float32 CPU ``Conv1D``/``nn.Linear`` runs through oneDNN with
    its weight packed once (``torch.ops.mkldnn``, what ``torch.compile`` uses for CPU linears). Anything else (a LoRA
    wrapper, another device or dtype) runs as the module itself."""
    if not (pack and type(module) in (Conv1D, nn.Linear) and module.weight.device.type == "cpu"
            and module.weight.dtype == torch.float32):
        return module
    weight = module.weight.t() if type(module) is Conv1D else module.weight  # (out, in); oneDNN reads the strides
    packed, bias = torch.ops.mkldnn._reorder_linear_weight(weight, rows), module.bias
    return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _can_pack() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _tanh_gelu(x):
    return F.gelu(x, approximate="tanh")


class _GPT2Layers:
    """The callables one decoding step needs from a GPT-2, built once per search (see ``_linear``)."""

    def __init__(self, gpt2, rows: int, pack: bool):
        self.transformer, self.heads = gpt2.transformer, gpt2.config.n_head
        self.blocks = [
            dict(ln_1=b.ln_1, c_attn=_linear(b.attn.c_attn, rows, pack), attn_proj=_linear(b.attn.c_proj, rows, pack),
                 scale=b.attn.scaling, ln_2=b.ln_2, c_fc=_linear(b.mlp.c_fc, rows, pack),
                 act=_tanh_gelu if gpt2.config.activation_function in TANH_GELUS else b.mlp.act,
                 mlp_proj=_linear(b.mlp.c_proj, rows, pack))
            for b in gpt2.transformer.h
        ]
        self.lm_head = _linear(gpt2.lm_head, rows, pack)

    def blocks_forward(self, hidden: torch.Tensor, attend) -> torch.Tensor:
        """GPT-2's blocks and final LayerNorm on ``hidden`` (R, s, d), in eval mode; ``attend(layer, q, k, v, scale)``
        stores the new keys/values and returns the attention output (R, heads, s, head_dim)."""
        rows, s, d = hidden.shape
        for i, b in enumerate(self.blocks):
            q, k, v = b["c_attn"](b["ln_1"](hidden)).split(d, dim=2)
            q, k, v = (t.view(rows, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
            out = attend(i, q, k, v, b["scale"])
            hidden = hidden + b["attn_proj"](out.transpose(1, 2).reshape(rows, s, d))
            hidden = hidden + b["mlp_proj"](b["act"](b["c_fc"](b["ln_2"](hidden))))
        return self.transformer.ln_f(hidden)


def _prefill(layers: _GPT2Layers, prefix: torch.Tensor, cache: BeamKVCache, num_beams: int) -> torch.Tensor:
    """prefix (B, l, d) through GPT-2 once per brain; its keys/values fill every beam row of the brain.
    Returns the last position's hidden state (B, d)."""
    batch, l, _ = prefix.shape
    storage = cache.storage.view(batch, num_beams, *cache.storage.shape[1:])
    positions = torch.arange(l, device=prefix.device)

    def attend(i, q, k, v, scale):
        storage[:, :, i, 0, :l] = k.transpose(1, 2)[:, None]
        storage[:, :, i, 1, :l] = v.transpose(1, 2)[:, None]
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    hidden = layers.blocks_forward(prefix + layers.transformer.wpe(positions), attend)
    cache.length = l
    return hidden[:, -1]


def _decode_step(layers: _GPT2Layers, tokens: torch.Tensor, cache: BeamKVCache, step: int) -> torch.Tensor:
    """tokens (N,) one per buffer row, at position ``cache.length`` -> last hidden states (N, d)."""
    position = cache.length
    cache.length = position + 1
    cache.history[:, position] = step * len(tokens) + torch.arange(len(tokens))

    def attend(i, q, k, v, scale):
        cache.storage[:, i, 0, position] = k[:, :, 0]
        cache.storage[:, i, 1, position] = v[:, :, 0]
        keys, values = cache.keys_values(i)
        return F.scaled_dot_product_attention(q, keys, values, scale=scale)

    transformer = layers.transformer
    hidden = transformer.wte(tokens[:, None]) + transformer.wpe.weight[position]
    return layers.blocks_forward(hidden, attend)[:, 0]


def _inherit_rows(parent_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """parent_rows (B, K): the buffer row (within its brain) of each new beam's parent.

    The first child of a parent keeps the parent's row; each further child takes a row whose beam has no child.
    Returns (rows (B, K), copy sources, copy targets), the copies as flat row indices over all brains.
    """
    batch, k = parent_rows.shape
    order = torch.arange(k, device=parent_rows.device)
    same_parent_earlier = (parent_rows[:, :, None] == parent_rows[:, None, :]) & (order[None, :] < order[:, None])
    inherits = ~same_parent_earlier.any(-1)
    continued = torch.zeros_like(inherits).scatter_(1, parent_rows, True)
    free_rows = torch.sort(continued.long() * k + order, dim=1).values % k  # rows with no child first, ascending
    rank = ((~inherits).long().cumsum(1) - 1).clamp(min=0)
    rows = torch.where(inherits, parent_rows, free_rows.gather(1, rank))
    offset = (torch.arange(batch, device=parent_rows.device) * k)[:, None]
    copies = ~inherits
    return rows, (parent_rows + offset)[copies], (rows + offset)[copies]


class _BeamBookkeeping:
    """transformers' beam-search state and update rule (``_beam_search`` steps c-g of transformers 5.24), for B
    brains at once: running beams and the pool of finished hypotheses, each (B, num_beams, ...), in HF's order."""

    def __init__(self, batch, num_beams, max_length, config: GenerationConfig, device):
        self.num_beams, self.max_length = num_beams, max_length
        self.length_penalty, self.early_stopping = config.length_penalty, config.early_stopping
        eos = config.eos_token_id
        self.eos = None if eos is None else torch.tensor([eos] if isinstance(eos, int) else list(eos), device=device)
        pad = config.pad_token_id
        fill = (pad or int(self.eos[0])) if self.eos is not None else -1  # transformers: `pad or eos[0]`
        self.keep = max(2, 1 + (0 if self.eos is None else self.eos.numel())) * num_beams  # candidates per step
        self.top_num_beam_mask = torch.arange(self.keep, device=device) < num_beams
        self.batch_offset = torch.arange(batch, device=device)[:, None] * num_beams
        self.running_sequences = torch.full((batch, num_beams, max_length), fill, dtype=torch.long, device=device)
        self.sequences = self.running_sequences.clone()
        self.running_beam_scores = torch.zeros(batch, num_beams, device=device)
        self.running_beam_scores[:, 1:] = -1e9  # the beams start equal: only the first one's continuations count
        self.beam_scores = torch.full((batch, num_beams), -1e9, device=device)
        self.is_sent_finished = torch.zeros(batch, num_beams, dtype=torch.bool, device=device)
        self.is_early_stop_heuristic_unsatisfied = torch.ones(batch, 1, dtype=torch.bool, device=device)
        self.running_beam_indices = torch.full((batch, num_beams, max_length), -1, dtype=torch.int32, device=device)
        self.beam_indices = self.running_beam_indices.clone()

    def _gather(self, tensor, index):
        return tensor.gather(1, index[:, :, None].expand(-1, -1, tensor.shape[2]) if tensor.ndim == 3 else index)

    def advance(self, log_probs: torch.Tensor, cur_len: int) -> bool:
        """One step from log_probs (B, K, V) (or (B, 1, V) when all beams are equal); returns whether to go on."""
        batch, _, vocab = log_probs.shape
        accumulated = (log_probs + self.running_beam_scores[:, :, None]).view(batch, -1)
        # the best `keep` continuations of all running beams
        topk_log_probs, topk_indices = torch.topk(accumulated, k=self.keep)
        topk_parents = topk_indices // vocab
        topk_ids = topk_indices % vocab
        topk_sequences = self._gather(self.running_sequences, topk_parents).clone()
        topk_sequences[:, :, cur_len] = topk_ids
        topk_beam_indices = self._gather(self.running_beam_indices, topk_parents).clone()
        topk_beam_indices[:, :, cur_len] = (topk_parents + self.batch_offset).int()
        # which of them end here: eos, or the length limit
        hits = torch.full_like(topk_ids, cur_len + 1 >= self.max_length, dtype=torch.bool)
        if self.eos is not None:
            hits |= torch.isin(topk_ids, self.eos)
        # the best num_beams that do not end keep running
        topk_running_log_probs = topk_log_probs + hits.to(torch.float32) * -1.0e9
        running = torch.topk(topk_running_log_probs, k=self.num_beams)[1]
        self.running_sequences = self._gather(topk_sequences, running)
        self.running_beam_scores = self._gather(topk_running_log_probs, running)
        self.running_beam_indices = self._gather(topk_beam_indices, running)
        # those that end among the first num_beams may enter the pool of finished hypotheses
        just_finished = hits & self.top_num_beam_mask[None, :]
        finished_scores = topk_log_probs / ((cur_len + 1) ** self.length_penalty)
        beams_in_batch_are_full = torch.all(self.is_sent_finished, dim=-1, keepdim=True) & (self.early_stopping is True)
        finished_scores += beams_in_batch_are_full.to(torch.float32) * -1.0e9
        finished_scores += (~self.is_early_stop_heuristic_unsatisfied).to(torch.float32) * -1.0e9
        finished_scores += (~just_finished) * -1.0e9
        merged_scores = torch.cat((self.beam_scores, finished_scores), dim=1)
        best = torch.topk(merged_scores, k=self.num_beams)[1]
        self.sequences = self._gather(torch.cat((self.sequences, topk_sequences), 1), best)
        self.beam_scores = self._gather(merged_scores, best)
        self.beam_indices = self._gather(torch.cat((self.beam_indices, topk_beam_indices), 1), best)
        self.is_sent_finished = self._gather(torch.cat((self.is_sent_finished, just_finished), 1), best)
        # go on while a running beam may still beat the worst finished hypothesis (HF's heuristic) ...
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            best_hypothetical_length = self.max_length
        else:
            best_hypothetical_length = cur_len + 1
        best_possible_running_score = self.running_beam_scores[:, :1] / (best_hypothetical_length**self.length_penalty)
        worst_finished_score = torch.where(self.is_sent_finished, torch.min(self.beam_scores, dim=1, keepdim=True)[0],
                                           -1.0e9)
        self.is_early_stop_heuristic_unsatisfied &= torch.any(best_possible_running_score > worst_finished_score,
                                                              dim=-1, keepdim=True)
        improvement_possible = bool(self.is_early_stop_heuristic_unsatisfied.any())
        # ... some brain still has room (early_stopping=True) and some continuation did not hit the limit
        exists_open_beam = not (bool(self.is_sent_finished.all()) and self.early_stopping is True)
        return improvement_possible and exists_open_beam and not bool(hits.all())

    def running(self, cur_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(parent (B, K): each running beam's parent among the previous step's beams, its last token (B, K))."""
        parents = self.running_beam_indices[:, :, cur_len - 1].long() - self.batch_offset
        return parents, self.running_sequences[:, :, cur_len - 1]

    def best(self, num_return_sequences: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The best hypotheses: sequences and beam indices (B * n, T) cut to the longest, scores (B * n,)."""
        sequences = self.sequences[:, :num_return_sequences].reshape(-1, self.max_length)
        scores = self.beam_scores[:, :num_return_sequences].reshape(-1)
        beam_indices = self.beam_indices[:, :num_return_sequences].reshape(-1, self.max_length)
        generated = int((beam_indices + 1).bool().sum(dim=1).max())
        return sequences[:, :generated], scores, beam_indices[:, :generated]


@torch.no_grad()
def beam_search(gpt2, prefix: torch.Tensor, config: GenerationConfig, pack_weights: bool = True):
    """Beam search from GPT-2 prefix embeddings (B, l, d) with a config from ``resolve_generation_config``.

    ``pack_weights``: on a CPU in float32, run GPT-2's linear layers through oneDNN with weights packed once per
    call (see ``_linear``); False keeps torch's default matrix product (MKL).

    Returns what ``gpt2.generate(inputs_embeds=prefix, ...)`` returns: LongTensor (B * num_return_sequences, T)
    of new tokens, or a ``GenerateBeamDecoderOnlyOutput`` (``cache`` is None) with ``return_dict_in_generate``.
    """
    batch, l, _ = prefix.shape
    num_beams, max_length = config.num_beams, config.max_new_tokens
    beams = _BeamBookkeeping(batch, num_beams, max_length, config, prefix.device)
    want_scores = config.return_dict_in_generate and config.output_scores
    want_logits = config.return_dict_in_generate and config.output_logits
    all_scores, raw_logits = [], []

    gcfg = gpt2.config
    cache = BeamKVCache(batch * num_beams, gcfg.n_layer, gcfg.n_head, l + max_length - 1, gcfg.n_embd // gcfg.n_head,
                        prefix.dtype, prefix.device)
    layers = _GPT2Layers(gpt2, batch * num_beams, pack_weights and _can_pack())
    rows = torch.arange(num_beams, device=prefix.device).expand(batch, num_beams)  # beam (HF's order) -> cache row
    hidden = _prefill(layers, prefix, cache, num_beams)  # (B, d): the beams of a brain share the first step
    cur_len = 0
    while True:
        logits = layers.lm_head(hidden).float()  # (B * K, V) in HF's beam order; (B, V) at the first step
        log_probs = F.log_softmax(logits, dim=-1)
        repeat = num_beams * batch // logits.shape[0]
        if want_logits:
            raw_logits.append(logits.repeat_interleave(repeat, dim=0))
        if want_scores:
            all_scores.append(log_probs.repeat_interleave(repeat, dim=0))
        go_on = beams.advance(log_probs.view(batch, -1, log_probs.shape[-1]), cur_len)
        cur_len += 1
        if not go_on:
            break
        # run the new beams, each in its parent's cache row where possible
        parents, tokens = beams.running(cur_len)
        rows, source, target = _inherit_rows(rows.gather(1, parents))
        cache.copy_rows(source, target)
        physical = (rows + beams.batch_offset).view(-1)
        tokens = torch.empty_like(physical).index_copy_(0, physical, tokens.reshape(-1))
        hidden = _decode_step(layers, tokens, cache, cur_len).index_select(0, physical)

    sequences, scores, beam_indices = beams.best(config.num_return_sequences)
    if not config.return_dict_in_generate:
        return sequences
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences,
        sequences_scores=scores if config.output_scores else None,
        scores=tuple(all_scores) if want_scores else None,
        logits=tuple(raw_logits) if want_logits else None,
        beam_indices=beam_indices,
        cache=None,
    )
