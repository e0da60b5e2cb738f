"""The client's side of htsort --dedup F by another key: which way it runs
(:func:`dedup_mode`), the decide stage of the semi-join (:func:`decide`, see
:mod:`.semijoin`) between stage 1 and the merge levels, or with a reduce the dedup pass
(:func:`dedup_pass`, see :mod:`.dedup`) between the two passes."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import numpy as np

from htools import storage
from htools.exchange import plan
from htools.exchange.dedup import dedup_and_partition, two_passes
from htools.exchange.listjoin import ROW, join_slice
from htools.exchange.runfile import Run
from htools.exchange.semijoin import keep_firsts
from htools.exchange.specs import StageOne, StageTwo, scratch_options
from htools.exchange.stages import Partitioned, Reports, add_counts
from htools.runtime import engine
from htools.runtime.engine import Task

if TYPE_CHECKING:
    from htools.exchange.keys import KeySpec
    from htools.selection import Selection
    from htools.usercode.script import Script

def dedup_mode(key: KeySpec, script: Script | None) -> str:
    """How a job drops its --dedup duplicates: ``""`` in its writes or not at all (a
    shuffle, a sort by F itself), ``"digests"`` by the semi-join on digests (a sort by
    another key), ``"pass"`` by the dedup pass (:mod:`.dedup`) when a
    ``reduce_samples()`` groups by the sort key: its groups are counted before the
    writes (:mod:`.groupcount`), which the semi-join would count with the duplicates."""
    if not two_passes(key):
        return ""
    if script is not None and script.defines("reduce_samples"):
        return "pass"
    return "digests"


def decide(job, digests: list[Run], counts: np.ndarray, join: Selection | None = None
           ) -> Partitioned:
    """Stage 1's digest runs -> (merge levels when they are more than the fan-in) ->
    decide tasks, each writing a drop run.  Returns the drop runs and the samples kept
    per sort bucket (stage 1's ``counts`` less the drops), with the stage's summary.
    ``join``: the decide tasks join a large --keep/--drop list (:mod:`.listjoin`)
    instead of keeping the first of each --dedup value."""
    table = ROW * join.listed if join is not None else 0
    n = plan.decide_tasks(sum(r.size for r in digests) + table, job.memory, job.workers)
    groups = plan.split(plan.DIGEST_BUCKETS, n)
    merged = job.merge_levels([(0, len(groups), digests)], groups,
                               StageTwo(options=job.options), "dedup-merge")
    if not merged.ok:
        return Partitioned(merged.summary)
    options = scratch_options(job.options)
    fn, more = (keep_firsts, {}) if join is None else (join_slice, {"sel": join})
    tasks = [Task(fn, {"runs": part, "a": groups[j][0], "b": groups[j][1],
                       "url": storage.join(job.scratch, f"drops-{j:05d}-"
                                                        f"{uuid.uuid4().hex[:8]}.bin"),
                       "buckets": len(counts), "options": options, **more},
                  input=f"{len(part)} digest runs, buckets {groups[j][0]}..{groups[j][1] - 1}")
             for j0, j1, part in merged.parts for j in range(j0, j1) if part]
    dropped = np.zeros(len(counts), dtype=np.int64)
    made: dict[int, Run] = {}
    reports = Reports()

    def on_result(i: int, r: dict) -> None:
        extra = r.pop("extra")
        add_counts(dropped, extra.get("counts"))
        if extra.get("run"):
            url, size = extra["run"]
            made[i] = Run(url, size, 0, len(counts))
        reports.add(extra)

    name = "dedup" if join is None else "join"
    s = engine.run(f"{job.spec.tool}-{name}", tasks, job.opts.with_(dry_run=False),
                   on_result=on_result, check_outputs=False)
    if join is None:
        job.stats.update(dedup_tasks=len(tasks), duplicates=reports.duplicates,
                         dedup_seconds=s.seconds)
    else:
        job.stats.update(decide_tasks=len(tasks), decide_seconds=s.seconds)
    if merged.summary is not None:
        s.add_tasks(merged.summary)
    if s.ok:
        job.delete([r for _a, _b, part in merged.parts for r in part])
    return Partitioned(s, reports, [made[i] for i in sorted(made)], counts - dropped)


def dedup_pass(job, runs: list[Run], buckets: int, one: StageOne) -> Partitioned:
    """htsort --dedup by another key with a reduce: first-pass runs (by F's content) ->
    merge levels -> dedup tasks, which write the second pass's sorted runs (with their
    counts per bucket, and the pass's summary: its tasks, failures, and the duplicates
    dropped)."""
    two = StageTwo(max_errors=job.opts.max_errors, mtime=job.spec.mtime,
                   options=job.options, dedup=job.spec.key.dedup)
    groups = [(j, j + 1) for j in range(buckets)]
    merged = job.merge_levels([(0, buckets, runs)], groups, two, "dedup-merge")
    if not merged.ok:
        return Partitioned(merged.summary)
    tasks = [Task(dedup_and_partition, {"runs": part, "a": j, "b": j + 1, "task": j,
                                        "one": one, "two": two},
                  input=f"{len(part)} runs, bucket {j}")
             for j0, j1, part in merged.parts for j in range(j0, j1) if part]
    dd = job.partitions("dedup", tasks, one.buckets, True)
    job.stats.update(dedup_tasks=len(tasks), duplicates=dd.reports.duplicates)
    if merged.summary is not None:
        dd.summary.add_tasks(merged.summary)
    if dd.summary.ok:
        job.delete([r for _a, _b, part in merged.parts for r in part])
    return dd
