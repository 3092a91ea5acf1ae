"""BLEU, ROUGE-L and CIDEr-D with the COCO caption evaluation's conventions, reimplemented.

All three score captions that are already PTB-tokenised (:func:`fgb2i_hf.metrics.ptb.ptb_tokenize`),
given as lists of tokens. Definitions, with the COCO evaluation's (pycocoevalcap's) choices:

BLEU-n (Papineni et al. 2002), corpus level: clipped n-gram matches (each candidate n-gram counted at
most as often as in the reference that has it most) summed over the corpus, divided by the candidate
n-grams; BLEU-n is the geometric mean of the precisions p_1..p_n times the brevity penalty
exp(1 - r/c) when c < r, where c is the total candidate length and r sums, per caption, the reference
length *closest* to the candidate's (ties to the shorter). COCO adds 1e-15 to each match count and
1e-9 to each n-gram total (and to r) to avoid division by zero, so a corpus without a single matching
4-gram gets a BLEU-4 of about 1e-4 rather than 0; we add the same constants so the numbers agree.

ROUGE-L (Lin 2004), per caption: with LCS the longest common subsequence of candidate and a reference,
P = max over references of LCS/|candidate| and R = max over references of LCS/|reference| (taken
separately, as COCO does), F = (1 + b^2) P R / (R + b^2 P) with b = 1.2; the corpus score is the mean.

CIDEr-D (Vedantam et al. 2015), per caption: for n = 1..4, TF-IDF vectors of n-gram counts with
idf = log(#images) - log(max(1, #images whose references contain the n-gram)) computed from the
reference corpus; similarity to each reference = sum over the candidate's n-grams of
min(g_cand, g_ref) * g_ref / (|g_cand| |g_ref|) (clipping), times the length penalty
exp(-(len_cand - len_ref)^2 / (2 sigma^2)), sigma = 6; averaged over n and over references, times 10.
As in COCO's code the TF is the raw n-gram count (so the clipping compares counts). The corpus score
is the mean over captions; a corpus of one image has all idf = 0 and scores 0.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

Tokens = Sequence[str]

_TINY = 1e-15  # added to match counts and the candidate length (COCO's "tiny")
_SMALL = 1e-9  # added to n-gram totals and the reference length (COCO's "small")


def ngram_counts(tokens: Tokens, max_n: int = 4) -> Counter:
    """Counts of all n-grams (as tuples) with 1 <= n <= max_n."""
    counts: Counter = Counter()
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


# -- BLEU -------------------------------------------------------------------------------------------------
def corpus_bleu(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]], max_n: int = 4) -> list[float]:
    """[BLEU-1, ..., BLEU-max_n] of a tokenised corpus (COCO's corpus BLEU, "closest" reference length)."""
    matches = [0] * max_n
    totals = [0] * max_n
    cand_len = ref_len = 0
    for cand, refs in zip(candidates, references):
        cand_counts = ngram_counts(cand, max_n)
        max_ref_counts: Counter = Counter()
        for ref in refs:
            for gram, count in ngram_counts(ref, max_n).items():
                if count > max_ref_counts[gram]:
                    max_ref_counts[gram] = count
        for gram, count in cand_counts.items():
            matches[len(gram) - 1] += min(count, max_ref_counts[gram])
        for n in range(1, max_n + 1):
            totals[n - 1] += max(0, len(cand) - n + 1)
        cand_len += len(cand)
        ref_len += min((abs(len(ref) - len(cand)), len(ref)) for ref in refs)[1]

    scores = []
    log_precision_sum = 0.0
    for n in range(1, max_n + 1):
        precision = (matches[n - 1] + _TINY) / (totals[n - 1] + _SMALL)
        log_precision_sum += math.log(precision)
        scores.append(math.exp(log_precision_sum / n))
    ratio = (cand_len + _TINY) / (ref_len + _SMALL)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [s * penalty for s in scores]
    return scores


# -- ROUGE-L ----------------------------------------------------------------------------------------------
def lcs_length(a: Tokens, b: Tokens) -> int:
    """Length of the longest common subsequence (dynamic programming, O(|a| |b|) time, O(|b|) memory)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_scores(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]],
                   beta: float = 1.2) -> list[float]:
    """Per-caption ROUGE-L F-scores (COCO: max precision and max recall over references, beta = 1.2)."""
    scores = []
    for cand, refs in zip(candidates, references):
        if not cand:
            scores.append(0.0)
            continue
        lcs = [lcs_length(cand, ref) for ref in refs]
        precision = max(l / len(cand) for l in lcs)
        recall = max((l / len(ref) if ref else 0.0) for l, ref in zip(lcs, refs))
        if precision == 0 or recall == 0:
            scores.append(0.0)
        else:
            scores.append((1 + beta**2) * precision * recall / (recall + beta**2 * precision))
    return scores


# -- CIDEr-D ----------------------------------------------------------------------------------------------
def cider_d_scores(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]], max_n: int = 4,
                   sigma: float = 6.0) -> list[float]:
    """Per-caption CIDEr-D (idf from ``references``, clipping, Gaussian length penalty, x10)."""
    ref_counts = [[ngram_counts(ref, max_n) for ref in refs] for refs in references]
    document_frequency: Counter = Counter()
    for counts_of_image in ref_counts:
        document_frequency.update(set().union(*counts_of_image))
    log_images = math.log(len(references)) if references else 0.0

    def tfidf(counts: Counter) -> tuple[list[dict], list[float]]:
        vectors: list[dict] = [{} for _ in range(max_n)]
        norms = [0.0] * max_n
        for gram, count in counts.items():
            weight = count * (log_images - math.log(max(1.0, document_frequency[gram])))
            vectors[len(gram) - 1][gram] = weight
            norms[len(gram) - 1] += weight * weight
        return vectors, [math.sqrt(x) for x in norms]

    scores = []
    for cand, refs, counts_of_refs in zip(candidates, references, ref_counts):
        cand_vec, cand_norm = tfidf(ngram_counts(cand, max_n))
        total = 0.0
        for ref, counts in zip(refs, counts_of_refs):
            ref_vec, ref_norm = tfidf(counts)
            penalty = math.exp(-((len(cand) - len(ref)) ** 2) / (2 * sigma**2))
            for n in range(max_n):
                dot = sum(min(w, ref_vec[n].get(g, 0.0)) * ref_vec[n].get(g, 0.0) for g, w in cand_vec[n].items())
                if cand_norm[n] != 0 and ref_norm[n] != 0:
                    dot /= cand_norm[n] * ref_norm[n]
                total += dot * penalty
        scores.append(10.0 * total / max_n / len(refs))
    return scores
