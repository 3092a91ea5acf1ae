"""Stream the top-level arrays of a large JSON object (COCO annotation files) one item at a time.

COCO's ``instances_train2017.json`` is 448 MB; ``json.load`` turns it into ~3 GB of Python objects. Reading its
``annotations`` item by item keeps memory to one buffer and one item, so an NSD build stays within its budget.
"""

from __future__ import annotations

import json
from typing import Iterator

_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"


class _Reader:
    def __init__(self, f, chunk_size: int):
        self.f, self.chunk_size = f, chunk_size
        self.buf, self.pos, self.eof = "", 0, False

    def _fill(self) -> None:
        self.buf = self.buf[self.pos:]
        self.pos = 0
        data = self.f.read(max(self.chunk_size, len(self.buf)))  # at least doubles: linear time overall
        self.eof = not data
        self.buf += data

    def peek(self) -> str:
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if self.eof:
                raise ValueError("unexpected end of file")
            self._fill()

    def take(self, allowed: str) -> str:
        c = self.peek()
        if c not in allowed:
            raise ValueError(f"expected one of {allowed!r} at character {self.pos}, found {c!r}")
        self.pos += 1
        return c

    def value(self):
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a number touching the buffer's end may continue
                    self.pos = end
                    return value
            except json.JSONDecodeError:
                if self.eof:
                    raise
            self._fill()


def iter_json_object(path: str, stream_keys=("annotations", "images"), chunk_size: int = 1 << 20) -> Iterator[tuple]:
    """Events of a top-level JSON object: ``("value", key, value)`` for each member, except members in
    ``stream_keys`` that are non-empty arrays, which give ``("item", key, item)`` per element (an empty one gives
    ``("value", key, [])``). Malformed JSON raises ``ValueError``."""
    with open(path, encoding="utf-8") as f:
        r = _Reader(f, chunk_size)
        r.take("{")
        if r.peek() == "}":
            return
        while True:
            key = r.value()
            if not isinstance(key, str):
                raise ValueError(f"expected a member name, found {key!r}")
            r.take(":")
            if key in stream_keys and r.peek() == "[":
                r.take("[")
                if r.peek() == "]":
                    r.take("]")
                    yield ("value", key, [])
                else:
                    while True:
                        yield ("item", key, r.value())
                        if r.take(",]") == "]":
                            break
            else:
                yield ("value", key, r.value())
            if r.take(",}") == "}":
                return
