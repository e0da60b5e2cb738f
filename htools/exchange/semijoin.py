"""htsort --dedup F by another sort key K, as a semi-join on digests (issue 23, item 5).

The samples move once, as in a plain sort: stage 1 buckets them by K, each keyed
``[K, input position, ordinal]`` (:func:`.keys.second_pass_key`'s form: equal K keep
their input order, and a record names its place).  Beside its runs, a stage-1 task
writes *digest runs* (:class:`DigestTee`): one small record a sample -- the sha256 of F,
its place and its sort bucket -- bucketed by the digest.  *Decide tasks*
(:func:`keep_firsts`) read a range of digest buckets of every digest run, merged by
``(digest, place)``: the first place of each digest is kept (the first in input order,
today's rule), every other one is written to the task's *drop run*, bucketed by sort
bucket, sorted; the duplicates count as dropped there, as the dedup pass counted
them.  Each write task loads the drop runs' slices of its buckets (:class:`DropFilter`)
and leaves those records out as it writes.  The data crosses scratch once, as a plain
sort's does; the digests (about 60 bytes a sample) are the only extra traffic.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from htools import storage
from htools.errors import HtoolsError
from htools.exchange.cursors import bucket_records, close_all, open_cursors
from htools.exchange.keys import KeySpec
from htools.exchange.runfile import Run, RunWriter, bucket_offsets, open_slice, pack_key, record
from htools.exchange.specs import StageOne
from htools.runtime.memory import peak_rss, rss
from htools.runtime.task import shard_task

PLACE = np.dtype(">u8")  # a place in a drop run: input position << 32 | ordinal


def digest_spec(spec: StageOne) -> StageOne:
    """What a stage-1 task's digest spiller needs: the digest buckets, ascending keys
    (its budget is the task's, shared with the samples: :class:`DigestTee`)."""
    return replace(spec, scratch=storage.join(spec.scratch, "digests/"),
                   buckets=spec.dedup_buckets, key=KeySpec(), splitters=(), counts=False,
                   group_by="")


def digest_bucket(digest: bytes, buckets: int) -> int:
    return (int.from_bytes(digest[:8], "big") * buckets) >> 64


class DigestTee:
    """Stage 1's output with --dedup by another key: every sample to ``samples`` (a
    :class:`.partition.Spiller` by K), its digest record to ``digests`` (one by digest).
    Keys are :class:`.keys.Placed`: they carry the digest of F this far.  The two share
    the task's memory budget: when what they hold reaches it, both spill."""

    def __init__(self, samples, digests):
        self.samples, self.digests = samples, digests
        self.buckets = digests.spec.buckets
        self.memory = samples.spec.memory

    def add(self, bucket: int, k, rec: bytes) -> None:
        d, k.digest = k.digest, None
        entry = [d, abs(k[1]), abs(k[2]), bucket]
        self.digests.add(digest_bucket(d, self.buckets), entry, record(pack_key(entry), "", b""))
        self.samples.add(bucket, k, rec)
        if self.samples.held + self.digests.held >= self.memory:
            self.close()

    def close(self) -> None:
        self.samples.close()
        self.digests.close()

    def discard(self) -> None:
        self.samples.discard()
        self.digests.discard()

    def made(self) -> dict:
        return {**self.samples.made(), "digests": [(r.url, r.size) for r in self.digests.runs]}


def keep_firsts(runs: list[Run], a: int, b: int, url: str, buckets: int,
                options: dict) -> dict:
    """Decide task: digest buckets ``[a, b)`` of ``runs``, merged by (digest, place) ->
    the places of all but the first sample of each digest, in one drop run at ``url``
    (by sort bucket, each bucket's places sorted; none when nothing is dropped), and
    their counts per sort bucket."""
    rss0 = rss()
    sort_buckets: list[int] = []  # of each place dropped
    places: list[int] = []
    made, counts = None, (b"", b"")  # a failed task's
    with shard_task(f"{len(runs)} digest runs, buckets {a}..{b - 1}", url) as result:
        last = None
        for k in digest_records(runs, a, b, options):
            result.samples_read += 1
            if k[0] == last:
                sort_buckets.append(k[3])
                places.append(k[1] << 32 | k[2])
                result.samples_dropped += 1
            else:
                last = k[0]
        made, counts = write_drop_run(url, np.array(sort_buckets, dtype=np.int64),
                                      np.array(places, dtype=np.uint64), buckets, options)
    result.extra = decided(made, counts, rss0, duplicates=len(places))
    return result.as_dict()


def digest_records(runs: list[Run], a: int, b: int, options: dict) -> Iterator[list]:
    """The keys ``[digest, position, ordinal, sort bucket]`` of the digest records of
    buckets ``[a, b)`` of ``runs``, merged by (digest, place): a decide task's input."""
    cursors = open_cursors(runs, a, b, options)
    try:
        for bucket in range(a, b):
            for k, _skey, _rec, _start in bucket_records(cursors, bucket, False):
                yield k
    finally:
        close_all(cursors)


def decided(made: Run | None, counts: tuple[bytes, bytes], rss0: int, **more) -> dict:
    """A decide task's ``extra``: its drop run, its counts per sort bucket, ``more``,
    its memory."""
    return {"run": (made.url, made.size) if made else None, "counts": counts, **more,
            "rss_start": rss0, "peak_rss": peak_rss()}


def write_drop_run(url: str, sort_buckets: np.ndarray, places: np.ndarray, buckets: int,
                   options: dict) -> tuple[Run | None, tuple[bytes, bytes]]:
    """The places left out, by sort bucket, each bucket's sorted (as
    :class:`DropFilter` reads them), and their counts per sort bucket."""
    order = np.lexsort((places, sort_buckets))
    sort_buckets, places = sort_buckets[order], places[order]
    nz, first, n = np.unique(sort_buckets, return_index=True, return_counts=True)
    counts = (nz.astype(np.uint32).tobytes(), n.astype(np.uint64).tobytes())
    if not len(places):
        return None, counts
    with RunWriter(url, 0, buckets, options) as w:
        for j, i, m in zip(nz.tolist(), first.tolist(), n.tolist()):
            w.write(j, places[i:i + m].astype(PLACE).tobytes(), m)
        return w.close(), counts


class DropFilter:
    """A write task's view of the drop runs: the places of its buckets ``[a, b)`` to
    leave out, loaded when first used (inside an output's task frame: a run that cannot
    be read fails that output).  The decide tasks counted them as dropped already."""

    def __init__(self, runs: list[Run], a: int, b: int, options: dict):
        self.runs, self.a, self.b, self.options = runs, a, b, options
        self.places: set[int] | None = None
        self.per_bucket = np.zeros(b - a, dtype=np.int64)  # places of each bucket

    def _load(self) -> set[int]:
        places: set[int] = set()
        self.per_bucket[:] = 0
        for run in self.runs:
            offsets = bucket_offsets(run, self.a, self.b, self.options).astype(np.int64)
            lo, hi = int(offsets[0]), int(offsets[-1])
            if hi > lo:
                self.per_bucket += np.diff(offsets) // PLACE.itemsize
                with open_slice(run, lo, hi, self.options) as f:
                    places.update(np.frombuffer(f.read(hi - lo), dtype=PLACE).tolist())
        return places

    def in_buckets(self, a: int, b: int) -> int:
        """The places to leave out of buckets ``[a, b)`` (0 when the drop runs cannot be
        read: every record then counts as failed)."""
        if self.places is None:
            try:
                self.places = self._load()
            except HtoolsError:
                return 0
        return int(self.per_bucket[a - self.a:b - self.a].sum())

    def apply(self, records_: Iterator[tuple]) -> Iterator[tuple]:
        """``records_`` without the dropped ones."""
        if self.places is None:
            self.places = self._load()
        places = self.places
        for rec in records_:
            k = rec[0]  # [K, position, ordinal], negated under reverse
            if (abs(k[1]) << 32 | abs(k[2])) not in places:
                yield rec
