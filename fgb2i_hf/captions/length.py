"""Caption length in CLIP tokens, and cutting a caption to fit CLIP's 77-token context.

The decoded captions are later embedded by CLIP's text encoder (the rewards, the fusion with the base
methods), whose context holds 77 tokens including the start and end tokens; text past that is silently
dropped. FgB2I limits fine captions to 77 CLIP tokens. We count with open_clip's ``SimpleTokenizer`` (the
OpenAI CLIP BPE, the tokenizer of SD v1.x and CLIP ViT-L/14) and cut at the last sentence end that fits, or,
when even the first sentence is too long, at the last word that fits.
"""

from __future__ import annotations

import re
from functools import lru_cache

CLIP_CONTEXT_LENGTH = 77
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


@lru_cache(maxsize=1)
def _clip_bpe():
    # imported here: open_clip is a heavy import, needed only on this path
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def clip_token_count(text: str) -> int:
    """Number of CLIP tokens of ``text``, counting the start and end tokens (so ``""`` has 2)."""
    return len(_clip_bpe().encode(text)) + 2


def _sentences(text: str) -> list[str]:
    """Prefixes of ``text`` that end at a sentence end, shortest first (the whole text excluded)."""
    return [text[: m.end()].rstrip() for m in _SENTENCE_END.finditer(text)]


def truncate_to_clip_tokens(text: str, max_tokens: int = CLIP_CONTEXT_LENGTH) -> tuple[str, bool]:
    """Cut ``text`` to at most ``max_tokens`` CLIP tokens (start and end tokens included).

    Returns ``(text, truncated)``. A text that fits is returned unchanged. Otherwise the longest prefix that
    ends a sentence ('.', '!' or '?') and fits is kept; if no sentence fits, the longest prefix of whole words
    that fits; if not even one word fits, the longest prefix of characters.
    """
    if max_tokens < 3:
        raise ValueError(f"max_tokens must be at least 3 (start, one token, end), got {max_tokens}")
    if clip_token_count(text) <= max_tokens:
        return text, False
    fitting = [s for s in _sentences(text) if s and clip_token_count(s) <= max_tokens]
    if fitting:
        return fitting[-1], True
    words = text.split()
    cut = _longest_fitting_prefix(len(words), lambda n: " ".join(words[:n]), max_tokens)
    if cut > 0:
        return " ".join(words[:cut]).rstrip(",;:-"), True
    word = words[0] if words else text
    cut = _longest_fitting_prefix(len(word), lambda n: word[:n], max_tokens)
    return word[:cut], True


def _longest_fitting_prefix(n: int, prefix, max_tokens: int) -> int:
    """Largest k in 0..n with ``clip_token_count(prefix(k)) <= max_tokens`` (counts grow with k)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if clip_token_count(prefix(mid)) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return lo
