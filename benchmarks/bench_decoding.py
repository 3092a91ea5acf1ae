"""Decoding throughput: BrainPrefixGPT2.generate (batched, KV cache) against ClipCap's decoding, same model.

The baseline reimplements ClipCap's ``generate_beam`` and ``generate2`` (rmokady/CLIP_prefix_caption, predict.py;
described in docs/peers.md §4) as brain-captioning code uses them today: one brain at a time, and every step re-runs
GPT-2 over the whole prefix + text so far (no KV cache) and computes the logits of every position before taking the
last one. Beam search keeps ``beam_size`` beams ranked by their length-normalised log-probability (sum / number of
tokens); a beam that emits the stop token "." keeps its slot and score; decoding ends when every beam has stopped or
after 67 tokens; the best normalised score wins. ``generate2`` filters top-p 0.8 and takes the argmax (greedy).

Ours, all brains in one batch: ``model.generate(betas=..., subject=..., num_beams=5, eos_token_id=<".">,
length_penalty=1.0)`` -- by default the fast beam search (``beam_search.py``: transformers' algorithm on a
pre-allocated KV cache, oneDNN-packed weights on a CPU); the same with ``beam_impl="hf"`` (transformers' own beam
search); the fast one with torch's default matrix product (``pack_weights=False``), to show what the kernels bring;
and greedy decoding (transformers). All run on the same model with random weights at GPT-2-base size (vocabulary
50257); "." is GPT-2's id 13. A random GPT-2 practically never emits ".", so every caption runs to the 67-token
limit: ClipCap's costliest case (its per-step work grows with the length). Real captions are shorter;
``--entry-length 16`` measures that regime. ``--repeats N`` measures every decoder N times, interleaved (the machine
may be shared), and reports medians of the rates and of the per-repeat speed-ups, by wall clock and by CPU time.

Same captions? Greedy decoding is the same algorithm both ways and must agree token for token. Beam search is not
quite: HF moves a beam that emits "." to a separate pool of finished hypotheses (scored sum / length, as ClipCap's)
and keeps ``num_beams`` live beams, while ClipCap lets a stopped beam hold one of its 5 slots. They agree whenever
no "." competes in the beam; otherwise HF may return a caption with an equal or better normalised score. The script
counts identical captions and, for the others, compares both captions' normalised log-probabilities under the model;
it also counts the fast beam search's captions identical to transformers' (same algorithm: all should be).
``--period-scale K`` multiplies the "." embedding by K so that "." does compete (at 6, a third of the greedy
captions of random GPT-2 base stop within 5 tokens), to exercise that difference.

    python benchmarks/bench_decoding.py                          # GPT-2 base size, 64 brains, beam 5 (GPU: a minute)
    python benchmarks/bench_decoding.py --brains 16 --baseline-brains 1 --repeats 3 --threads 2   # CPU (7 min)
    python benchmarks/bench_decoding.py --quick                  # small model, 8 brains: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import transformers

from fgb2i_hf import BrainPrefixGPT2, BrainPrefixGPT2Config
from fgb2i_hf.models.brain_prefix_gpt2.beam_search import beam_search, resolve_generation_config

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
    """fn() -> (result, wall-clock seconds, CPU seconds of this process: all threads, spin-waits included)."""
    synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start, time.process_time() - cpu


def write_json(path: str, label: str, results: dict) -> None:
    """Merge ``results`` under ``runs[label]`` into the JSON file at ``path`` (written to a temporary file, renamed)."""
    runs = {}
    if os.path.exists(path):
        with open(path) as f:
            runs = json.load(f).get("runs", {})
    runs[label] = results
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump({"runs": runs}, f, indent=1)
    os.replace(tmp, path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model (2 layers, width 128), 8 brains, 20 tokens")
    parser.add_argument("--brains", type=int, default=64, help="brains decoded by ours, all in one batch")
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
    parser.add_argument("--repeats", type=int, default=1, help="measure every decoder this many times, interleaved "
                        "(ClipCap, HF beam, fast beam, greedy, ClipCap greedy, then again); medians are reported")
    parser.add_argument("--skip-greedy", action="store_true")
    parser.add_argument("--skip-hf-beam", action="store_true", help="do not time transformers' own beam search")
    parser.add_argument("--skip-unpacked", action="store_true", help="do not time the fast beam search without "
                        "oneDNN weight packing (torch's default matrix product)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); default: torch's")
    parser.add_argument("--json", help="also write the results here, merged with the file's other runs under a "
                        "label naming the device, threads, caption length and '.' scale")
    if "--quick" in (sys.argv[1:] if argv is None else argv):  # smaller defaults; explicit flags still win
        parser.set_defaults(brains=8, entry_length=20, n_layer=2, n_embd=128, n_head=4, voxels=512)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model(args)
    gpt2, stop, n, limit = model.gpt2, args.stop_token, args.brains, args.entry_length
    betas = torch.randn(n, args.voxels, generator=torch.Generator().manual_seed(args.seed)).to(args.device)
    device_name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu"
    n_base = min(n, args.baseline_brains or n)
    print(f"model: GPT-2 {args.n_layer} layers x {args.n_embd}, vocab 50257, prefix 10, mapper 8x8, "
          f"{args.voxels} voxels; fp32 on {device_name} ({torch.get_num_threads()} CPU threads); {n} brains in one "
          f"batch (ClipCap: {n_base}, one at a time), beam {args.beams}, stop at '.' (id {stop}) or {limit} tokens, "
          f"'.' embedding x{args.period_scale:g}; {args.repeats} interleaved repeat(s), medians; "
          f"load average {os.getloadavg()[0]:.1f}")
    results = {"device": device_name, "threads": torch.get_num_threads(), "brains": n, "clipcap_brains": n_base,
               "beams": args.beams, "entry_length": limit, "period_scale": args.period_scale,
               "n_layer": args.n_layer, "n_embd": args.n_embd, "repeats": args.repeats,
               "torch": torch.__version__, "transformers": transformers.__version__,
               "load_average_start": os.getloadavg()[0]}

    def ours(**kwargs):
        return model.generate(betas=betas, subject="subj01", **{"max_new_tokens": limit, "eos_token_id": stop, **kwargs})

    def baseline(decode):
        out = []
        for i in range(n_base):
            prefix = model.encode_brain(betas[i : i + 1], "subj01")
            out.append(decode(prefix))
        return out

    # name -> (is ours, how to decode); ours decode all n brains in one batch, ClipCap the first n_base one at a time
    beam = dict(num_beams=args.beams, length_penalty=1.0)

    def fast_unpacked():  # what generate(beam_impl="fast") runs, with torch's default matrix product
        config, _ = resolve_generation_config(gpt2, {"max_new_tokens": limit, "eos_token_id": stop,
                                                     "pad_token_id": model.eos_token_id, **beam})
        return beam_search(gpt2, model.encode_brain(betas, "subj01"), config, pack_weights=False)

    decoders = {
        "clipcap_beam": (False, lambda: baseline(lambda p: clipcap_generate_beam(gpt2, p, args.beams, limit, stop)[0][0])),
        "hf_beam": (True, lambda: ours(**beam, beam_impl="hf")),
        "fast_beam": (True, lambda: ours(**beam, beam_impl="fast")),
        "fast_beam_unpacked": (True, fast_unpacked),
        "greedy": (True, lambda: ours(do_sample=False)),
        "clipcap_greedy": (False, lambda: baseline(lambda p: clipcap_generate_greedy(gpt2, p, limit, stop_token=stop))),
    }
    if args.skip_hf_beam:
        del decoders["hf_beam"]
    if args.skip_unpacked or torch.device(args.device).type != "cpu":
        del decoders["fast_beam_unpacked"]
    if args.skip_greedy:
        del decoders["greedy"], decoders["clipcap_greedy"]
    for name in decoders:  # warm-up (allocator, kernels)
        if name in ("hf_beam", "fast_beam"):
            ours(**beam, beam_impl=name.split("_")[0], max_new_tokens=2)
        if name == "greedy":
            ours(do_sample=False, max_new_tokens=2)

    rates = {name: [] for name in decoders}  # captions per wall-clock second
    cpu_rates = {name: [] for name in decoders}  # captions per CPU second of this process
    captions = {}
    for repeat in range(args.repeats):
        for name, (is_ours, decode) in decoders.items():
            out, seconds, cpu_seconds = timed(decode, args.device)
            count = n if is_ours else n_base
            rates[name].append(count / seconds)
            cpu_rates[name].append(count / cpu_seconds)
            captions[name] = [cut_at_stop(r, stop, limit) for r in out.tolist()] if is_ours else out
            print(f"  repeat {repeat + 1}/{args.repeats}: {name:18s} {count:3d} captions in {seconds:8.2f} s "
                  f"({cpu_seconds:8.2f} CPU s); load average {os.getloadavg()[0]:.1f}", flush=True)
    results["load_average_end"] = os.getloadavg()[0]

    def report(name, reference):
        """Rates, speed-up against ClipCap (median over repeats of the ratio within a repeat), same captions."""
        ours_tokens, ref_tokens = captions[name][:n_base], captions[reference]
        ratios = [a / b for a, b in zip(rates[name], rates[reference])]
        cpu_ratios = [a / b for a, b in zip(cpu_rates[name], cpu_rates[reference])]
        same = sum(a == b for a, b in zip(ours_tokens, ref_tokens))
        lengths = [len(t) for t in ref_tokens]
        line = {"captions_per_s": statistics.median(rates[name]), "captions_per_s_all": rates[name],
                "clipcap_captions_per_s": statistics.median(rates[reference]),
                "clipcap_captions_per_s_all": rates[reference], "speedup": statistics.median(ratios),
                "speedup_all": ratios, "cpu_speedup": statistics.median(cpu_ratios), "cpu_speedup_all": cpu_ratios,
                "identical": same, "mean_tokens": sum(lengths) / n_base,
                "stopped_at_period": sum(t[-1] == stop for t in ref_tokens)}
        if same < n_base:  # which caption scores better, by ClipCap's own criterion?
            gaps = []
            for i, (a, b) in enumerate(zip(ours_tokens, ref_tokens)):
                if a != b:
                    prefix = model.encode_brain(betas[i : i + 1], "subj01")
                    gaps.append(normalised_logprob(gpt2, prefix, a) - normalised_logprob(gpt2, prefix, b))
            line.update(differing_ours_better=sum(g > 1e-5 for g in gaps), differing_ours_worse=sum(g < -1e-5 for g in gaps),
                        differing_score_gap_mean=sum(gaps) / len(gaps))
        return line

    rows = [("beam", "fast_beam", "clipcap_beam", f"fast beam (beam_search.py, batch {n})"),
            ("beam_unpacked", "fast_beam_unpacked", "clipcap_beam", "  same, torch's default matmul"),
            ("beam_hf", "hf_beam", "clipcap_beam", f"HF beam (transformers, batch {n})"),
            ("greedy", "greedy", "clipcap_greedy", f"greedy (transformers, batch {n})")]
    for key, name, reference, title in rows:
        if name not in decoders:
            continue
        line = results[key] = report(name, reference)
        print(f"{title:36s} {line['captions_per_s']:8.3f} captions/s | ClipCap {line['clipcap_captions_per_s']:8.4f} "
              f"captions/s | speedup {line['speedup']:5.1f}x (repeats: {', '.join(f'{r:.1f}' for r in line['speedup_all'])}; "
              f"by CPU time {line['cpu_speedup']:.1f}x)")
        print(f"{'':36s} identical to ClipCap's {line['identical']}/{n_base}; mean caption {line['mean_tokens']:.1f} "
              f"tokens, {line['stopped_at_period']}/{n_base} stopped at '.'"
              + ("" if line["identical"] == n_base else f"; of the {n_base - line['identical']} that differ, ours "
                 f"scores higher (sum log p / length) in {line['differing_ours_better']}, lower in "
                 f"{line['differing_ours_worse']}, mean gap {line['differing_score_gap_mean']:+.4f}"))
    if "hf_beam" in decoders:
        same = sum(a == b for a, b in zip(captions["fast_beam"], captions["hf_beam"]))
        ratios = [a / b for a, b in zip(rates["fast_beam"], rates["hf_beam"])]
        cpu_ratios = [a / b for a, b in zip(cpu_rates["fast_beam"], cpu_rates["hf_beam"])]
        stopped = sum(t[-1] == stop for t in captions["hf_beam"])
        results["fast_vs_hf"] = {"identical": same, "of": n, "hf_stopped_at_period": stopped,
                                 "speedup": statistics.median(ratios), "speedup_all": ratios,
                                 "cpu_speedup": statistics.median(cpu_ratios)}
        print(f"fast beam vs HF beam: identical captions {same}/{n} ({stopped} of HF's stop at '.'); "
              f"{statistics.median(ratios):.2f}x faster ({statistics.median(cpu_ratios):.2f}x by CPU time)")
    if args.json:
        label = f"{device_name}, {results['threads']} threads, {limit} tokens, '.' x{args.period_scale:g}, {n} brains"
        write_json(args.json, label, results)
    return results


if __name__ == "__main__":
    main()
