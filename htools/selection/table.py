"""The sorted digest table: one owner of its on-disk format.

A table of ``n`` distinct 128-bit digests is ``16 n`` bytes: the ``n`` high halves, then
the ``n`` low halves, each a little-endian uint64, sorted by (high, low).  It is built once
per job on the client, in bounded memory (digests are uniform, so a list larger than one
chunk is cut by the top byte of the digest into 256 local files, each sorted on its own:
no merge), and memory-mapped once per worker process (a remote table is fetched once to
a local temporary file).  Lookups are binary searches over the high halves.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import ExitStack

import numpy as np

from htools import storage
from htools.selection.values import local_copy

CHUNK = 1 << 21  # digests sorted in memory at once (32 MiB of digests)
PARTS = 256  # local files of a list larger than one chunk, by the digest's top byte
COPY = 1 << 20


def _halves(buf: bytearray | bytes) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.frombuffer(buf, dtype=">u8").reshape(-1, 2)
    return pairs[:, 0].astype(np.uint64), pairs[:, 1].astype(np.uint64)


def _sorted_distinct(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((lo, hi))
    hi, lo = hi[order], lo[order]
    if len(hi) > 1:
        keep = np.ones(len(hi), dtype=bool)
        keep[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
        hi, lo = hi[keep], lo[keep]
    return hi, lo


def build(digests: Iterable[bytes], url: str, options: dict | None) -> tuple[int, str]:
    """Write the table of ``digests`` (blocks of one or more 16-byte digests, any
    order, repeats allowed) to ``url``; returns (distinct digests, the table's own
    digest)."""
    folder = tempfile.mkdtemp(prefix="htools-select-")
    try:
        buf = bytearray()
        parts: list | None = None
        for d in digests:
            buf += d
            if len(buf) >= 16 * CHUNK:
                parts = parts or [open(os.path.join(folder, f"p{i}"), "wb")
                                  for i in range(PARTS)]
                _spread(buf, parts)
                buf = bytearray()
        his = os.path.join(folder, "hi")
        los = os.path.join(folder, "lo")
        n = 0
        with open(his, "wb") as fh, open(los, "wb") as fl:
            if parts is None:
                n = _append(_sorted_distinct(*_halves(buf)), fh, fl)
            else:
                _spread(buf, parts)
                for i, p in enumerate(parts):
                    p.close()
                    with open(p.name, "rb") as f:
                        n += _append(_sorted_distinct(*_halves(f.read())), fh, fl)
                    os.remove(p.name)
        return n, _write(url, options, his, los)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _spread(buf: bytearray, parts: list) -> None:
    top = np.frombuffer(buf, dtype=np.uint8)[::16]
    rows = np.frombuffer(buf, dtype="V16")
    order = np.argsort(top, kind="stable")
    bounds = np.searchsorted(top[order], np.arange(PARTS + 1))
    for i in range(PARTS):
        a, b = bounds[i], bounds[i + 1]
        if b > a:
            parts[i].write(rows[order[a:b]].tobytes())


def _append(halves: tuple[np.ndarray, np.ndarray], fh, fl) -> int:
    hi, lo = halves
    fh.write(hi.astype("<u8").tobytes())
    fl.write(lo.astype("<u8").tobytes())
    return len(hi)


def _write(url: str, options: dict | None, *paths: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with storage.open_write(url, options) as out:
        for path in paths:
            with open(path, "rb") as f:
                while chunk := f.read(COPY):
                    h.update(chunk)
                    out.write(chunk)
    return h.hexdigest()


class Table:
    """A memory-mapped table: ``index(digest)`` is its row, or -1."""

    def __init__(self, path: str):
        n = os.path.getsize(path) // 16
        mm = np.memmap(path, dtype="<u8", mode="r") if n else np.zeros(0, dtype="<u8")
        self.hi, self.lo, self.n = mm[:n], mm[n:], n

    def index(self, d: bytes) -> int:
        pairs = np.frombuffer(d, dtype=">u8").reshape(1, 2).astype(np.uint64)
        return int(self.rows(pairs)[0])

    def rows(self, pairs: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
        """The row of each digest of ``pairs`` ((n, 2) uint64: high, low), or -1 (also
        where ``present`` is False): one binary search over the high halves for all."""
        hi, lo = pairs[:, 0], pairs[:, 1]
        out = np.full(len(hi), -1, dtype=np.int64)
        if not self.n or not len(hi):
            return out
        i = np.searchsorted(self.hi, hi)
        j = np.minimum(i, self.n - 1)
        found = (i < self.n) & (self.hi[j] == hi)
        if present is not None:
            found &= present
        exact = found & (self.lo[j] == lo)
        out[exact] = i[exact]
        for k in np.flatnonzero(found & ~exact):  # only where two listed values share a high half
            r = int(i[k]) + 1
            while r < self.n and self.hi[r] == hi[k]:
                if self.lo[r] == lo[k]:
                    out[k] = r
                    break
                r += 1
        return out


KEPT = 2  # tables a worker process keeps mapped (the jobs it serves at once)
_TABLES: dict[tuple[str, str], tuple[Table, ExitStack]] = {}


def load(url: str, digest: str, options: dict | None) -> Table:
    """The table at ``url``, fetched and mapped once per process (keyed by its digest);
    the oldest of more than ``KEPT`` tables is unmapped and its local copy removed."""
    key = (url, digest)
    if key not in _TABLES:
        held = ExitStack()
        table = Table(held.enter_context(local_copy(url, options)))
        _TABLES[key] = (table, held)
        while len(_TABLES) > KEPT:
            _TABLES.pop(next(iter(_TABLES)))[1].close()
    return _TABLES[key][0]


@atexit.register
def _close_all() -> None:
    while _TABLES:
        _TABLES.popitem()[1][1].close()
