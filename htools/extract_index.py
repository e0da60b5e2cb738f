"""``htextract SHARDS --index OUT.json``: the shard index of any shard set, one task per
shard (:func:`htools.shardindex.index_shard`), written where asked; and ``htextract
--verify STEM.index.json``: a shard set checked against its index, one task per listed
shard (:func:`verify_shard`), after a copy between stores or before a training run."""

from __future__ import annotations

import json

from htools import shards, storage
from htools.errors import HtoolsError, NotFound, ShardError, hide_credentials
from htools.options import RunOptions
from htools.runtime import engine, preflight
from htools.runtime.engine import Task
from htools.runtime.shardio import read_shard
from htools.runtime.task import shard_task
from htools.shardindex import build, entry_url, index_shard, write
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
        summary.extra["index"] = hide_credentials(to)
    return engine.finish(summary, opts)


# ------------------------------------------------------------------ verify --

MAX_LISTED = 10_000  # mismatch lines kept in the summary (the count covers them all)


def verify(index_json: str, **options) -> JobSummary:
    """Check a shard set against its index ``index_json`` (``STEM.index.json``), one task per listed
    shard (:func:`verify_shard`): each shard exists, has the listed size and sha256, and
    still parses to its ``nsamples``.  ``shards_differ`` (and ``extra.mismatched``): how
    many shards differ (the summary is not ``ok`` when any does);
    ``extra.mismatches``: one line each (``URL: missing``, ``URL: short: ...``), in the
    index's order.  A shard that cannot be read for a transient storage fault fails as
    in any job (after its retries)."""
    opts = RunOptions.of(options)
    at = shards.absolute(index_json)
    doc = _read(at, opts.storage_options)
    resolved = storage.resolve_options(opts.storage_options)
    entries = doc["shardlist"]
    urls = [entry_url(at, e["url"]) for e in entries]
    tasks = [Task(verify_shard, {"input": u, "filesize": e.get("filesize"),
                                 "sha256": e.get("sha256"), "nsamples": e.get("nsamples"),
                                 "options": resolved}, input=u)
             for u, e in zip(urls, entries)]
    found: dict[int, str] = {}

    def keep(i: int, r: dict) -> None:
        if r["status"] == "ok" and r["extra"].get("mismatch"):
            found[i] = f"{hide_credentials(urls[i])}: {r['extra']['mismatch']}"

    summary = engine.run("htextract", tasks, opts, on_result=keep, check_outputs=False)
    if not opts.dry_run:
        summary.extra["mismatched"] = summary.shards_differ = len(found)
        summary.extra["mismatches"] = [found[i] for i in sorted(found)][:MAX_LISTED]
        summary.notes.append(f"{len(found)} of {len(urls)} shard(s) differ from "
                             f"{hide_credentials(at)}" if found else
                             f"all {len(urls)} shard(s) match {hide_credentials(at)}")
    return engine.finish(summary, opts)


def _read(at: str, options: dict | None) -> dict:
    """The index at ``at``, or one line saying why it cannot be verified against."""
    with storage.open_read(at, options) as f:  # a StorageError says what went wrong
        data = f.read()
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise HtoolsError(f"{hide_credentials(at)} is not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("shardlist"), list):
        raise HtoolsError(f"{hide_credentials(at)} is not a shard index (no \"shardlist\")")
    return doc


def verify_shard(input: str, *, filesize: int | None, sha256: str | None,
                 nsamples: int | None, options: dict | None = None) -> dict:
    """Task: whether the shard ``input`` is still what its index entry says;
    ``extra.mismatch`` says what differs (None when nothing does)."""
    with shard_task(input) as result:
        result.extra["mismatch"] = _mismatch(input, filesize, sha256, nsamples, options,
                                             result)
    return result.as_dict()


def _mismatch(url: str, filesize, sha256, nsamples, options, result) -> str | None:
    try:
        size = storage.size(url, options)
    except NotFound:
        return "missing"
    said = []
    if filesize is not None and size != filesize:
        said.append(f"{'short' if size < filesize else 'size differs'}: {size} bytes, "
                    f"the index says {filesize}")
    try:
        with read_shard(url, options, result, digest=True) as samples:
            for _sample in samples:
                result.samples_read += 1
    except ShardError as e:
        return "; ".join([*said, f"unreadable: {e}"])
    if sha256 and result.sha256 != sha256:
        said.append(f"changed: sha256 {result.sha256[:12]}.., the index says {sha256[:12]}..")
    if nsamples is not None and result.samples_read != nsamples:
        said.append(f"{result.samples_read} samples, the index says {nsamples}")
    return "; ".join(said) or None
