"""``htextract SHARDS --index OUT.json``: the shard index of any shard set, one task per
shard (:func:`htools.shardindex.index_shard`), written where asked."""

from __future__ import annotations

from htools import shards, storage
from htools.errors import hide_credentials
from htools.options import RunOptions
from htools.runtime import engine, preflight
from htools.runtime.engine import Task
from htools.shardindex import build, index_shard, write
from htools.summary import JobSummary


def index_shards(inputs, to: str, **options) -> JobSummary:
    """Index any shard set, one task per shard, written to ``to`` (URLs relative to its
    folder when beside it); returns the job summary (``extra.index``: where it went)."""
    opts = RunOptions.of(options)
    urls = shards.expand_all(inputs)
    to = shards.absolute(to)
    preflight.check(urls, [to], opts.storage_options, write=not opts.dry_run)
    if engine.plan_outputs([to], opts) and not opts.dry_run:  # refused unless --resume
        summary = JobSummary("htextract", shards_total=len(urls), shards_skipped=len(urls))
        summary.notes.append(f"{hide_credentials(to)} exists (--resume): skipped")
        return engine.finish(summary.finish(), opts)
    resolved = storage.resolve_options(opts.storage_options)
    tasks = [Task(index_shard, {"input": u, "options": resolved}, input=u) for u in urls]
    entries: dict[int, dict] = {}

    def keep(i: int, r: dict) -> None:
        if r["status"] == "ok":
            entries[i] = {"output": urls[i], "nsamples": r["samples_written"],
                          "filesize": r["bytes_out"], "sha256": r["sha256"],
                          "fields": r["fields"]}

    summary = engine.run("htextract", tasks, opts, on_result=keep, check_outputs=False)
    if summary.ok and not opts.dry_run:
        name = to.rsplit("/", 1)[-1].removesuffix(".json").removesuffix(".index")
        # bytes out: the index written, not the shards indexed
        summary.bytes_out = write(build((entries[i] for i in range(len(urls))), to, name), to,
                                  opts.storage_options)
        summary.extra["index"] = to
    return engine.finish(summary, opts)
