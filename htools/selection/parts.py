"""A table looked up by partition: for a list larger than a worker should fetch.

The table (:mod:`htools.selection.table`) is cut by the top bits of the digests' high
halves into partitions of about ``PART_ROWS`` rows, whose first rows are in the
``.bounds`` file beside it (fetched once per process: 8 bytes a partition).  A batch of
lookups asks for the partitions its digests fall in, missing ones fetched with two
range requests per run of adjacent partitions (the high halves, the low halves), looks
them all up with one binary search over the batch's partitions side by side, and keeps
at most ``budget`` bytes of partitions (beyond the batch's own), the least recently used
let go first.
Rows are the table's own, so counts of what matched are the same in both modes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from htools import storage
from htools.selection.table import Halves, Table, bounds_url, search


class PartTable:
    """The table at ``url`` (``n`` rows), at most ``budget`` bytes of it in memory."""

    def __init__(self, url: str, n: int, budget: int, options: dict | None):
        self.url, self.n, self.budget, self.options = url, n, budget, options
        with storage.open_read(bounds_url(url), options) as f:
            self.bounds = np.frombuffer(f.read(), dtype="<i8")
        self.bits = (len(self.bounds) - 1).bit_length() - 1  # 2^bits partitions
        self.parts: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.held = 0
        self.requests = 0  # range requests made (for tests and benchmarks)

    index = Table.index  # the row of one 16-byte digest, through rows()

    def rows(self, pairs: np.ndarray | Halves, present: np.ndarray | None = None
             ) -> np.ndarray:
        """The table's row of each digest of ``pairs`` ((n, 2) uint64, or the (high,
        low) arrays), or -1 (also where ``present`` is False)."""
        qhi, qlo = (pairs[:, 0], pairs[:, 1]) if isinstance(pairs, np.ndarray) else pairs
        out = np.full(len(qhi), -1, dtype=np.int64)
        ask = np.ones(len(qhi), bool) if present is None else np.asarray(present, bool)
        part = (qhi >> np.uint64(64 - self.bits)).astype(np.int64) if self.bits else \
            np.zeros(len(qhi), np.int64)
        got = sorted(self._parts([int(p) for p in np.unique(part[ask])]), key=lambda g: g[0])
        if not got:
            return out
        # the batch's partitions side by side, in order: sorted, so one search for all
        sizes = np.array([len(hi) for _, (hi, _lo) in got], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        at = np.flatnonzero(ask)
        c = search(np.concatenate([hi for _, (hi, _lo) in got]),
                   np.concatenate([lo for _, (_hi, lo) in got]), qhi[at], qlo[at])
        k = np.searchsorted(starts, c, side="right") - 1
        first = self.bounds[np.array([p for p, _ in got], dtype=np.int64)]
        out[at] = np.where(c >= 0, first[k] + c - starts[k], -1)
        return out

    def _parts(self, wanted: list[int]) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
        """Each of the ``wanted`` partitions (sorted): held ones first, then the others
        fetched a run of adjacent ones at a time (runs of at most ``budget`` bytes)."""
        missing = []
        for p in wanted:
            if p in self.parts:
                self.parts.move_to_end(p)
                yield p, self.parts[p]
            else:
                missing.append(p)
        i = 0
        while i < len(missing):
            j = i
            while j + 1 < len(missing) and missing[j + 1] == missing[j] + 1 and \
                    16 * (self.bounds[missing[j + 1] + 1] - self.bounds[missing[i]]) \
                    <= self.budget:
                j += 1
            a, b = int(self.bounds[missing[i]]), int(self.bounds[missing[j] + 1])
            hi = self._read(8 * a, 8 * b)
            lo = self._read(8 * (self.n + a), 8 * (self.n + b))
            for p in missing[i:j + 1]:
                s, e = int(self.bounds[p]) - a, int(self.bounds[p + 1]) - a
                yield p, self._keep(p, hi[s:e].copy(), lo[s:e].copy())
            i = j + 1

    def _read(self, start: int, end: int) -> np.ndarray:
        if end <= start:
            return np.zeros(0, np.uint64)
        self.requests += 1
        raw = storage.read_range(self.url, start, end, self.options)
        return np.frombuffer(raw, dtype="<u8").astype(np.uint64)

    def _keep(self, p: int, hi: np.ndarray, lo: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        self.parts[p] = (hi, lo)
        self.held += hi.nbytes + lo.nbytes
        while self.held > self.budget and len(self.parts) > 1:
            _, (h, low) = self.parts.popitem(last=False)
            self.held -= h.nbytes + low.nbytes
        return hi, lo
