"""Greedy tokens of two computations that agree only up to float rounding (another batch size, the KV cache vs a
full recompute, a reloaded copy whose weights sit at other memory alignments, so BLAS picks other kernels).

Their logits differ by ~1e-6 on x86-64 CPUs (5.6e-6 measured after a save/load round trip on an AMD EPYC), which can
flip an argmax only where the two largest logits are closer than that. Tests therefore compare the logits with a
tolerance, and compare tokens exactly only after checking that every greedy step of the inputs has a top-1/top-2
gap of at least ``MARGIN``, far above that noise.
"""

import torch

MARGIN = 1e-3  # smallest top-1/top-2 logit gap at which exact token comparison is safe (>100x the rounding noise)


def greedy_with_logits(model, betas, subject, **generation_kwargs):
    """Greedy tokens (B, T) and the logits each step was chosen from (B, T, vocab)."""
    out = model.generate(betas=betas, subject=subject, do_sample=False, num_beams=1, output_logits=True,
                         return_dict_in_generate=True, **generation_kwargs)
    return out.sequences, torch.stack(out.logits, 1).float()


def row_greedy_margins(tokens: torch.Tensor, logits: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(B,) the smallest top-1/top-2 logit gap over the steps that decide each row's caption (up to its first eos)."""
    top2 = logits.topk(2, dim=-1).values
    gap = top2[..., 0] - top2[..., 1]  # (B, T)
    is_eos = tokens == eos_token_id
    live = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # steps up to and including the first eos
    return gap.masked_fill(~live, float("inf")).min(dim=1).values


def smallest_greedy_margin(tokens: torch.Tensor, logits: torch.Tensor, eos_token_id: int) -> float:
    return float(row_greedy_margins(tokens, logits, eos_token_id).min())


def assert_greedy_is_decisive(model, betas, subject, eos_token_id: int, **generation_kwargs) -> torch.Tensor:
    """Assert that no greedy step of ``betas`` is a near-tie (gap >= MARGIN), so that any computation agreeing with
    this one up to rounding must produce the same tokens; returns the tokens."""
    tokens, logits = greedy_with_logits(model, betas, subject, **generation_kwargs)
    margin = smallest_greedy_margin(tokens, logits, eos_token_id)
    assert margin >= MARGIN, f"a greedy step is a near-tie (top-2 gap {margin:.2e} < {MARGIN}): pick other inputs"
    return tokens


def decisive_rows(model, dataset, rows, eos_token_id: int, batch_size: int = 64, **generation_kwargs) -> list[bool]:
    """For rows of an NSD dataset: whether each row's greedy caption has no near-tie step (the rows whose captions
    two computations agreeing to rounding must share)."""
    from fgb2i_hf.data import betas_tensor

    rows = list(rows)
    generation_kwargs.setdefault("max_new_tokens", model.config.max_caption_tokens)
    out = []
    for start in range(0, len(rows), batch_size):
        part = dataset.select(rows[start : start + batch_size]).with_format("numpy", columns=["betas"],
                                                                          output_all_columns=True)[:]
        tokens, logits = greedy_with_logits(model, betas_tensor(part["betas"]), list(part["subject"]),
                                            **generation_kwargs)
        out += (row_greedy_margins(tokens, logits, eos_token_id) >= MARGIN).tolist()
    return out
