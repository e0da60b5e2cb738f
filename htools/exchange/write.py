"""The exchange's write tasks: the merged records of each output's buckets (or, with
``--maxcount``, an exact slice of their merged order) -> dedup / --merge / reduce ->
one output shard, written atomically.  Like every task function, top-level, plain
arguments, run in the task frame (:func:`htools.runtime.task.shard_task`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from htools.errors import HtoolsError
from htools.exchange.cursors import Cursor, bucket_records, close_all, open_cursors
from htools.exchange.groupcount import digest, group_of
from htools.exchange.groups import dedup, to_write
from htools.exchange.runfile import Run, fields_of
from htools.exchange.semijoin import DropFilter
from htools.exchange.specs import StageTwo
from htools.runtime.memory import peak_rss, rss
from htools.runtime.shardio import write_shard
from htools.runtime.streams import distinct_keys
from htools.runtime.task import shard_task
from htools.summary import ShardResult

if TYPE_CHECKING:  # the engine runs on the client; write tasks only on workers
    from htools.runtime.engine import Task
    from htools.tar import TarWriter


def write_outputs(outputs: list[tuple], runs: list[Run], spec: StageTwo,
                  drops: list[Run] | None = None) -> list[dict]:
    """Write task: each ``(url, a, b)`` output gets buckets ``[a, b)`` of every run,
    merged, reduced, written atomically; a ``(url, a, b, begin, count, bucket_begin)``
    output (``--maxcount``) gets ``count`` records of those buckets' merged order from
    global index ``begin`` (``bucket_begin`` being bucket a's first).  The outputs are in
    bucket order, so every run's slice is read once, front to back (a retry of some of
    them skips the others).  One failed output does not fail the others.  ``drops``:
    the drop runs of htsort --dedup by another key (:func:`drop_filter`)."""
    rss0 = rss()
    write = _write_slices if len(outputs[0]) > 3 else _write_buckets
    results = write(outputs, runs, spec, drop_filter(drops, outputs, spec))
    for r in results:
        r["extra"].update({"rss_start": rss0, "peak_rss": peak_rss()})
    return results


def drop_filter(drops: list[Run] | None, outputs: list[tuple], spec: StageTwo
                ) -> DropFilter | None:
    """The places a write task leaves out (htsort --dedup by another key): those the
    drop runs list for its buckets.  The records are left out of the merged stream
    before anything else sees them (a --maxcount slice counts the kept ones only)."""
    if drops is None:
        return None
    return DropFilter(drops, outputs[0][1], outputs[-1][2], spec.scratch_options)


def _write_buckets(outputs: list[tuple], runs: list[Run], spec: StageTwo,
                   drops: DropFilter | None) -> list[dict]:
    results: list[dict] = []
    try:
        cursors = open_cursors(runs, outputs[0][1], outputs[-1][2], spec.scratch_options)
    except HtoolsError as e:
        for url, *_where in outputs:
            with shard_task(f"{len(runs)} runs", url) as result:
                raise e
            results.append(result.as_dict())
        return results
    try:
        for url, a, b in outputs:
            results.append(_write_output(url, a, b, cursors, runs, spec, drops))
    finally:
        close_all(cursors)
    return results


def _write_output(url: str, a: int, b: int, cursors: list[Cursor], runs: list[Run],
                  spec: StageTwo, drops: DropFilter | None) -> dict:
    with shard_task(f"{len(runs)} runs", url, max_errors=spec.max_errors) as result:
        for c in cursors:  # past outputs of this task not written this time (a retry)
            c.skip_to(a)
        read_before = sum(c.count for c in cursors)
        duplicates = [0]
        try:
            merged = itertools.chain.from_iterable(
                bucket_records(cursors, bucket, spec.reverse, _views(spec))
                for bucket in range(a, b))
            if drops is not None:
                merged = drops.apply(merged)
            if spec.dedup:
                merged = dedup(merged, spec, result, url, duplicates)
            _write_records(url, merged, spec, result)
        except BaseException:
            # the whole output is lost: count every record it had (read or not), and
            # move every cursor to the next output's first bucket
            for c in cursors:
                c.skip_to(b)
            result.samples_read = sum(c.count for c in cursors) - read_before \
                - (drops.in_buckets(a, b) if drops is not None else 0)  # counted as dropped
            raise
    result.extra = {"duplicates": duplicates[0]} if spec.dedup else {}
    return result.as_dict()


def _views(spec: StageTwo) -> bool:
    """Whether records may come as views of the runs' read windows: only when each is
    written as it comes (a dedup, --merge, reduce or group keeps records a while)."""
    return spec.passes_through and not spec.by_groups


_REMEDY = "use --merge or a reduce_samples() to combine samples with equal keys"


def _write_records(url: str, merged: Iterator[tuple], spec: StageTwo,
                   result: ShardResult) -> None:
    """Merged records -> (reduce, --merge) -> one output shard, written atomically."""
    with write_shard(url, spec.options, result, mtime=spec.mtime, index=spec.index) as writer:
        if spec.reduce is None and not spec.merge:
            _write_through(url, merged, writer, result)
            return
        for item in distinct_keys(to_write(merged, spec, result, url), url, _REMEDY):
            if item["__tar__"]:
                writer.write_encoded(item["__tar__"])
                result.samples_written += 1


def _write_through(url: str, merged: Iterator[tuple], writer: TarWriter,
                   result: ShardResult) -> None:
    """Records written as they come, their tar bytes and fields as the records hold them
    (:func:`~.groups.to_write` and :func:`~htools.runtime.streams.distinct_keys` in one
    loop: no dict, no generator a record)."""
    write, previous = writer.write_encoded, None
    for _k, skey, rec, start in merged:
        result.samples_read += 1
        result.samples_mapped += 1
        if skey == previous:  # distinct_keys' error
            list(distinct_keys(iter(({"__key__": skey}, {"__key__": skey})), url, _REMEDY))
        previous = skey
        if len(rec) > start:
            write(memoryview(rec)[start:], fields_of(rec, start))
            result.samples_written += 1


class _Slicer:
    """The merged records of a write task's buckets as one stream, taken a slice at a
    time by global index (``--maxcount``: outputs may share a bucket) of records, or with
    ``spec.by_groups`` of groups of equal keys (a reduce, --merge, --dedup: the counts
    are :mod:`.groupcount`'s).  A read that fails leaves the stream broken: the next
    slice opens the runs again at its own first bucket."""

    def __init__(self, runs: list[Run], last: int, spec: StageTwo,
                 drops: DropFilter | None = None):
        self.runs, self.last, self.spec, self.drops = runs, last, spec, drops
        self.cursors: list[Cursor] = []
        self._records: Iterator | None = None
        self.at = 0  # global index of the next record (or group)
        self.broken = False
        self.taken = 0  # records taken by the current slice
        self.left = 0  # its records (or groups) not taken yet

    def take(self, a: int, bucket_begin: int, begin: int, count: int) -> Iterator[tuple]:
        """Records (or groups) ``[begin, begin + count)``, which start in bucket ``a``
        (whose first is ``bucket_begin``), as records."""
        self.taken, self.left = 0, count
        if self._records is None or self.broken or begin < self.at:
            self._reopen(a, bucket_begin)
        for _ in range(begin - self.at):  # records of outputs not written this time
            self._next()
        return self._take(count)

    def _take(self, count: int) -> Iterator[tuple]:
        for _ in range(count):
            if self.spec.by_groups:
                group = self._next()
                self.taken += len(group)
                self.left -= 1
                yield from group
            else:
                rec = self._next()
                self.taken += 1
                self.left -= 1
                yield rec

    def lost(self) -> int:
        """The records of a slice whose output failed: those taken, and with groups the
        rest of the slice's, read past now (as many as can still be read)."""
        if not self.spec.by_groups:
            return self.left + self.taken
        try:
            while self.left > 0 and not self.broken:
                self.taken += len(self._next())
                self.left -= 1
        except BaseException:  # noqa: BLE001 -- the output failed already; count what was read
            pass
        return self.taken

    def _reopen(self, a: int, bucket_begin: int) -> None:
        self.close()
        self.cursors = open_cursors(self.runs, a, self.last, self.spec.scratch_options)
        self._records = itertools.chain.from_iterable(
            bucket_records(self.cursors, bucket, self.spec.reverse, _views(self.spec))
            for bucket in range(a, self.last))
        if self.drops is not None:
            self._records = self.drops.apply(self._records)
        if self.spec.by_groups:
            self._records = _groups(self._records, self.spec.positions)
        self.at, self.broken = bucket_begin, False

    def _next(self) -> tuple:
        try:
            rec = next(self._records)
        except StopIteration:
            self.broken = True
            raise HtoolsError(f"{len(self.runs)} runs hold fewer records than stage 1 "
                              "counted") from None
        except BaseException:
            self.broken = True
            raise
        self.at += 1
        return rec

    def close(self) -> None:
        close_all(self.cursors)
        self.cursors = []


def _groups(records_: Iterator[tuple], head: bool) -> Iterator[list[tuple]]:
    """Records -> lists of records with equal group keys, told apart as the keys files
    tell them (:func:`.groupcount.digest`)."""
    for _d, group in itertools.groupby(records_, key=lambda r: digest(group_of(r[0], head))):
        yield list(group)


def _write_slices(outputs: list[tuple], runs: list[Run], spec: StageTwo,
                  drops: DropFilter | None) -> list[dict]:
    slicer = _Slicer(runs, outputs[-1][2], spec, drops)
    results = []
    try:
        for url, a, _b, begin, count, bucket_begin in outputs:
            duplicates = [0]
            with shard_task(f"{len(runs)} runs", url, max_errors=spec.max_errors) as result:
                try:
                    merged = slicer.take(a, bucket_begin, begin, count)
                    if spec.dedup:
                        merged = dedup(merged, spec, result, url, duplicates)
                    _write_records(url, merged, spec, result)
                except BaseException:
                    result.samples_read = slicer.lost()  # the whole output is lost
                    raise
            result.extra = {"duplicates": duplicates[0]} if spec.dedup else {}
            results.append(result.as_dict())
    finally:
        slicer.close()
    return results


def narrow_write(task: Task, urls: list[str]) -> Task:
    """The write task for only ``urls`` of its outputs (a retry of those that failed)."""
    keep = set(urls)
    outs = [o for o in task.kwargs["outputs"] if o[0] in keep]
    return replace(task, kwargs={**task.kwargs, "outputs": outs}, outputs=[o[0] for o in outs])
