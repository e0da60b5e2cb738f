"""The merge-level task: buckets ``[a, b)`` of a group of runs -> one run, so that the
next level (or the writes) reads fewer runs.  A bucket found in one run only is copied
as bytes; others are merged record by record (stably: earlier runs first)."""

from __future__ import annotations

from htools.exchange.cursors import Cursor, bucket_records, close_all, open_cursors
from htools.exchange.runfile import Run, RunWriter
from htools.exchange.specs import StageTwo
from htools.runtime.memory import peak_rss, rss
from htools.runtime.task import shard_task


def merge_runs(runs: list[Run], a: int, b: int, url: str, spec: StageTwo) -> dict:
    """Merge-level task: buckets ``[a, b)`` of ``runs`` -> one run at ``url`` (none when
    no run holds any of these buckets)."""
    rss0 = rss()
    out: Run | None = None
    with shard_task(f"{len(runs)} runs, buckets {a}..{b - 1}", url) as result:
        options = spec.scratch_options
        cursors = open_cursors(runs, a, b, options)
        try:
            if any(c.f is not None for c in cursors):  # else: none of these buckets here
                out = _merge_into(url, a, b, cursors, spec.reverse, options)
        finally:
            close_all(cursors)
    result.extra = {"run": (out.url, out.size) if out else None, "rss_start": rss0,
                    "peak_rss": peak_rss()}
    return result.as_dict()


def _merge_into(url: str, a: int, b: int, cursors: list[Cursor], reverse: bool,
                options: dict) -> Run:
    with RunWriter(url, a, b, options) as w:
        for bucket in range(a, b):
            live = [c for c in cursors if c.length(bucket) > 0]
            if len(live) == 1:
                for chunk in live[0].copy(bucket):
                    w.write(bucket, chunk, 0)
            elif live:
                for rec in bucket_records(live, bucket, reverse, view=True):
                    w.write(bucket, rec[2], 1)
        return w.close()
