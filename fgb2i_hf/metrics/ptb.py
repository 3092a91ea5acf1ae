"""PTB tokenisation as the COCO caption evaluation does it (pycocoevalcap's ``PTBTokenizer``).

The COCO caption metrics score *tokenised* text: each caption goes through Stanford's PTBTokenizer
(CoreNLP 3.4.1, ``-preserveLines -lowerCase``), then the tokens in :data:`PUNCTUATIONS` are dropped
and the rest joined by single spaces. Two backends:

* ``"java"`` runs that same jar (shipped inside pycocoevalcap) with the machine's Java, one process
  per call — the output is the one the published tables used;
* ``"python"`` is a pure-Python approximation for machines without Java. It follows the PTB rules
  that matter for captions (lowercase; split off punctuation; ``'s``/``n't``/``'re``... contractions;
  ``cannot``/``gonna``/``wanna``/``gotta``; brackets as ``-lrb-``...; abbreviations, numbers, hyphenated
  words, e-mail addresses and paths kept whole) and agrees with the jar on ordinary captions (tested),
  but it is **not bit-identical**: URLs, emoticons, SGML-like tags and rarer Unicode may split
  differently, so scores from it can differ slightly from pycocoevalcap's.

Quirk kept on purpose: with ``-lowerCase`` the jar writes brackets as ``-lrb-``/``-rrb-``..., which are
not in pycocoevalcap's upper-case punctuation list, so they stay in the tokenised caption.
"""

from __future__ import annotations

import re
import subprocess
import warnings
from typing import Sequence

from .java import PTB_JAR, java_executable, pycocoevalcap_file, require_java

# Tokens pycocoevalcap removes after tokenisation (its PUNCTUATIONS list).
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
                          "--", "...", ";"])

# Everything Python's str.splitlines() breaks on: Java's tokenizer also starts a new line at most of
# these, which would shift the one-caption-per-line alignment.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def ptb_tokenize(sentences: Sequence[str], backend: str = "auto") -> list[str]:
    """Tokenise ``sentences`` like pycocoevalcap: lowercased PTB tokens, punctuation removed, space-joined.

    ``backend``: ``"java"`` (Stanford's jar), ``"python"`` (the approximation above) or ``"auto"`` (Java
    when available, else Python with a warning).
    """
    for i, s in enumerate(sentences):
        if not isinstance(s, str):
            raise ValueError(f"sentence {i} must be a str, got {type(s).__name__}")
    backend = resolve_backend(backend)
    if backend == "java":
        return _java_tokenize(list(sentences))
    return [python_ptb_tokenize(s) for s in sentences]


def resolve_backend(backend: str) -> str:
    if backend not in ("auto", "java", "python"):
        raise ValueError(f"tokenizer backend must be 'auto', 'java' or 'python', got {backend!r}")
    if backend == "auto":
        if java_executable() is not None:
            return "java"
        warnings.warn("Java not found: using the pure-Python PTB tokenizer, which approximates Stanford's "
                      "PTBTokenizer (scores may differ slightly from pycocoevalcap's)", stacklevel=3)
        return "python"
    return backend


def _java_tokenize(sentences: list[str]) -> list[str]:
    if not sentences:
        return []
    java = require_java("PTB tokenisation with backend='java'")
    jar = pycocoevalcap_file("tokenizer.ptbtokenizer", PTB_JAR)
    text = "\n".join(_LINE_BREAKS.sub(" ", s) for s in sentences) + "\n"
    cmd = [java, "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
           "-encoding", "UTF-8"]
    proc = subprocess.run(cmd, input=text.encode("utf-8"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"Stanford PTBTokenizer failed (exit {proc.returncode}): "
                           f"{proc.stderr.decode('utf-8', 'replace')[-2000:]}")
    lines = proc.stdout.decode("utf-8").split("\n")
    if len(lines) < len(sentences):
        raise RuntimeError(f"Stanford PTBTokenizer returned {len(lines)} lines for {len(sentences)} captions")
    return [_drop_punctuation(line.split()) for line in lines[: len(sentences)]]


def _drop_punctuation(tokens: list[str]) -> str:
    return " ".join(t for t in tokens if t not in PUNCTUATIONS)


# ---------------------------------------------------------------------------------------------------------
# Pure-Python approximation of Stanford's PTBTokenizer (PTB3 conventions), for machines without Java.

_UNICODE = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'", "\u201a": "'",
                          "\u00ab": '"', "\u00bb": '"', "\u2014": "--", "\u2013": "--", "\u2026": "...",
                          "\u00a0": " "})
_OPENERS = {'"': "``", "'": "`", "(": "-lrb-", "[": "-lsb-", "{": "-lcb-", "$": "$", "*": "*", "`": "`"}
_CLOSERS = {'"': "''", ")": "-rrb-", "]": "-rsb-", "}": "-rcb-", ",": ",", ";": ";", ":": ":", "%": "%",
            "*": "*"}
# Abbreviations whose final period PTB keeps (besides letter-dot sequences like u.s. or p.m.).
_ABBREVIATIONS = frozenset("mr mrs ms dr st ave jr sr vs etc inc ltd co corp dept prof gen rev sgt capt lt mt "
                           "ft no jan feb mar apr jun jul aug sep sept oct nov dec".split())
_SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "wanna": ["wan", "na"], "gotta": ["got", "ta"],
                "gimme": ["gim", "me"], "lemme": ["lem", "me"]}
_CONTRACTION = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_LETTER_DOTS = re.compile(r"^(?:[a-z]\.){2,}$")


def python_ptb_tokenize(sentence: str) -> str:
    """One caption through the pure-Python PTB approximation, punctuation removed (see module docstring)."""
    text = _LINE_BREAKS.sub(" ", sentence).translate(_UNICODE).lower()
    tokens: list[str] = []
    for chunk in text.split():
        tokens.extend(_tokenize_chunk(chunk))
    return _drop_punctuation(tokens)


def _tokenize_chunk(chunk: str) -> list[str]:
    head: list[str] = []
    tail: list[str] = []
    # Leading punctuation.
    while chunk:
        if chunk[0] in _OPENERS and not (chunk[0] == "'" and _CONTRACTION.match("x" + chunk)):
            head.append(_OPENERS[chunk[0]])
            chunk = chunk[1:]
        else:
            break
    # Trailing punctuation (collected right to left).
    while chunk:
        m = re.search(r"(\.\.\.+|[!?]+)$", chunk)
        if m:
            tail.insert(0, m.group(1))
            chunk = chunk[: m.start()]
        elif chunk[-1] in _CLOSERS:
            tail.insert(0, _CLOSERS[chunk[-1]])
            chunk = chunk[:-1]
        elif chunk.endswith("'") and not chunk.endswith("''"):
            tail.insert(0, "'")
            chunk = chunk[:-1]
        elif chunk.endswith(".") and len(chunk) > 1 and not _is_abbreviation(chunk):
            tail.insert(0, ".")
            chunk = chunk[:-1]
        else:
            break
    middle: list[str] = []
    for i, part in enumerate(chunk.split("--")):
        if i:
            middle.append("--")
        middle.extend(_split_word(part))
    return head + middle + tail


def _is_abbreviation(word: str) -> bool:
    return bool(_LETTER_DOTS.match(word)) or word[:-1] in _ABBREVIATIONS


def _split_word(word: str) -> list[str]:
    if not word:
        return []
    if word in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[word])
    m = _CONTRACTION.match(word)
    if m and m.group(2) == "n't" and m.group(1) in ("ca", "wo", "sha"):
        return [m.group(1), "n't"]
    if m and not m.group(1).endswith("'"):
        stem, suffix = m.group(1), m.group(2)
        if suffix == "n't":
            return [stem, suffix]
        return _split_word(stem) + [suffix]
    return [word]
