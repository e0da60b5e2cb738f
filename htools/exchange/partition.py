"""Stage 1 of the exchange: :func:`partition` (one task per input shard, or per group of
small shards) keys every sample, buffers it in its bucket and, through a
:class:`Spiller`, writes sorted runs of all buckets to scratch; and :func:`sample_keys`,
htsort's pre-pass that samples sort keys for the splitters.  The dedup tasks
(:mod:`.dedup`) spill through the same :class:`Spiller`.

Task functions are top-level, take plain arguments, run in the task frame
(:func:`htools.runtime.task.shard_task`) and talk to later stages only through run
files (:mod:`.runfile`).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from operator import itemgetter
from sys import getsizeof

import numpy as np

from htools import storage
from htools.exchange.groupcount import distinct_digests
from htools.exchange.keys import (
    bucket_fn,
    checked_key,
    content_bucket,
    first_pass_key,
    placed_key,
)
from htools.exchange.listjoin import Tags, drawing, joined_key, small_selected, tagged
from htools.exchange.runfile import Run, RunWriter, SampleEncoder, key_packer
from htools.exchange.semijoin import DigestTee, digest_spec
from htools.exchange.specs import InputSpan, StageOne, scratch_options
from htools.runtime.memory import peak_rss, rss
from htools.runtime.shardio import read_shard
from htools.runtime.task import M_TRIM_THRESHOLD, TRIM_THRESHOLD, malloc_tuned, mallopt, shard_task
from htools.summary import ShardResult
from htools.usercode.apply import map_samples
from htools.usercode.script import user_traceback

RECORD_OVERHEAD = 100  # Python bytes of a buffered record beyond its payload


def partition(inputs: InputSpan | list[tuple[int, str]], task: int, spec: StageOne) -> dict:
    """Stage-1 task: samples of a few input shards -> sorted run files in scratch.

    ``inputs`` yield (position in the job's input list, URL).  Records are buffered per
    bucket up to the memory budget; each spill sorts every bucket (stably) and writes
    one run of all buckets.
    """
    rss0 = rss()
    urls = [u for _i, u in inputs]
    out = Spiller(spec, task, np.zeros(spec.buckets, dtype=np.int64) if spec.counts else None)
    if spec.dedup_buckets:  # htsort --dedup by another key: digests beside (.semijoin)
        out = DigestTee(out, Spiller(digest_spec(spec), task, None))
    with shard_task(urls[0] if len(urls) == 1 else urls, max_errors=spec.max_errors) as result, \
            heap_kept(spec.memory):
        try:
            _partition(inputs, spec, result, out)
        except BaseException:
            out.discard()
            raise
    result.extra = {**out.made(), "rss_start": rss0, "peak_rss": peak_rss()}
    return result.as_dict()


_C_INT_MAX = (1 << 31) - 1  # mallopt's value is a C int (a larger one would wrap around)


@contextmanager
def heap_kept(budget: int) -> Iterator[None]:
    """While a stage-1 task (or a dedup task) runs, the heap it frees (its records, at
    each spill and at its end) stays in the process, up to ``budget`` bytes, instead of
    going back to the system beyond :data:`~htools.runtime.task.TRIM_THRESHOLD`: its next spill and the
    next stage-1 task of the worker reuse it rather than fault fresh pages in for every
    record (htshuffle of 1 GB of 16 KiB samples on 2 workers: stage 1's faults 148,000-
    160,000 -> 90,000 a GB, most of them now the first task's of each worker; its CPU
    1.67-1.78 -> 1.52-1.55 s a GB; at 128 KiB no change).  Afterwards the setting is
    back, and the next free at the heap's top gives what is beyond it back (a later task
    that is not stage 1, the write tasks).  Nothing changes off glibc, nor where
    :func:`~htools.runtime.task.tune_malloc` left the user's setting as it was."""
    set_trim = mallopt() if malloc_tuned() else None
    kept = set_trim is not None and set_trim(M_TRIM_THRESHOLD,
                                             min(max(budget, TRIM_THRESHOLD), _C_INT_MAX))
    try:
        yield
    finally:
        if kept:
            set_trim(M_TRIM_THRESHOLD, TRIM_THRESHOLD)  # type: ignore[misc]


def _partition(inputs, spec: StageOne, result: ShardResult, out: Spiller) -> None:
    encode, pack = SampleEncoder(spec.scratch, spec.mtime).record, key_packer()
    if spec.first_pass:
        bucket_of = content_bucket(spec.buckets)
    elif spec.dedup_buckets:  # keys [K, place]: the bucket of K
        by_key = bucket_fn(spec.key, spec.buckets, spec.splitters)
        bucket_of = lambda k: by_key(k[0])  # noqa: E731
    else:
        bucket_of = bucket_fn(spec.key, spec.buckets, spec.splitters)
    for index, url in inputs:
        tags = Tags()  # the input sample being keyed (.listjoin)
        if spec.first_pass:
            key_of = first_pass_key(spec.key, spec.script, index)
        elif spec.select_join:  # a large --keep/--drop list: keys [K, place], its digest
            key_of = joined_key(spec.key, spec.script, index, tags)
        elif spec.dedup_buckets:
            key_of = placed_key(spec.key, spec.script, index)
        else:
            key_of = spec.key.key_fn(spec.script, index)
            if _draws_owed(spec):
                key_of = drawing(key_of, tags)  # as the join path draws
            if spec.key.mode != "random":  # random keys: ints in [0, 2**63), valid
                key_of = _checked(key_of)
        for sample in input_samples(url, spec, result, tags):
            sample.pop("__url__", None)
            try:
                k = key_of(sample)
                rec = encode(pack(k), sample)
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
        self.memory = spec.memory
        self.runs: list[Run] = []
        self.keys: list[Run] = []  # the runs' keys files (spec.group_by)
        self.buffers: dict[int, list] = {}
        self.held = 0

    def add(self, bucket: int, k, rec: bytes | bytearray | list) -> None:
        """Buffer one record: bytes, or a list of pieces
        (:meth:`.runfile.SampleEncoder.record`)."""
        buf = self.buffers.get(bucket)
        if buf is None:
            buf = self.buffers[bucket] = []
        buf.append((k, rec))
        # counted as allocated: the tar writer's buffers keep their spare room
        self.held += RECORD_OVERHEAD + (getsizeof(rec) if type(rec) is not list
                                        else sum(map(getsizeof, rec)))
        if self.held >= self.memory:
            self.close()

    def close(self) -> None:
        if self.buffers:
            if self.spec.group_by:
                self.keys.append(_keys_file(self.buffers, self.spec, self.task,
                                            len(self.runs)))
            self.runs.append(_spill(self.buffers, self.spec, self.task, len(self.runs),
                                    self.counts))
        self.held = 0

    def discard(self) -> None:
        """A failed attempt: its runs are useless now."""
        for r in self.runs + self.keys:
            storage.delete(r.url, scratch_options(self.spec.options))
        self.runs.clear()
        self.keys.clear()

    def made(self) -> dict:
        """The runs (URL, size) and, when counted, the sparse counts per bucket."""
        extra: dict = {"runs": [(r.url, r.size) for r in self.runs]}
        if self.keys:
            extra["keys"] = [(r.url, r.size) for r in self.keys]
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
            w.write_records(bucket, [rec for _k, rec in buf])
            if counts is not None:
                counts[bucket] += len(buf)
        run = w.close()
    buffers.clear()
    return run


def _keys_file(buffers: dict[int, list], spec: StageOne, task: int, spill: int) -> Run:
    """The keys file of the run about to be spilled: its distinct group keys per bucket."""
    url = storage.join(spec.scratch, f"keys-{task:06d}-{spill:04d}-{uuid.uuid4().hex[:8]}.bin")
    head = spec.group_by == "head"
    with RunWriter(url, 0, spec.buckets, scratch_options(spec.options)) as w:
        for bucket in sorted(buffers):
            buf = buffers[bucket]
            buf.sort(key=itemgetter(0), reverse=spec.key.reverse)  # stable, as _spill's
            w.write(bucket, distinct_digests([k for k, _rec in buf], head), len(buf))
        return w.close()


def _draws_owed(spec: StageOne) -> bool:
    """Whether a small-list stage 1 draws the random keys of the samples the list leaves
    out (:func:`.listjoin.drawing`): a shuffle's keys, so that they match the join path's;
    only then does the selection count what it left out before each sample it passes."""
    return spec.select is not None and spec.key.mode == "random" and not spec.key.dedup


def input_samples(url: str, spec: StageOne, result: ShardResult,
                  tags: Tags | None = None) -> Iterator[dict]:
    """The samples of one input shard, selected by --keep/--drop (not for the splitters'
    pre-pass: ``tags`` None), through the script's process_sample if it has one."""
    with read_shard(url, spec.options, result) as samples:
        if tags is None or spec.select is None:  # no list; or the pre-pass, which samples
            pass  # keys of every sample (as both of .listjoin's paths do)
        elif spec.select_join:  # digest and place as the small path would look it up
            samples = tagged(samples, spec.select, result, url, tags)
        else:
            samples = small_selected(samples, spec.select, result, url, spec.options,
                                     tags if _draws_owed(spec) else None)
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
        for sample in input_samples(input, spec, result):
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
