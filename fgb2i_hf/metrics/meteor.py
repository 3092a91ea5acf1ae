"""METEOR 1.5 through the jar that pycocoevalcap ships (Denkowski & Lavie 2014).

METEOR aligns candidate and references by exact words, stems, WordNet synonyms and a large paraphrase
table (``paraphrase-en.gz`` inside pycocoevalcap), then scores the alignment with tuned parameters.
Reimplementing those resources is not sensible, so we drive the official jar the way the COCO caption
evaluation does: ``java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm``, one ``SCORE`` line per
caption (its references and candidate), then one ``EVAL`` line with all the returned statistics; the
jar answers with one score per caption and the corpus score (computed from the pooled statistics, not
the mean of the per-caption scores), which is what COCO reports as METEOR.

Starting the jar loads the paraphrase table, which takes about 10 s; :class:`MeteorScorer` keeps one
process open so that repeated evaluations (e.g. during training) pay it once.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from typing import Sequence

from .java import METEOR_JAR, pycocoevalcap_file, require_java


class MeteorScorer:
    """One running METEOR 1.5 process. Use as a context manager, or call :meth:`close`.

    >>> with MeteorScorer() as meteor:                                     # doctest: +SKIP
    ...     corpus, per_caption = meteor.score(["a dog runs"], [["a dog is running", "dog running"]])
    """

    def __init__(self, memory: str = "2G"):
        java = require_java("METEOR")
        jar = pycocoevalcap_file("meteor.meteor", METEOR_JAR)
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [java, "-jar", f"-Xmx{memory}", os.path.basename(jar), "-", "-", "-stdio", "-l", "en", "-norm"],
            cwd=os.path.dirname(jar), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self._lock = threading.Lock()

    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
        """(corpus METEOR, per-caption METEOR) of tokenised candidate strings against their references."""
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
        if not candidates:
            raise ValueError("METEOR needs at least one caption")
        with self._lock:
            statistics = []
            for cand, refs in zip(candidates, references):
                fields = ["SCORE", *(_clean(r) for r in refs), _clean(cand)]
                statistics.append(self._ask(" ||| ".join(fields)))
            self._write(" ||| ".join(["EVAL", *statistics]))
            per_caption = [float(self._read()) for _ in candidates]
            corpus = float(self._read())
        return corpus, per_caption

    def _ask(self, line: str) -> str:
        self._write(line)
        return self._read()

    def _write(self, line: str) -> None:
        try:
            self._process.stdin.write(line.encode("utf-8") + b"\n")
            self._process.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"the METEOR process exited: {self._error_text()}") from None

    def _read(self) -> str:
        answer = self._process.stdout.readline()
        if not answer:
            raise RuntimeError(f"the METEOR process exited: {self._error_text()}")
        return answer.decode("utf-8").strip()

    def _error_text(self) -> str:
        self._process.poll()
        self._stderr.seek(0)
        return f"exit code {self._process.returncode}; stderr: {self._stderr.read().decode('utf-8', 'replace')[-2000:]}"

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process.stdout.close()
        self._stderr.close()

    def __enter__(self) -> "MeteorScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if getattr(self, "_process", None) is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()


def _clean(text: str) -> str:
    """The jar's protocol separates fields with '|||' and ends a request at the newline."""
    return " ".join(text.replace("|||", " ").split())
