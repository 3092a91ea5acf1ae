"""Beam search for BrainPrefixGPT2 on a pre-allocated KV cache: transformers' beam search, made cheap on a CPU.

Same algorithm as ``GenerationMixin._beam_search`` (transformers 5.24, ``generation/utils.py``), step by step: each
step keeps the ``max(2, 1 + n_eos) * num_beams`` best continuations of the running beams by accumulated
log-probability; those that end (eos or the length limit) and rank among the first ``num_beams`` join the pool of
finished hypotheses, scored ``sum log p / length ** length_penalty``; the best ``num_beams`` others keep running;
the search ends by HF's rules (``early_stopping`` True, False or "never", with its length heuristic). The returned
sequences, padding, ``sequences_scores`` and ``beam_indices`` are HF's.

What differs is how GPT-2 is run (the profile in docs/model.md, "Decoding"):

* The prefix goes through GPT-2 once per brain, not once per beam (all beams start from it).
* Keys and values of every layer live in one buffer allocated once for the whole search (no ``torch.cat`` per step).
* A beam's keys and values stay where they are: a new beam takes over its parent's buffer row; only when a parent
  has several children are its generated positions copied into the row of a beam that has none (the prefix
  positions are the same in every row of a brain and never move). HF reorders the whole cache every step.
* Only the last position's logits are computed; the tanh-approximate GELU runs as one fused kernel.

The rows of the buffer are in "physical" order; the bookkeeping keeps HF's "logical" order (beams sorted by
score), and the final hidden states are put in logical order before the language-model head, so scores, ties and
outputs follow HF's order. Bit-exactness with HF is not guaranteed (different kernels and matrix shapes); tests
compare tokens, and scores with a tolerance.
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
    positions are filled, as many in every row. ``history`` (rows, max_length), on the CPU: an id of the hypothesis whose token each position holds; two
    rows hold the same keys and values wherever their ids agree (beams that share their first tokens).
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
            self.history[t, start : self.length] = self.history[s, start : self.length]


def _linear(module: nn.Module, rows: int, pack: bool):
    """``module`` as a callable; with ``pack``, a plain float32 CPU ``Conv1D``/``nn.Linear`` runs through oneDNN with
    its weight packed once (``torch.ops.mkldnn``, what ``torch.compile`` uses for CPU linears). Anything else (a LoRA
    wrapper, another device or dtype) runs as the module itself."""
    weight = getattr(module, "weight", None)
    if not (pack and type(module) in (Conv1D, nn.Linear) and weight.device.type == "cpu" and weight.dtype == torch.float32):
        return module
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.t().contiguous() if type(module) is Conv1D else weight, rows)
    bias = module.bias
    return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


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


@torch.no_grad()
def beam_search(gpt2, prefix: torch.Tensor, config: GenerationConfig, pack_weights: bool = True):
    """Beam search from GPT-2 prefix embeddings (B, l, d) with a config from ``resolve_generation_config``.

    ``pack_weights``: on a CPU in float32, run GPT-2's linear layers through oneDNN with weights packed once per
    call (see ``_linear``); False keeps torch's default matrix product (MKL).

    Returns what ``gpt2.generate(inputs_embeds=prefix, ...)`` returns: LongTensor (B * num_return_sequences, T)
    of new tokens, or a ``GenerateBeamDecoderOnlyOutput`` (``cache`` is None) with ``return_dict_in_generate``.
    """
    device = prefix.device
    batch, l, _ = prefix.shape
    num_beams, max_length = config.num_beams, config.max_new_tokens
    length_penalty, early_stopping = config.length_penalty, config.early_stopping
    eos = config.eos_token_id
    eos = None if eos is None else torch.tensor([eos] if isinstance(eos, int) else list(eos), device=device)
    pad = config.pad_token_id
    fill = (pad or int(eos[0])) if eos is not None else -1  # transformers: `pad_token_id or eos_token_id[0]`
    keep = max(2, 1 + (0 if eos is None else eos.numel())) * num_beams
    top_num_beam_mask = torch.arange(keep, device=device) < num_beams
    want_scores = config.return_dict_in_generate and config.output_scores
    want_logits = config.return_dict_in_generate and config.output_logits
    all_scores, raw_logits = [], []

    gcfg = gpt2.config
    cache = BeamKVCache(batch * num_beams, gcfg.n_layer, gcfg.n_head, l + max_length - 1, gcfg.n_embd // gcfg.n_head,
                        prefix.dtype, device)
    running_sequences = torch.full((batch, num_beams, max_length), fill, dtype=torch.long, device=device)
    sequences = running_sequences.clone()
    running_beam_scores = torch.zeros(batch, num_beams, device=device)
    running_beam_scores[:, 1:] = -1e9  # the beams start equal: only the first one's continuations count
    beam_scores = torch.full((batch, num_beams), -1e9, device=device)
    is_sent_finished = torch.zeros(batch, num_beams, dtype=torch.bool, device=device)
    is_early_stop_heuristic_unsatisfied = torch.ones(batch, 1, dtype=torch.bool, device=device)
    running_beam_indices = torch.full((batch, num_beams, max_length), -1, dtype=torch.int32, device=device)
    beam_indices = running_beam_indices.clone()
    batch_offset = torch.arange(batch, device=device)[:, None] * num_beams
    rows = torch.arange(num_beams, device=device).expand(batch, num_beams)  # logical beam -> buffer row

    layers = _GPT2Layers(gpt2, batch * num_beams, pack_weights and torch.backends.mkldnn.is_available())
    hidden = _prefill(layers, prefix, cache, num_beams)  # (B, d): the beams of a brain share the first step
    cur_len = 0
    while True:
        logits = layers.lm_head(hidden).float()  # (B*K, V) in logical order; (B, V) at the first step
        log_probs = F.log_softmax(logits, dim=-1)
        per_brain = logits.shape[0] // batch
        if want_logits:
            raw_logits.append(logits.repeat_interleave(num_beams // per_brain, dim=0))
        if want_scores:
            all_scores.append(log_probs.repeat_interleave(num_beams // per_brain, dim=0))
        vocab = log_probs.shape[-1]
        accumulated = (log_probs.view(batch, per_brain, vocab) + running_beam_scores[:, :, None]).view(batch, -1)

        # top-k continuations
        topk_log_probs, topk_indices = torch.topk(accumulated, k=keep)
        topk_parents = topk_indices // vocab
        topk_ids = topk_indices % vocab
        topk_running_sequences = running_sequences.gather(1, topk_parents[:, :, None].expand(-1, -1, max_length)).clone()
        topk_running_sequences[:, :, cur_len] = topk_ids
        topk_running_beam_indices = running_beam_indices.gather(1, topk_parents[:, :, None].expand(-1, -1, max_length)).clone()
        topk_running_beam_indices[:, :, cur_len] = (topk_parents + batch_offset).int()

        # which continuations end here: eos, or the length limit
        hits = torch.full_like(topk_ids, cur_len + 1 >= max_length, dtype=torch.bool)
        if eos is not None:
            hits |= torch.isin(topk_ids, eos)

        # the best num_beams continuations that do not end keep running
        topk_running_log_probs = topk_log_probs + hits.to(torch.float32) * -1.0e9
        next_topk = torch.topk(topk_running_log_probs, k=num_beams)[1]
        running_sequences = topk_running_sequences.gather(1, next_topk[:, :, None].expand(-1, -1, max_length))
        running_beam_scores = topk_running_log_probs.gather(1, next_topk)
        running_beam_indices = topk_running_beam_indices.gather(1, next_topk[:, :, None].expand(-1, -1, max_length))

        # those that end among the first num_beams may enter the finished pool
        just_finished = hits & top_num_beam_mask[None, :]
        finished_scores = topk_log_probs / ((cur_len + 1) ** length_penalty)
        beams_in_batch_are_full = torch.all(is_sent_finished, dim=-1, keepdim=True) & (early_stopping is True)
        finished_scores += beams_in_batch_are_full.to(torch.float32) * -1.0e9
        finished_scores += (~is_early_stop_heuristic_unsatisfied).to(torch.float32) * -1.0e9
        finished_scores += (~just_finished) * -1.0e9
        merged_scores = torch.cat((beam_scores, finished_scores), dim=1)
        best = torch.topk(merged_scores, k=num_beams)[1]
        sequences = torch.cat((sequences, topk_running_sequences), 1).gather(1, best[:, :, None].expand(-1, -1, max_length))
        beam_scores = merged_scores.gather(1, best)
        beam_indices = torch.cat((beam_indices, topk_running_beam_indices), 1).gather(
            1, best[:, :, None].expand(-1, -1, max_length))
        is_sent_finished = torch.cat((is_sent_finished, just_finished), dim=1).gather(1, best)

        cur_len += 1
        if early_stopping == "never" and length_penalty > 0.0:
            best_hypothetical_length = max_length
        else:
            best_hypothetical_length = cur_len
        best_possible_running_score = running_beam_scores[:, :1] / (best_hypothetical_length**length_penalty)
        worst_finished_score = torch.where(is_sent_finished, torch.min(beam_scores, dim=1, keepdim=True)[0], -1.0e9)
        is_early_stop_heuristic_unsatisfied = is_early_stop_heuristic_unsatisfied & torch.any(
            best_possible_running_score > worst_finished_score, dim=-1, keepdim=True)
        improvement_possible = bool(is_early_stop_heuristic_unsatisfied.any())
        exists_open_beam = not (bool(is_sent_finished.all()) and early_stopping is True)
        if not (improvement_possible and exists_open_beam and not bool(hits.all())):
            break

        # run the new running beams: each in its parent's buffer row where possible
        parents = running_beam_indices[:, :, cur_len - 1].long() - batch_offset  # logical parent within the brain
        rows, source, target = _inherit_rows(rows.gather(1, parents))
        cache.copy_rows(source, target)
        physical = (rows + batch_offset).view(-1)
        tokens = torch.empty_like(physical).index_copy_(0, physical, running_sequences[:, :, cur_len - 1].reshape(-1))
        hidden = _decode_step(layers, tokens, cache, cur_len).index_select(0, physical)

    sequences = sequences[:, : config.num_return_sequences].reshape(-1, max_length)
    beam_scores = beam_scores[:, : config.num_return_sequences].reshape(-1)
    beam_indices = beam_indices[:, : config.num_return_sequences].reshape(-1, max_length)
    generated = int((beam_indices + 1).bool().sum(dim=1).max())
    sequences, beam_indices = sequences[:, :generated], beam_indices[:, :generated]
    if not config.return_dict_in_generate:
        return sequences
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences,
        sequences_scores=beam_scores if config.output_scores else None,
        scores=tuple(all_scores) if want_scores else None,
        logits=tuple(raw_logits) if want_logits else None,
        beam_indices=beam_indices,
        cache=None,
    )
