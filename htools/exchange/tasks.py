"""The exchange's task functions: partition (stage 1), merge (each extra level), and
the key-sampling pre-pass of htsort; the cursors that read runs.  The write tasks are
in :mod:`.write`.

All are top-level, take plain arguments, run in the task frame
(:func:`htools.runtime.task.shard_task`) and talk to each other only through run files
(:mod:`.runfile`).
"""

from __future__ import annotations

import heapq
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import BinaryIO

import numpy as np

from htools import storage
from htools.errors import HtoolsError
from htools.exchange.keys import (
    KeySpec,
    bucket_fn,
    checked_key,
    content_bucket,
    first_pass_key,
)
from htools.exchange.runfile import (
    Run,
    RunWriter,
    SampleEncoder,
    bucket_offsets,
    open_slice,
    pack_key,
    raw_records,
    record,
    records,
)
from htools.runtime.memory import peak_rss, rss
from htools.runtime.shardio import read_shard
from htools.runtime.task import shard_task
from htools.selection import Selection, selected
from htools.summary import ShardResult
from htools.usercode.apply import map_samples
from htools.usercode.script import Script, user_traceback

RECORD_OVERHEAD = 100  # Python bytes of a buffered record beyond its payload
COPY_CHUNK = 1 << 20


def scratch_options(options: dict | None) -> dict:
    """The job's storage options (endpoints, credentials) with no fsync for local runs:
    a run file lives only as long as the job."""
    options = dict(options or {})
    options["file"] = {**options.get("file", {}), "fsync": False}
    return options


@dataclass(frozen=True)
class StageOne:
    """Everything a partition task needs (shipped to every task)."""

    scratch: str
    buckets: int
    key: KeySpec
    splitters: tuple = ()
    script: Script | None = None  # process_sample / sort_key, or None
    memory: int = 256 << 20
    max_errors: int = 0
    options: dict = field(default_factory=dict)
    mtime: float | None = 0
    counts: bool = True  # return per-bucket counts (the client balances outputs by them)
    first_pass: bool = False  # htsort --dedup F by another key: bucket by F's content
    select: Selection | None = None  # --keep/--drop LIST, applied as samples are read


@dataclass(frozen=True)
class StageTwo:
    """What merge and write tasks need besides their runs and buckets."""

    reverse: bool = False
    reduce: Script | None = None  # a script with reduce_samples, or None
    merge: bool = False  # join samples with equal __key__ (htsort --merge)
    max_errors: int = 0
    mtime: float | None = 0
    options: dict = field(default_factory=dict)
    dedup: str | None = None  # --dedup FIELD: drop all but the first of equal FIELD bytes
    dedup_by_key: bool = False  # equal sort keys imply identical FIELD bytes (no decoding)
    index: bool = True  # hash what is written, for the shard index
    positions: bool = False  # keys are [K, input place...] (after htsort's dedup pass)

    @property
    def scratch_options(self) -> dict:
        return scratch_options(self.options)


# ------------------------------------------------------------------ stage 1 --

def partition(inputs: list[tuple[int, str]], task: int, spec: StageOne) -> dict:
    """Stage-1 task: samples of a few input shards -> sorted run files in scratch.

    ``inputs`` are (position in the job's input list, URL).  Records are buffered per
    bucket up to the memory budget; each spill sorts every bucket (stably) and writes
    one run of all buckets.
    """
    rss0 = rss()
    urls = [u for _i, u in inputs]
    out = Spiller(spec, task, np.zeros(spec.buckets, dtype=np.int64) if spec.counts else None)
    with shard_task(urls[0] if len(urls) == 1 else urls, max_errors=spec.max_errors) as result:
        try:
            _partition(inputs, spec, result, out)
        except BaseException:
            out.discard()
            raise
    result.extra = {**out.made(), "rss_start": rss0, "peak_rss": peak_rss()}
    return result.as_dict()


def _partition(inputs, spec: StageOne, result: ShardResult, out: Spiller) -> None:
    encoder = SampleEncoder(spec.scratch, spec.mtime)
    if spec.first_pass:
        bucket_of = content_bucket(spec.buckets)
    else:
        bucket_of = bucket_fn(spec.key, spec.buckets, spec.splitters)
    for index, url in inputs:
        key_of = first_pass_key(spec.key, spec.script, index) if spec.first_pass \
            else _checked(spec.key.key_fn(spec.script, index))
        for sample in _input_samples(url, spec, result):
            sample.pop("__url__", None)
            try:
                k = key_of(sample)
                rec = record(pack_key(k), sample["__key__"], encoder.encode(sample))
                bucket = bucket_of(k)
            except Exception as e:  # noqa: BLE001 -- the user's sort_key or the sample: a sample error
                result.samples_mapped = max(0, result.samples_mapped - 1)  # failed instead
                result.sample_error(url, str(sample.get("__key__", "?")),
                                    "cannot sort sample", e, user_traceback(e))
                continue
            out.add(bucket, k, rec)
    out.close()


class Spiller:
    """Records buffered per bucket up to the memory budget; each spill sorts every
    bucket (stably) and writes one run of all buckets (counted per bucket in
    ``counts``, if given).  What a task returns of them: :meth:`made`."""

    def __init__(self, spec: StageOne, task: int, counts: np.ndarray | None):
        self.spec, self.task, self.counts = spec, task, counts
        self.runs: list[Run] = []
        self.buffers: dict[int, list] = {}
        self.held = 0

    def add(self, bucket: int, k, rec: bytes) -> None:
        self.buffers.setdefault(bucket, []).append((k, rec))
        self.held += len(rec) + RECORD_OVERHEAD
        if self.held >= self.spec.memory:
            self.close()

    def close(self) -> None:
        if self.buffers:
            self.runs.append(_spill(self.buffers, self.spec, self.task, len(self.runs),
                                    self.counts))
        self.held = 0

    def discard(self) -> None:
        """A failed attempt: its runs are useless now."""
        for r in self.runs:
            storage.delete(r.url, scratch_options(self.spec.options))
        self.runs.clear()

    def made(self) -> dict:
        """The runs (URL, size) and, when counted, the sparse counts per bucket."""
        extra: dict = {"runs": [(r.url, r.size) for r in self.runs]}
        if self.counts is not None and self.runs:
            nz = np.flatnonzero(self.counts)
            extra["counts"] = (nz.astype(np.uint32).tobytes(),
                               self.counts[nz].astype(np.uint64).tobytes())
        return extra


def _checked(key_of):
    return lambda sample: checked_key(key_of(sample))


def _spill(buffers: dict[int, list], spec: StageOne, task: int, spill: int, counts) -> Run:
    """Sort each bucket's buffer and write them back to back as one run; empty them."""
    url = storage.join(spec.scratch, f"run-{task:06d}-{spill:04d}-{uuid.uuid4().hex[:8]}.bin")
    with RunWriter(url, 0, spec.buckets, scratch_options(spec.options)) as w:
        for bucket in sorted(buffers):
            buf = buffers[bucket]
            buf.sort(key=itemgetter(0), reverse=spec.key.reverse)  # stable: input order kept
            w.write(bucket, b"".join(rec for _k, rec in buf), len(buf))
            if counts is not None:
                counts[bucket] += len(buf)
        run = w.close()
    buffers.clear()
    return run


def _input_samples(url: str, spec: StageOne, result: ShardResult) -> Iterator[dict]:
    with read_shard(url, spec.options, result) as samples:
        samples = selected(samples, spec.select, result, url, spec.options)  # issue 23
        if spec.script is not None and spec.script.defines("process_sample"):
            yield from map_samples(samples, spec.script.load().process_sample, result, url)
        else:
            for s in samples:
                result.samples_read += 1
                result.samples_mapped += 1
                yield s


def sample_keys(input: str, index: int, spec: StageOne, limit: int) -> dict:
    """Pre-pass task (htsort): a reservoir sample of the sort keys of one shard."""
    rng = random.Random(f"splitters:{spec.key.seed}:{index}")
    key_of = spec.key.key_fn(spec.script, index)
    reservoir: list = []
    seen = 0
    with shard_task(input, max_errors=spec.max_errors) as result:
        for sample in _input_samples(input, spec, result):
            try:
                k = checked_key(key_of(sample))
            except Exception:  # noqa: BLE001 - stage 1 reports it
                continue
            seen += 1
            if len(reservoir) < limit:
                reservoir.append(k)
            else:
                j = rng.randrange(seen)
                if j < limit:
                    reservoir[j] = k
    result.extra = {"keys": reservoir}
    return result.as_dict()


# ----------------------------------------------------------- reading runs --

class _Cursor:
    """One run's slice of buckets ``[a, b)``, read front to back, bucket by bucket.
    ``pos`` is where the reader stands; ``count`` the records read or skipped so far."""

    def __init__(self, run: Run, a: int, b: int, options: dict):
        self.run = run
        self.a = a
        self.offsets = bucket_offsets(run, a, b, options)
        self.pos = int(self.offsets[0])
        self.count = 0
        end = int(self.offsets[-1])
        self.f: BinaryIO | None = open_slice(run, self.pos, end, options) if end > self.pos \
            else None

    def length(self, bucket: int) -> int:
        """Bytes of ``bucket`` left to read (all of it when the cursor is at its start)."""
        return int(self.offsets[bucket - self.a + 1]) - self.pos

    def records(self, bucket: int) -> Iterator[tuple]:
        for rec in records(self.f, self.length(bucket), self.run.url):
            self.pos += len(rec[2])
            self.count += 1
            yield rec

    def skip_to(self, bucket: int) -> None:
        """Skip to the start of ``bucket``, counting the records passed over."""
        n = int(self.offsets[bucket - self.a]) - self.pos
        if n > 0:
            for rec in raw_records(self.f, n, self.run.url):
                self.pos += len(rec)
                self.count += 1

    def copy(self, bucket: int) -> Iterator[bytes]:
        left = self.length(bucket)
        while left > 0:
            chunk = self.f.read(min(left, COPY_CHUNK))
            if not chunk:
                raise HtoolsError(f"{self.run.url}: run file ends early")
            left -= len(chunk)
            self.pos += len(chunk)
            yield chunk

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def _bucket_records(cursors: list[_Cursor], bucket: int, reverse: bool) -> Iterator[tuple]:
    """The records of one bucket of every run, merged by key (stable: earlier runs
    first on equal keys)."""
    live = [c for c in cursors if c.length(bucket) > 0]
    if not live:
        return iter(())
    if len(live) == 1:
        return live[0].records(bucket)
    return heapq.merge(*(c.records(bucket) for c in live), key=itemgetter(0), reverse=reverse)


def _open(runs: list[Run], a: int, b: int, options: dict) -> list[_Cursor]:
    cursors: list[_Cursor] = []
    try:
        for run in runs:
            cursors.append(_Cursor(run, a, b, options))
    except BaseException:
        for c in cursors:
            c.close()
        raise
    return cursors


# ----------------------------------------------------------- merge levels --

def merge_runs(runs: list[Run], a: int, b: int, url: str, spec: StageTwo) -> dict:
    """Merge-level task: buckets ``[a, b)`` of ``runs`` -> one run at ``url``.  A bucket
    found in one run only is copied as bytes; others are merged record by record."""
    rss0 = rss()
    out: Run | None = None
    with shard_task(f"{len(runs)} runs, buckets {a}..{b - 1}", url) as result:
        options = spec.scratch_options
        cursors = _open(runs, a, b, options)
        try:
            if any(c.f is not None for c in cursors):  # else: none of these buckets here
                out = _merge_into(url, a, b, cursors, spec.reverse, options)
        finally:
            for c in cursors:
                c.close()
    return _merged(result, out, rss0)


def _merge_into(url: str, a: int, b: int, cursors: list[_Cursor], reverse: bool,
                options: dict) -> Run:
    with RunWriter(url, a, b, options) as w:
        for bucket in range(a, b):
            live = [c for c in cursors if c.length(bucket) > 0]
            if len(live) == 1:
                for chunk in live[0].copy(bucket):
                    w.write(bucket, chunk, 0)
            elif live:
                for rec in _bucket_records(live, bucket, reverse):
                    w.write(bucket, rec[2], 1)
        return w.close()


def _merged(result: ShardResult, out: Run | None, rss0: int) -> dict:
    result.extra = {"run": (out.url, out.size) if out else None, "rss_start": rss0,
                    "peak_rss": peak_rss()}
    return result.as_dict()
