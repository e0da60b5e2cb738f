"""Small stream wrappers shared by the task functions."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from .errors import HtoolsError, hide_credentials
from .summary import ShardResult


def distinct_keys(samples: Iterator[dict], where: str, remedy: str) -> Iterator[dict]:
    """Pass samples through, refusing two in a row with one ``__key__``: a tar reader
    would join them into one sample (or reject the repeated fields)."""
    previous = None
    for sample in samples:
        if sample["__key__"] == previous:
            raise HtoolsError(f"{hide_credentials(where)}: two consecutive samples share the "
                              f"key {previous!r}; a tar reader would join them: {remedy}")
        previous = sample["__key__"]
        yield sample


class Counting:
    """A pass-through stream that adds the bytes it moves to ``result.<attr>``, and
    with ``digest=True`` keeps the sha256 of the bytes it moves (``hexdigest()``)."""

    def __init__(self, raw, result: ShardResult, attr: str, digest: bool = False):
        self.raw = raw
        self.result = result
        self.attr = attr
        self.hash = hashlib.sha256() if digest else None

    def hexdigest(self) -> str:
        return self.hash.hexdigest() if self.hash is not None else ""

    def _add(self, n: int) -> None:
        setattr(self.result, self.attr, getattr(self.result, self.attr) + n)

    def read(self, n: int = -1) -> bytes:
        b = self.raw.read(n)
        self._add(len(b))
        if self.hash is not None:
            self.hash.update(b)
        return b

    def readinto(self, buf) -> int:
        n = self.raw.readinto(buf) or 0
        self._add(n)
        if self.hash is not None:
            self.hash.update(memoryview(buf)[:n])
        return n

    def write(self, b) -> int:
        self.raw.write(b)
        if self.hash is not None:
            self.hash.update(b)
        n = len(b)
        self._add(n)
        return n

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False
