"""The sorted digest table: one owner of its on-disk format.

A table of ``n`` distinct 128-bit digests is ``16 n`` bytes: the ``n`` high halves, then
the ``n`` low halves, each a little-endian uint64, sorted by (high, low).  Beside it,
``URL.bounds`` cuts it into ``2^b`` partitions by the top ``b`` bits of the high half
(about ``PART_ROWS`` rows each; the bounds are 1/512 of the table): ``2^b + 1``
little-endian int64, the first row of each partition and then ``n``.

It is built once per job on the client, in bounded memory (up to ``CHUNK`` digests are
sorted in memory; digests are uniform, so a larger list is cut by the top byte of the
digest into 256 local files, each sorted on its own: no merge).  A worker process
memory-maps it whole (a remote table fetched once to a local temporary file), or, for a
table larger than the worker's budget, looks it up by partition
(:mod:`htools.selection.parts`).

Public and stable: :func:`build`, :func:`copy`, :func:`load`, :func:`search`, :class:`Table`
(``rows``, ``index``), :func:`bounds_url`, :func:`part_bits`, :func:`partition_bounds`.
"""

from __future__ import annotations

import atexit
import hashlib
import mmap
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from contextlib import ExitStack

import numpy as np

from htools import storage
from htools.selection.spec import by_partition
from htools.selection.values import local_copy
from htools.storage.local import local_path

CHUNK = 1 << 22  # digests sorted in memory at once (64 MiB of digests)
PARTS = 256  # local files of a list larger than one chunk, by the digest's top byte
COPY = 1 << 20
PART_ROWS = 256  # rows of a partition (4 KiB): what a partitioned lookup fetches at once
MAX_BITS = 24  # at most 2^24 partitions (128 MiB of bounds); past 4.3e9 values they grow
Halves = tuple[np.ndarray, np.ndarray]  # (hi, lo) uint64 arrays
MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux: map the pages up front


def halves(block: bytes | bytearray | Halves) -> Halves:
    """A block of digests as (hi, lo): 16-byte big-endian digests back to back, or
    (hi, lo) arrays already."""
    if not isinstance(block, (bytes, bytearray)):
        return np.asarray(block[0], np.uint64), np.asarray(block[1], np.uint64)
    pairs = np.frombuffer(block, dtype=">u8").reshape(-1, 2)
    return pairs[:, 0].astype(np.uint64), pairs[:, 1].astype(np.uint64)


def _sorted_distinct(halves: list[np.ndarray]) -> Halves:
    """``[hi, lo]`` (the list emptied, so that each array is freed once sorted) sorted
    by (hi, lo), repeats removed.  One ``np.sort`` of the high halves with their row
    number in their lowest bits (a sort of plain integers: SIMD, 4x an argsort), then a
    lexsort of only the rows whose high halves' kept bits repeat (digests are uniform:
    a few rows in 4 million)."""
    n = len(halves[0])
    bits = max(1, (n - 1).bit_length())
    low = np.uint64((1 << bits) - 1)
    packed = halves[0] & ~low
    packed |= np.arange(n, dtype=np.uint64)
    packed.sort()
    tied = (packed[1:] ^ packed[:-1]) <= low  # the same kept bits: order unknown
    order = (packed & low).astype(np.intp)
    del packed
    hi = halves.pop(0)[order]
    lo = halves.pop(0)[order]
    del order
    tie = np.flatnonzero(tied)
    if len(tie):
        rows = np.union1d(tie, tie + 1)  # runs of one kept prefix, each contiguous
        sub = np.lexsort((lo[rows], hi[rows]))
        hi[rows], lo[rows] = hi[rows][sub], lo[rows][sub]
        keep = np.ones(n, dtype=bool)
        keep[tie + 1] = (hi[tie + 1] != hi[tie]) | (lo[tie + 1] != lo[tie])
        hi, lo = hi[keep], lo[keep]
    return hi, lo


def build(digests: Iterable[bytes | Halves], url: str, options: dict | None
          ) -> tuple[int, str]:
    """Write the table of ``digests`` (blocks of digests, any order, repeats allowed:
    16-byte big-endian digests back to back, or (hi, lo) uint64 arrays) to ``url``;
    returns (distinct digests, the table's own digest).  Up to ``CHUNK`` digests are
    sorted in memory; more are cut by their top byte into ``PARTS`` local files."""
    folder = tempfile.mkdtemp(prefix="htools-select-")
    try:
        chunk = [np.empty(CHUNK, np.uint64), np.empty(CHUNK, np.uint64)]  # pages as filled
        count, parts = 0, None
        for block in digests:
            hi, lo = halves(block)
            while len(hi):
                take = min(len(hi), CHUNK - count)
                chunk[0][count:count + take] = hi[:take]
                chunk[1][count:count + take] = lo[:take]
                count += take
                hi, lo = hi[take:], lo[take:]
                if count == CHUNK:
                    parts = parts or [open(os.path.join(folder, f"p{i}"), "wb")
                                      for i in range(PARTS)]
                    _spread((chunk[0], chunk[1]), parts)
                    count = 0
        if parts is None:
            hi, lo = _sorted_distinct([chunk.pop(0)[:count], chunk.pop(0)[:count]])
            _write_bounds(url, options, hi)
            return len(hi), _write(url, options, [hi.astype("<u8", copy=False),
                                                  lo.astype("<u8", copy=False)])
        _spread((chunk[0][:count], chunk[1][:count]), parts)
        del chunk
        return _merge_parts(parts, folder, url, options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _merge_parts(parts: list, folder: str, url: str, options: dict | None
                 ) -> tuple[int, str]:
    """Sort each part on its own (digests are uniform: no merge) into two local files
    (high halves, low halves), then write them as the table."""
    his, los = os.path.join(folder, "hi"), os.path.join(folder, "lo")
    n = 0
    with open(his, "wb") as fh, open(los, "wb") as fl:
        for p in parts:
            p.close()
            pairs = np.fromfile(p.name, dtype=np.uint64).reshape(-1, 2)
            hi, lo = _sorted_distinct([pairs[:, 0].copy(), pairs[:, 1].copy()])
            del pairs
            fh.write(hi.astype("<u8").tobytes())
            fl.write(lo.astype("<u8").tobytes())
            n += len(hi)
            os.remove(p.name)
    _write_bounds(url, options, np.memmap(his, dtype="<u8", mode="r") if n else
                  np.zeros(0, np.uint64))
    return n, _write(url, options, [his, los])


def _spread(halves: Halves, parts: list) -> None:
    hi, lo = halves
    top = (hi >> np.uint64(56)).astype(np.uint8)
    order = np.argsort(top, kind="stable")
    bounds = np.searchsorted(top[order], np.arange(PARTS + 1))
    rows = np.stack([hi[order], lo[order]], axis=1)
    for i in range(PARTS):
        a, b = bounds[i], bounds[i + 1]
        if b > a:
            parts[i].write(rows[a:b].tobytes())


def _write(url: str, options: dict | None, pieces: list) -> str:
    """Write ``pieces`` (arrays, or local files) one after the other to ``url``;
    returns the digest of the bytes written."""
    h = hashlib.sha256()  # SHA-NI where the CPU has it: 2x blake2b on 64 MB
    with storage.open_write(url, options) as out:
        for piece in pieces:
            if isinstance(piece, np.ndarray):
                data = memoryview(piece).cast("B")
                for a in range(0, len(data), COPY * 16):
                    h.update(data[a:a + COPY * 16])
                    out.write(data[a:a + COPY * 16])
                continue
            with open(piece, "rb") as f:
                while chunk := f.read(COPY):
                    h.update(chunk)
                    out.write(chunk)
    return h.hexdigest()[:32]


def bounds_url(url: str) -> str:
    """The table's partition bounds, beside it."""
    return url + ".bounds"


def part_bits(n: int) -> int:
    """Top bits of the high half that name a table's partition: about ``PART_ROWS``
    rows (4 KiB) a partition."""
    return max(0, min(MAX_BITS, int(np.ceil(np.log2(max(1, n / PART_ROWS))))))


def _write_bounds(url: str, options: dict | None, hi: np.ndarray) -> None:
    """``bounds[p]`` = the first row of partition ``p`` (rows whose high half's top
    ``part_bits(n)`` bits are ``p``); ``2^bits + 1`` little-endian int64."""
    with storage.open_write(bounds_url(url), options) as out:
        out.write(partition_bounds(hi).astype("<i8").tobytes())


def partition_bounds(hi: np.ndarray) -> np.ndarray:
    """The first row of each of the ``2^part_bits(n)`` partitions of the sorted high
    halves ``hi``, then ``n`` (int64)."""
    bits = part_bits(len(hi))
    edges = np.arange(2 ** bits, dtype=np.uint64) << np.uint64(64 - bits) if bits else \
        np.zeros(1, np.uint64)
    return np.append(np.searchsorted(hi, edges), len(hi)).astype(np.int64)  # last edge: 2^64


def search(hi: np.ndarray, lo: np.ndarray, qhi: np.ndarray, qlo: np.ndarray,
           present: np.ndarray | None = None, i: np.ndarray | None = None) -> np.ndarray:
    """The row of each digest (``qhi``, ``qlo``) in the sorted (``hi``, ``lo``), or -1
    (also where ``present`` is False): one binary search over the high halves for all
    (``i``: its result, ``np.searchsorted(hi, qhi)``, when the caller has it)."""
    n = len(hi)
    out = np.full(len(qhi), -1, dtype=np.int64)
    if not n or not len(qhi):
        return out
    if i is None:
        order = np.argsort(qhi)  # queries in order: each search starts where the last ended
        i = np.empty(len(qhi), dtype=np.int64)
        i[order] = np.searchsorted(hi, qhi[order])
    j = np.minimum(i, n - 1)
    found = (i < n) & (hi[j] == qhi)
    if present is not None:
        found &= present
    exact = found & (lo[j] == qlo)
    out[exact] = i[exact]
    for k in np.flatnonzero(found & ~exact):  # only where two listed values share a high half
        r = int(i[k]) + 1
        while r < n and hi[r] == qhi[k]:
            if lo[r] == qlo[k]:
                out[k] = r
                break
            r += 1
    return out


def copy(path: str, url: str, options: dict | None) -> None:
    """Put the table built at the local ``path`` (and its bounds) at ``url``: moved
    when ``url`` is a local path on the same file system (no 64 MB copy for 4 million
    values), else copied."""
    for src, dst in ((path, url), (bounds_url(path), bounds_url(url))):
        if storage.protocol(dst) == "file":
            try:
                os.makedirs(os.path.dirname(local_path(dst)), exist_ok=True)
                os.replace(src, local_path(dst))
                continue
            except OSError:
                pass  # another file system: copied below
        with open(src, "rb") as f, storage.open_write(dst, options) as out:
            shutil.copyfileobj(f, out, COPY)


class Table:
    """A table memory-mapped whole (read-only, shared with the page cache: no copy per
    worker process; its pages mapped at once, ``MAP_POPULATE``, so that lookups take no
    page faults): ``index(digest)`` is its row, or -1.  Unmapped when the last reference
    to it (or to its arrays) goes: a task still using a table that ``load`` let go, or
    whose file was deleted, keeps the mapping it has.

    A batch of digests is searched within each one's partition (its rows' bounds
    computed here, once), all side by side (:func:`first_rows`)."""

    _map: mmap.mmap | None = None

    def __init__(self, path: str):
        n = os.path.getsize(path) // 16
        if n:
            with open(path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 16 * n, prot=mmap.PROT_READ,
                                      flags=mmap.MAP_SHARED | MAP_POPULATE)
            data = np.frombuffer(self._map, dtype="<u8")
        else:
            data = np.zeros(0, dtype="<u8")
        self.hi, self.lo, self.n = data[:n], data[n:], n
        self.bits = part_bits(n)
        self.bounds = partition_bounds(self.hi) if self.bits else None
        self.steps = int(np.diff(self.bounds).max()).bit_length() if self.bits else 0

    def index(self, d: bytes) -> int:
        pairs = np.frombuffer(d, dtype=">u8").reshape(1, 2).astype(np.uint64)
        return int(self.rows(pairs)[0])

    def rows(self, pairs: np.ndarray | Halves, present: np.ndarray | None = None
             ) -> np.ndarray:
        """The row of each digest of ``pairs`` ((n, 2) uint64: high, low; or the (high,
        low) arrays), or -1 (also where ``present`` is False)."""
        qhi, qlo = (pairs[:, 0], pairs[:, 1]) if isinstance(pairs, np.ndarray) else pairs
        i = None
        if self.bounds is not None and len(qhi) >= BOUNDED:
            i = first_rows(self.hi, self.bounds, self.bits, self.steps, qhi)
        return search(self.hi, self.lo, qhi, qlo, present, i)


BOUNDED = 32  # queries from which a batch is searched within partitions


def first_rows(hi: np.ndarray, bounds: np.ndarray, bits: int, steps: int,
               q: np.ndarray) -> np.ndarray:
    """``np.searchsorted(hi, q)``, each query searched only within its partition
    (``bounds``: :func:`partition_bounds`; ``steps``: the bit length of the largest
    partition), all queries side by side: a few numpy calls a step, and each step's
    loads from the table (64 MB for 4 M values) independent of each other, so their
    cache misses overlap (``np.searchsorted`` misses its way down ~22 levels a query,
    one at a time: 0.5-1.2 us a query once the batch's other work has evicted the
    table, ~0.15-0.2 us this way).

    Position ``i + 2^k - 1`` is read as ``hi[min(i + 2^k - 1, n - 1)]``: rows past the
    partition are >= every query in it, and a read clipped at ``n - 1`` below the query
    means the whole partition is, so the count is cut at the partition's end."""
    part = (q >> np.uint64(64 - bits)).astype(np.intp)
    i = bounds[part]
    at = np.empty_like(i)
    less = np.empty(len(q), dtype=bool)
    for k in range(steps - 1, -1, -1):  # steps of 2^k rows, largest first
        np.add(i, (1 << k) - 1, out=at)
        np.less(hi.take(at, mode="clip"), q, out=less)
        np.add(i, 1 << k, out=i, where=less)
    return np.minimum(i, bounds[part + 1], out=i)


KEPT = 2  # tables a worker process keeps mapped (the jobs it serves at once)
_TABLES: dict[tuple[str, str], tuple[Table, ExitStack]] = {}
_LOCK = threading.Lock()


def load(url: str, digest: str, options: dict | None, budget: int = 0, n: int = 0):
    """The table at ``url``, once per process (keyed by its digest): fetched whole and
    memory-mapped when its ``16 n`` bytes fit ``budget`` (0: always), else looked up
    by partition (:class:`~htools.selection.parts.PartTable`, at most ``budget`` bytes
    of it held); the oldest of more than ``KEPT`` tables is let go."""
    key = (url, digest)
    got = _TABLES.get(key)  # held already: no wait behind another table's fetch
    if got is not None:
        return got[0]
    with _LOCK:  # a worker's threads: one fetch and mapping a table, one eviction
        if key not in _TABLES:
            held = ExitStack()
            if by_partition(n, budget):
                from htools.selection.parts import PartTable

                table = PartTable(url, n, budget, options)
            else:
                table = Table(held.enter_context(local_copy(url, options)))
            _TABLES[key] = (table, held)
            while len(_TABLES) > KEPT:
                _TABLES.pop(next(iter(_TABLES)))[1].close()
        return _TABLES[key][0]


@atexit.register
def _close_all() -> None:
    while _TABLES:
        _TABLES.popitem()[1][1].close()
