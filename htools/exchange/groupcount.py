"""Counting groups of equal keys per bucket, for writes that fold them (a reduce,
``--merge``, ``--dedup`` among equal keys): ``--maxcount N`` then cuts the merged order
every N groups, and ``@M`` balances outputs by group count, not by records.

Stage 1 (and the dedup tasks) write beside each run a *keys file* in the run format
(:class:`.runfile.RunWriter`): per bucket, a 16-byte digest of each distinct group key
of that run.  A count task (:func:`count_groups`) reads the keys files' slices of a
range of buckets -- keys only, no sample bytes -- and counts the distinct digests of
each bucket over all runs (equal keys always share a bucket).  The client gets sparse
counts per bucket, as from stage 1.
"""

from __future__ import annotations

import hashlib

import numpy as np

from htools.exchange.runfile import Run, bucket_offsets, open_slice, pack_key
from htools.runtime.memory import peak_rss
from htools.runtime.task import shard_task

DIGEST = 16


def group_of(k, head: bool):
    """The part of a record's key that makes its group (the whole key, or after htsort's
    dedup pass the sort key before the input place)."""
    return k[0] if head else k


def digest(k) -> bytes:
    """The digest a keys file holds for group key ``k`` (of its msgpack bytes)."""
    return hashlib.blake2b(pack_key(k), digest_size=DIGEST).digest()


def distinct_digests(keys: list, head: bool) -> bytes:
    """One bucket of one run: the digests of its distinct group keys (the keys come
    sorted, so equal ones are adjacent)."""
    out, last = [], None
    for k in keys:
        d = digest(group_of(k, head))
        if d != last:
            out.append(d)
            last = d
    return b"".join(out)


def count_groups(keys: list[Run], a: int, b: int, options: dict) -> dict:
    """Count task: buckets ``[a, b)`` of every keys file -> distinct group keys per bucket
    (sparse: bucket numbers, counts)."""
    with shard_task(f"{len(keys)} keys files, buckets {a}..{b - 1}") as result:
        parts: list[list[np.ndarray]] = [[] for _ in range(b - a)]
        for run in keys:
            offsets = bucket_offsets(run, a, b, options).astype(np.int64)
            lo, hi = int(offsets[0]), int(offsets[-1])
            if hi == lo:
                continue
            with open_slice(run, lo, hi, options) as f:
                raw = np.frombuffer(f.read(hi - lo), dtype=f"V{DIGEST}")
            cuts = (offsets - lo) // DIGEST
            for j in np.flatnonzero(np.diff(cuts)):
                parts[j].append(raw[cuts[j]:cuts[j + 1]])
        counts = np.array([len(np.unique(np.concatenate(p))) if p else 0 for p in parts],
                          dtype=np.int64)
    nz = np.flatnonzero(counts)
    result.extra = {"counts": ((nz + a).astype(np.uint32).tobytes(),
                               counts[nz].astype(np.uint64).tobytes()),
                    "peak_rss": peak_rss()}
    return result.as_dict()
