"""Decoding throughput: BrainPrefixGPT2.generate (batched, KV cache) against ClipCap's decoding, same model.

The baseline reimplements ClipCap's ``generate_beam`` and ``generate2`` (rmokady/CLIP_prefix_caption, predict.py;
described in docs/peers.md §4) as brain-captioning code uses them today: one brain at a time, and every step re-runs
GPT-2 over the whole prefix + text so far (no KV cache) and computes the logits of every position before taking the
last one. Beam search keeps ``beam_size`` beams ranked by their length-normalised log-probability (sum / number of
tokens); a beam that emits the stop token "." keeps its slot and score; decoding ends when every beam has stopped or
after 67 tokens; the best normalised score wins. ``generate2`` filters top-p 0.8 and takes the argmax (greedy).

Ours: ``model.generate(betas=..., subject=..., num_beams=5, eos_token_id=<".">, length_penalty=1.0)``, all brains
in one batch, through GPT-2's own generate with its KV cache. Both run on the same model with random weights at
GPT-2-base size (vocabulary 50257); "." is GPT-2's id 13. A random GPT-2 practically never emits ".", so every
caption runs to the 67-token limit: ClipCap's costliest case (its per-step work grows with the length). Real
captions are shorter; ``--entry-length 16`` measures that regime.

Same captions? Greedy decoding is the same algorithm both ways and must agree token for token. Beam search is not
quite: HF moves a beam that emits "." to a separate pool of finished hypotheses (scored sum / length, as ClipCap's)
and keeps ``num_beams`` live beams, while ClipCap lets a stopped beam hold one of its 5 slots. They agree whenever
no "." competes in the beam; otherwise HF may return a caption with an equal or better normalised score. The script
counts identical captions and, for the others, compares both captions' normalised log-probabilities under the model.
``--period-scale K`` multiplies the "." embedding by K so that "." does compete (at 6, a third of the greedy
captions of random GPT-2 base stop within 5 tokens), to exercise that difference.

    python benchmarks/bench_decoding.py                          # GPT-2 base size, 64 brains, beam 5 (GPU: a minute)
    python benchmarks/bench_decoding.py --baseline-brains 4      # on a CPU: time ClipCap on 4 brains (a rate)
    python benchmarks/bench_decoding.py --quick                  # small model, 8 brains: a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from fgb2i_hf import BrainPrefixGPT2, BrainPrefixGPT2Config

GPT2_PERIOD_ID = 13  # "." in GPT-2's vocabulary


def build_model(args) -> BrainPrefixGPT2:
    gpt2 = dict(vocab_size=50257, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    config = BrainPrefixGPT2Config(voxel_counts={"subj01": args.voxels}, prefix_length=10, mapper_layers=8,
                                   mapper_heads=8, gpt2_config=gpt2, max_caption_tokens=args.entry_length)
    torch.manual_seed(args.seed)
    model = BrainPrefixGPT2(config).eval().to(args.device)
    with torch.no_grad():
        model.gpt2.transformer.wte.weight[args.stop_token] *= args.period_scale
    return model


# -- ClipCap's decoding, reimplemented ----------------------------------------------------------------------------
@torch.no_grad()
def clipcap_generate_beam(gpt2, prefix, beam_size=5, entry_length=67, stop_token=GPT2_PERIOD_ID):
    """One brain: prefix (1, l, d) -> [(tokens, normalised score)], best first. No cache, full logits each step."""
    wte = gpt2.transformer.wte
    embeds, tokens, scores = prefix, None, None
    lengths = torch.ones(beam_size, device=prefix.device)
    stopped = torch.zeros(beam_size, dtype=torch.bool, device=prefix.device)
    for _ in range(entry_length):
        logits = gpt2(inputs_embeds=embeds).logits[:, -1, :]  # every position's logits computed, the last one used
        logprobs = logits.softmax(-1).log()
        if scores is None:  # first step: the beam_size best first tokens
            scores, next_tokens = logprobs.topk(beam_size, -1)
            scores, next_tokens = scores[0], next_tokens.view(beam_size, 1)
            embeds = embeds.expand(beam_size, *embeds.shape[1:])
            tokens = next_tokens
        else:
            logprobs[stopped] = -float("inf")  # a stopped beam may only "continue" with token 0 at no cost ...
            logprobs[stopped, 0] = 0.0
            totals = scores[:, None] + logprobs
            lengths[~stopped] += 1  # ... and its length does not grow, so its normalised score stays
            normalised, flat = (totals / lengths[:, None]).view(-1).topk(beam_size, -1)
            source = flat // totals.shape[1]
            next_tokens = (flat % totals.shape[1]).view(beam_size, 1)
            lengths, stopped, embeds = lengths[source], stopped[source], embeds[source]
            tokens = torch.cat([tokens[source], next_tokens], dim=1)
            scores = normalised * lengths
        embeds = torch.cat([embeds, wte(next_tokens)], dim=1)
        stopped = stopped | next_tokens[:, 0].eq(stop_token)
        if stopped.all():
            break
    normalised = scores / lengths
    order = normalised.argsort(descending=True)
    return [(tokens[i, : int(lengths[i])].tolist(), float(normalised[i])) for i in order]


@torch.no_grad()
def clipcap_generate_greedy(gpt2, prefix, entry_length=67, top_p=0.8, stop_token=GPT2_PERIOD_ID):
    """ClipCap's generate2 for one brain: top-p filter, then argmax; no cache, full logits each step."""
    wte = gpt2.transformer.wte
    embeds, tokens = prefix, []
    for _ in range(entry_length):
        logits = gpt2(inputs_embeds=embeds).logits[:, -1, :]
        sorted_logits, sorted_indices = torch.sort(logits, descending=True)
        remove = torch.cumsum(sorted_logits.softmax(-1), dim=-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        logits[:, sorted_indices[remove]] = -float("inf")
        next_token = torch.argmax(logits, -1)
        tokens.append(int(next_token))
        embeds = torch.cat([embeds, wte(next_token)[:, None]], dim=1)
        if tokens[-1] == stop_token:
            break
    return tokens


# -- helpers --------------------------------------------------------------------------------------------------------
def cut_at_stop(row: list[int], stop: int, limit: int) -> list[int]:
    return row[: row.index(stop) + 1] if stop in row[:limit] else row[:limit]


@torch.no_grad()
def normalised_logprob(gpt2, prefix, tokens) -> float:
    """sum log p(tokens | prefix) / len(tokens), by one full forward pass."""
    ids = torch.tensor([tokens], device=prefix.device)
    embeds = torch.cat([prefix, gpt2.transformer.wte(ids[:, :-1])], dim=1)
    logprobs = gpt2(inputs_embeds=embeds).logits[0, prefix.shape[1] - 1 :].log_softmax(-1)
    return float(logprobs.gather(1, ids[0][:, None]).sum()) / len(tokens)


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model (2 layers, width 128), 8 brains, 20 tokens")
    parser.add_argument("--brains", type=int, default=64)
    parser.add_argument("--beams", type=int, default=5)
    parser.add_argument("--entry-length", type=int, default=67, help="ClipCap's maximum caption length")
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--n-head", type=int, default=12)
    parser.add_argument("--voxels", type=int, default=15724, help="subj01's nsdgeneral voxel count")
    parser.add_argument("--period-scale", type=float, default=1.0,
                        help="multiply the '.' embedding by this, so that '.' competes in the beams")
    parser.add_argument("--stop-token", type=int, default=GPT2_PERIOD_ID)
    parser.add_argument("--baseline-brains", type=int, help="run ClipCap's decoding on the first N brains only "
                        "(captions/s is a rate; the captions are compared on those N); default: all")
    parser.add_argument("--skip-greedy", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); default: torch's")
    parser.add_argument("--json", help="also write the results here")
    if "--quick" in (sys.argv[1:] if argv is None else argv):  # smaller defaults; explicit flags still win
        parser.set_defaults(brains=8, entry_length=20, n_layer=2, n_embd=128, n_head=4, voxels=512)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model(args)
    gpt2, stop, n, limit = model.gpt2, args.stop_token, args.brains, args.entry_length
    betas = torch.randn(n, args.voxels, generator=torch.Generator().manual_seed(args.seed)).to(args.device)
    device_name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu"
    print(f"model: GPT-2 {args.n_layer} layers x {args.n_embd}, vocab 50257, prefix 10, mapper 8x8, "
          f"{args.voxels} voxels; fp32 on {device_name} ({torch.get_num_threads()} CPU threads); {n} brains, "
          f"beam {args.beams}, stop at '.' (id {stop}) or {limit} tokens, '.' embedding x{args.period_scale:g}")
    results = {"device": device_name, "threads": torch.get_num_threads(), "brains": n, "beams": args.beams,
               "entry_length": limit, "n_layer": args.n_layer, "n_embd": args.n_embd}

    def ours(**kwargs):
        return model.generate(betas=betas, subject="subj01", **{"max_new_tokens": limit, "eos_token_id": stop, **kwargs})

    n_base = min(n, args.baseline_brains or n)

    def baseline(decode):
        out = []
        for i in range(n_base):
            prefix = model.encode_brain(betas[i : i + 1], "subj01")
            out.append(decode(prefix))
        return out

    ours(num_beams=args.beams, max_new_tokens=2)  # warm-up (allocator, kernels)
    modes = [("beam", args.beams)] + ([] if args.skip_greedy else [("greedy", 1)])
    for mode, beams in modes:
        if mode == "beam":
            generated, t_ours = timed(lambda: ours(num_beams=beams, length_penalty=1.0), args.device)
            reference, t_base = timed(lambda: baseline(
                lambda p: clipcap_generate_beam(gpt2, p, beams, limit, stop)[0][0]), args.device)
        else:
            generated, t_ours = timed(lambda: ours(do_sample=False), args.device)
            reference, t_base = timed(lambda: baseline(
                lambda p: clipcap_generate_greedy(gpt2, p, limit, stop_token=stop)), args.device)
        ours_tokens = [cut_at_stop(row, stop, limit) for row in generated.tolist()][:n_base]
        same = sum(a == b for a, b in zip(ours_tokens, reference))
        lengths = [len(t) for t in reference]
        ours_rate, base_rate = n / t_ours, n_base / t_base
        line = {"ours_s": t_ours, "clipcap_s": t_base, "clipcap_brains": n_base, "ours_captions_per_s": ours_rate,
                "clipcap_captions_per_s": base_rate, "speedup": ours_rate / base_rate, "identical": same,
                "mean_tokens": sum(lengths) / n_base, "stopped_at_period": sum(t[-1] == stop for t in reference)}
        if same < n_base:  # which caption scores better, by ClipCap's own criterion?
            better = worse = 0
            gaps = []
            for i, (a, b) in enumerate(zip(ours_tokens, reference)):
                if a != b:
                    prefix = model.encode_brain(betas[i : i + 1], "subj01")
                    gap = normalised_logprob(gpt2, prefix, a) - normalised_logprob(gpt2, prefix, b)
                    gaps.append(gap)
                    better += gap > 1e-5
                    worse += gap < -1e-5
            line.update(differing_ours_better=better, differing_ours_worse=worse,
                        differing_score_gap_mean=sum(gaps) / len(gaps))
        results[mode] = line
        print(f"{mode:6s} ours (generate, batch {n}, KV cache): {ours_rate:8.2f} captions/s ({t_ours:.2f} s) | "
              f"ClipCap (one brain at a time, no cache): {base_rate:8.3f} captions/s ({t_base:.2f} s for {n_base}) | "
              f"speedup {ours_rate / base_rate:.1f}x")
        print(f"       identical captions {same}/{n_base}; mean caption {line['mean_tokens']:.1f} tokens, "
              f"{line['stopped_at_period']}/{n_base} stopped at '.'"
              + ("" if same == n_base else f"; of the {n_base - same} that differ, ours scores higher (sum log p / length) in "
                 f"{line['differing_ours_better']}, lower in {line['differing_ours_worse']}, mean gap "
                 f"{line['differing_score_gap_mean']:+.4f}"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
