"""Driving the two-stage exchange: scratch, splitters, stage 1, bucket grouping,
stage 2, clean-up, and one job summary.  htshuffle and htsort are thin plans on it."""

from __future__ import annotations

import os
import random
import tempfile
import time
import uuid
from dataclasses import dataclass

import numpy as np

from . import engine, shards, storage
from .engine import RunOptions, Task
from .errors import HtoolsError, hide_credentials
from .exchange import (BUCKETS_PER_OUTPUT, MAX_BUCKETS, KeySpec, StageOne, StageTwo,
                       group_buckets, merge_partition, partition_shard, pick_splitters,
                       sample_keys)
from .summary import JobSummary

SPLITTER_SHARDS = 32  # the pre-pass reads at most this many (random) input shards
KEYS_PER_BUCKET = 20  # sampled keys per bucket, over all shards read
DEFAULT_BUCKETS = 4096  # when the number of outputs is known only after stage 1


@dataclass(frozen=True)
class ExchangeSpec:
    tool: str
    inputs: tuple[str, ...]
    outputs: str
    key: KeySpec
    script: object | None = None  # process_sample / sort_key / reduce_samples
    merge: bool = False
    maxcount: int | None = None
    memory: int | None = None
    scratch: str | None = None
    mtime: float | None = 0


def run_exchange(spec: ExchangeSpec, opts: RunOptions) -> JobSummary:
    """Run both stages; the summary (written to ``opts.summary`` if set) is returned."""
    return engine.finish(_exchange(spec, opts), opts)


def _exchange(spec: ExchangeSpec, opts: RunOptions) -> JobSummary:
    inputs = shards.expand_all(list(spec.inputs))
    outset = shards.OutputSet.parse(spec.outputs)
    n_out = outset.count
    if n_out is None and not spec.maxcount:
        raise HtoolsError(f"{spec.outputs!r} is open-ended: give --maxcount, or name the "
                          "outputs with @M")
    if n_out is not None and spec.maxcount:
        raise HtoolsError(f"{spec.outputs!r} names exactly {n_out} outputs; --maxcount needs "
                          "a numbered pattern such as out-%06d.tar")
    known = outset.urls(n_out) if n_out else []
    present = engine.plan_outputs(known, opts)
    if opts.dry_run:
        return _dry_run(spec, outset, inputs, known, present)
    if known and len(present) == len(known):
        summary = JobSummary(spec.tool, shards_total=len(known), shards_skipped=len(known))
        return summary.finish()
    started = time.time()
    with engine.connect(opts) as client:
        summary = _run(spec, inputs, outset, opts.with_(client=client))
    summary.started = started
    return summary.finish()


def _dry_run(spec, outset, inputs, known, present) -> JobSummary:
    summary = JobSummary(spec.tool, shards_total=len(known))
    summary.plan.append(f"stage 1: {len(inputs)} input shards -> sorted runs in scratch")
    for u in known or [outset.first() + " ..."]:
        mark = "  (exists, skipped)" if u in present else ""
        summary.plan.append(f"stage 2: -> {hide_credentials(u)}{mark}")
    return summary.finish()


def _run(spec: ExchangeSpec, inputs: list[str], outset: shards.OutputSet,
         opts: RunOptions) -> JobSummary:
    client = opts.client
    n_out = outset.count
    scratch_root = spec.scratch or default_scratch(opts, outset)
    scratch = storage.join(scratch_root, f"{spec.tool}-{uuid.uuid4().hex[:12]}/")
    buckets = min(MAX_BUCKETS, BUCKETS_PER_OUTPUT * n_out) if n_out else DEFAULT_BUCKETS
    options = storage.resolve_options(opts.storage_options)
    one = StageOne(scratch=scratch, buckets=buckets, key=spec.key, script=spec.script,
                   memory=spec.memory or default_memory(client), max_errors=opts.max_errors,
                   options=options)
    try:
        if spec.key.mode != "random":
            one = _with_splitters(one, inputs, opts)
        runs, counts, s1 = _stage_one(spec.tool, one, inputs, opts)
        if not s1.ok:
            return _combine(spec.tool, s1, None, one)
        groups = group_buckets(counts, n_out, spec.maxcount)
        if n_out is None and len(groups) > buckets // 4:
            raise HtoolsError(
                f"{int(counts.sum())} samples at --maxcount {spec.maxcount} need {len(groups)} "
                f"outputs, more than an open-ended pattern can balance ({buckets // 4}); "
                f"name them instead, e.g. OUT-@{len(groups)}.tar")
        outputs = outset.urls(len(groups))
        two = StageTwo(reverse=spec.key.reverse, merge=spec.merge, max_errors=opts.max_errors,
                       reduce=spec.script if spec.script is not None
                       and spec.script.defines("reduce_samples") else None,
                       mtime=spec.mtime, options=options, memory=one.memory, scratch=scratch)
        tasks = [Task(merge_partition, {"output": o, "slices": slices_of(runs, a, b),
                                        "count": int(counts[a:b].sum()), "spec": two},
                      input=f"stage-1 runs, buckets {a}..{b - 1}", output=o)
                 for o, (a, b) in zip(outputs, groups)]
        del runs  # the offsets of every run: the largest thing the client holds
        # Known outputs were checked before stage 1; numbered ones are checked now.
        checked = n_out is not None and not opts.resume
        mem: list[dict] = []
        s2 = engine.run(spec.tool, tasks, opts.with_(overwrite=True) if checked else opts,
                        on_result=lambda _i, r: mem.append(r.get("extra", {})))
        s2.extra["memory"] = mem
        return _combine(spec.tool, s1, s2, one)
    finally:
        try:
            storage.delete_prefix(scratch, options)
            if spec.scratch is None and scratch_root.startswith(tempfile.gettempdir()):
                os.rmdir(scratch_root)  # the temp dir this job made for itself
        except (HtoolsError, OSError):
            pass  # clean-up is best effort; the job's result stands


def slices_of(runs: list[dict], first: int, last: int) -> list[tuple[str, int, int]]:
    """The byte range of buckets [first, last) in every run that has any, in run order."""
    out = []
    for run in runs:
        a, b = int(run["offsets"][first]), int(run["offsets"][last])
        if b > a:
            out.append((run["url"], a, b))
    return out


def _stage_one(tool: str, one: StageOne, inputs: list[str], opts: RunOptions):
    by_input: dict[int, list[dict]] = {}
    counts = np.zeros(one.buckets, dtype=np.int64)
    peaks: list[dict] = []

    def on_result(i: int, r: dict) -> None:
        runs = r["extra"].pop("runs", [])
        for run in runs:
            counts[:] += np.frombuffer(run.pop("counts"), dtype=np.uint64).astype(np.int64)
            run["offsets"] = np.frombuffer(run["offsets"], dtype=np.uint64)
        by_input[i] = runs
        peaks.append(r["extra"])

    tasks = [Task(partition_shard, {"input": u, "index": i, "spec": one}, input=u)
             for i, u in enumerate(inputs)]
    s1 = engine.run(f"{tool}-stage1", tasks, opts.with_(dry_run=False), on_result=on_result,
                    check_outputs=False)
    s1.extra["memory"] = peaks
    runs = [run for i in sorted(by_input) for run in by_input[i]]  # (input, spill) order
    return runs, counts, s1


def _with_splitters(one: StageOne, inputs: list[str], opts: RunOptions) -> StageOne:
    rng = random.Random(f"splitters:{one.key.seed}")
    chosen = sorted(rng.sample(range(len(inputs)), min(SPLITTER_SHARDS, len(inputs))))
    limit = max(100, -(-KEYS_PER_BUCKET * one.buckets // max(len(chosen), 1)))
    keys: list = []
    tasks = [Task(sample_keys, {"input": inputs[i], "index": i, "spec": one, "limit": limit},
                  input=inputs[i]) for i in chosen]
    pre = engine.run("splitters", tasks, opts.with_(dry_run=False, quiet=True),
                     on_result=lambda _i, r: keys.extend(r["extra"].pop("keys")),
                     check_outputs=False)
    if not pre.ok:
        f = pre.failures[0]
        raise HtoolsError(f"cannot sample keys of {hide_credentials(str(f['input']))}: "
                          f"{f['error']}")
    try:
        splitters = pick_splitters(keys, one.buckets)
    except TypeError as e:
        raise HtoolsError(f"sort keys of different types cannot be compared: {e}") from None
    return StageOne(**{**one.__dict__, "splitters": splitters})


def _combine(tool: str, s1: JobSummary, s2: JobSummary | None, one: StageOne) -> JobSummary:
    """One summary: samples read in stage 1, written in stage 2; failures of both."""
    out = JobSummary(tool, shards_total=s2.shards_total if s2 else 0, max_errors=s1.max_errors)
    out.samples_read = s1.samples_read
    out.samples_mapped = s1.samples_mapped
    out.samples_dropped = s1.samples_dropped
    out.samples_failed = s1.samples_failed
    out.sample_errors = s1.sample_errors
    out.bytes_in = s1.bytes_in
    out.failures = list(s1.failures)
    out.errors = list(s1.errors)
    out.shards_failed = s1.shards_failed
    mem = s1.extra.get("memory", [])
    if s2 is not None:
        out.shards_done, out.shards_skipped = s2.shards_done, s2.shards_skipped
        out.shards_failed += s2.shards_failed
        out.samples_written = s2.samples_written
        # stage-1 records that stage 2 dropped (reduce -> None) or lost (reduce raised, or
        # the output failed) move out of "mapped"; read = mapped + dropped + failed holds
        out.samples_mapped -= s2.samples_dropped + s2.samples_failed
        out.samples_dropped += s2.samples_dropped
        out.samples_failed += s2.samples_failed
        out.sample_errors += s2.sample_errors
        out.bytes_out = s2.bytes_out
        out.failures += s2.failures
        out.errors += s2.errors
        mem = mem + s2.extra.get("memory", [])
    else:
        out.shards_total = max(out.shards_failed, 1)
    out.extra = {"input_shards": s1.shards_total, "memory_budget": one.memory,
                 "buckets": one.buckets}
    if mem:
        out.extra["peak_rss"] = max(m.get("peak_rss", 0) for m in mem)
        out.extra["rss_start_min"] = min(m.get("rss_start", 0) for m in mem)
        out.extra["intermediate_merges"] = sum(m.get("merge_passes", 0) for m in mem)
    return out


def default_scratch(opts: RunOptions, outset: shards.OutputSet) -> str:
    """A local temp dir for the embedded cluster; else ``_htools_tmp/`` beside the outputs."""
    if opts.client is not None and engine.cluster_address(opts.cluster) is None \
            and _is_local_cluster(opts.client):
        return tempfile.mkdtemp(prefix="htools-scratch-") + "/"
    return outset.folder() + "_htools_tmp/"


def _is_local_cluster(client) -> bool:
    cluster = getattr(client, "cluster", None)
    return cluster is not None and type(cluster).__name__ == "LocalCluster"


def default_memory(client) -> int:
    """A quarter of the smallest worker memory limit (512 MiB when workers have none)."""
    try:
        limits = [w.get("memory_limit") or 0
                  for w in client.scheduler_info().get("workers", {}).values()]
    except Exception:
        limits = []
    limits = [m for m in limits if m]
    if not limits:
        return 512 << 20
    return max(16 << 20, min(limits) // 4)
