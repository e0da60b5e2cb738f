"""A value's 128-bit digest, computed for many values at once with numpy.

The digest is a keyed universal hash (multilinear over the prime field ``P = 2^32 - 5``,
four independent lanes): a value of ``L`` bytes is cut into ``w = ceil(L / 3)`` words of
3 bytes (little-endian, the last zero-padded), and lane ``t`` is

    h_t = (K_t[0] * L + sum_j K_t[j + 1] * word_j) mod P

with keys ``K`` drawn from SHAKE-256 of the job's random key (a stream, so a longer value
only extends it).  The length term makes the words injective, so for two different values
and a key drawn at random, each lane agrees with probability <= 2/2^32 (the keys are
uint32 mod P), all four with probability <= 2^-124.  Lists and samples do not depend on
the key (it is drawn per job), so over 10^9 listed values and 10^11 looked-up values the
chance that any sample is matched by another value is <= 10^20 * 2^-124 ~ 5e-18.

The digest is (hi, lo) = (h_0 * P + h_1, h_2 * P + h_3), two uint64 (P^2 < 2^64).  It is
computed with no Python object per value: a text list's chunk, a parquet column's
buffers, or a batch of samples' values joined into one buffer.  (blake2b per value, the
previous digest, cost 1.7 us a value on the client: 6.8 s for 4 million keys.)
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

P = 4294967291  # 2^32 - 5, prime
LANES = 4
SAFE_WORDS = 255  # words summed unreduced, with the length term: 256 products < 2^56 each
SHORT = 1 << 24  # values shorter than this many bytes add their length term unreduced
BLOCK_WORDS = 1 << 16  # words of a block of :func:`_column_sums` (512 KiB)
TAIL_COST = 3  # a word summed value by value costs about 3 words of a column
_MASKS = np.array([0, 0xFF, 0xFFFF, 0xFFFFFF], dtype=np.uint32)
DEFAULT_KEY = "00" * 16  # a fixed key: for callers that build and look up in one process
PAD = bytes(3)  # after the last value: 4-byte loads at its last bytes
_KEYS: dict[str, np.ndarray] = {}


def new_key() -> str:
    """A job's random key (hex): drawn once per job, shipped to every task."""
    return os.urandom(16).hex()


def keys(key: str, words: int) -> np.ndarray:
    """(words + 1, LANES) uint64 keys < P: row 0 for the length, row j + 1 for word j."""
    have = _KEYS.get(key)
    if have is None or len(have) < words + 1:
        rows = max(words + 1, 64, 2 * (len(have) if have is not None else 0))
        raw = hashlib.shake_256(bytes.fromhex(key)).digest(4 * LANES * rows)
        have = (np.frombuffer(raw, dtype="<u4").astype(np.uint64) % np.uint64(P)
                ).reshape(rows, LANES)
        _KEYS[key] = have
    return have


def _u32(buf: np.ndarray) -> np.ndarray:
    """The little-endian uint32 starting at every byte of ``buf`` (a view)."""
    return np.ndarray(shape=(len(buf) - 3,), dtype="<u4", buffer=buf, strides=(1,))


def hash_spans(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray,
               key: str) -> tuple[np.ndarray, np.ndarray]:
    """The (hi, lo) digests of the values ``buf[starts[i]:ends[i]]`` (``buf`` uint8
    with at least 3 bytes after the last end).

    Word ``j`` of every value is one column (a value's missing words are zeros, which
    add nothing): ``width`` columns summed for all values at once, and the words past
    them, of the few longer values, summed value by value (:func:`_tail_sums`)."""
    starts = np.asarray(starts, dtype=np.int64)
    lens = np.asarray(ends, dtype=np.int64) - starts
    if not len(lens):
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    nw = (lens + 2) // 3
    width = _width(nw)
    k = keys(key, int(nw.max()))
    p = np.uint64(P)
    short = int(lens.max()) < SHORT  # then K * len < 2^56: summed with the words
    lanes = _column_sums(buf, starts, lens, width, k, short)  # < (width + 1) * 2^56
    if not short:
        lanes %= p
        lanes += k[0, :, None] * (lens.astype(np.uint64) % p) % p
    lanes %= p
    longer = np.flatnonzero(nw > width)
    if len(longer):
        tails = _tail_sums(buf, starts[longer], lens[longer], width, k)
        lanes[:, longer] = (lanes[:, longer] + np.stack(tails)) % p
    return lanes[0] * p + lanes[1], lanes[2] * p + lanes[3]


def _width(nw: np.ndarray) -> int:
    """The columns summed for all values: the fewest whose cost (a column: ``n`` words)
    plus the rest's (``TAIL_COST`` a word) is least; at most ``SAFE_WORDS``."""
    top = min(int(nw.max()), SAFE_WORDS)
    if not top:  # empty values only
        return 0
    counts = np.bincount(np.minimum(nw, top), minlength=top + 1)
    w = np.arange(top + 1)
    below = np.concatenate([[0], np.cumsum(w * counts)[:-1]])  # words of values < w
    at_least = len(nw) - np.concatenate([[0], np.cumsum(counts)[:-1]])  # values >= w
    tail = int(nw.sum()) - (below + w * at_least)
    return int(np.argmin(len(nw) * w + TAIL_COST * tail))


def _column_sums(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray, width: int,
                 k: np.ndarray, with_len: bool) -> np.ndarray:
    """(``LANES``, values): ``sum_{j < width} K[j + 1] * word_j`` of every value, plus
    ``K[0] * len`` when ``with_len``, unreduced.  The (values, 1 + ``width``) matrix of
    the length and the words times the keys, up to ``BLOCK_WORDS`` words at a time (a
    few numpy calls a block, not a dozen a column: 0.34 -> 0.2 us a 32-byte value in
    batches of 1024).  Values of one length at even steps (a batch of uids) are read
    through a strided view of ``buf``, with no gather."""
    u = _u32(buf)
    last = len(u) - 1
    out = np.empty((LANES, len(lens)), np.uint64)
    j3 = 3 * np.arange(width, dtype=np.int64)
    kt = np.ascontiguousarray(k[:width + 1].T)
    same = int(lens.min()) == int(lens.max())  # one mask a column for all rows
    stride = _even_step(starts) if same else None
    step = max(1, BLOCK_WORDS // (width + 1))
    for a in range(0, len(lens), step):
        n = lens[a:a + step]
        words = np.empty((len(n), width + 1), np.uint64)
        words[:, 0] = n if with_len else 0
        if stride is not None:  # word j of row i: 4 bytes at starts[a + i] + 3j
            at = np.ndarray((len(n), width), "<u4", buf, int(starts[a]), (stride, 3))
            words[:, 1:] = at & _MASKS[np.clip(n[0] - j3, 0, 3)]
        else:
            at = starts[a:a + step, None] + j3
            np.minimum(at, last, out=at)
            rem = (n[:1] if same else n[:, None]) - j3
            words[:, 1:] = u[at] & _MASKS[np.clip(rem, 0, 3, out=rem)]
        np.matmul(kt, words.T, out=out[:, a:a + step])
    return out


def _even_step(starts: np.ndarray) -> int | None:
    """The step between consecutive ``starts`` when it is one (>= 0), else None."""
    if len(starts) < 2:
        return 0
    step = int(starts[1] - starts[0])
    return step if step >= 0 and bool((np.diff(starts) == step).all()) else None


def _tail_sums(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray, first: int,
               k: np.ndarray) -> list[np.ndarray]:
    """Per lane, ``sum_{j >= first} K[j + 1] * word_j mod P`` of each value (every
    product reduced, so any length sums below 2^64)."""
    nw = (lens + 2) // 3 - first
    offs = np.zeros(len(nw) + 1, dtype=np.int64)
    np.cumsum(nw, out=offs[1:])
    which = np.repeat(np.arange(len(nw)), nw)
    j = np.arange(offs[-1], dtype=np.int64) - offs[which] + first
    rem = np.minimum(lens[which] - 3 * j, 3)
    words = (_u32(buf)[starts[which] + 3 * j] & _MASKS[rem]).astype(np.uint64)
    p = np.uint64(P)
    out = []
    for t in range(LANES):
        sums = np.zeros(len(words) + 1, dtype=np.uint64)
        np.cumsum(k[:, t][j + 1] * words % p, out=sums[1:])
        out.append((sums[offs[1:]] - sums[offs[:-1]]) % p)
    return out


def hash_values(values: list[bytes], key: str, strip_newline: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """The (hi, lo) digests of ``values`` (a list of bytes); ``strip_newline``: of
    each value without its trailing newline."""
    lens = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    ends = np.cumsum(lens)
    starts = ends - lens
    buf = np.frombuffer(b"".join(values) + PAD, dtype=np.uint8)
    if strip_newline and len(values):
        ends = ends - ((ends > starts) & (buf[np.maximum(ends - 1, 0)] == 10))
    return hash_spans(buf, starts, ends, key)
