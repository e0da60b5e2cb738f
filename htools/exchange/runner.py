"""One exchange on a connected client (:class:`ExchangeJob`, which :mod:`.job` makes
once the outputs are checked and the cluster is up): stage 1 (with the key pre-pass of
a sort), the dedup pass or decisions, counting groups, the merge levels, the writes,
the job's summary, and the clean-up of its scratch."""

from __future__ import annotations

import os
import random
import tempfile
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from htools import shards, storage
from htools.errors import HtoolsError, hide_credentials
from htools.exchange import plan
from htools.exchange.dedupjob import decide, dedup_mode, dedup_pass
from htools.exchange.dryrun import plan_for
from htools.exchange.groupcount import count_groups
from htools.exchange.keys import pick_splitters
from htools.exchange.listjoin import joins
from htools.exchange.merge import merge_runs
from htools.exchange.partition import partition, sample_keys
from htools.exchange.runfile import Run
from htools.exchange.sizing import (
    check_scratch_space,
    default_scratch,
    outputs_beside,
    resources,
    shard_size,
)
from htools.exchange.specs import (
    InputSpan,
    OutputSpan,
    StageOne,
    StageTwo,
    compact,
    scratch_options,
)
from htools.exchange.stages import Merged, Partitioned, Reports, Stage, add_counts, job_summary
from htools.exchange.write import narrow_write, write_outputs
from htools.options import RunOptions
from htools.runtime import engine
from htools.runtime.engine import Task
from htools.summary import JobSummary

if TYPE_CHECKING:
    from htools.exchange.job import ExchangeSpec

SPLITTER_SHARDS = 32  # the pre-pass reads at most this many (random) input shards
KEYS_PER_BUCKET = 20  # sampled keys per bucket, over all shards read


def stage_one_tasks(inputs: Sequence[str], pieces: int, one: StageOne) -> list[Task]:
    """Stage 1's tasks: ``pieces`` ranges of the inputs, each task's travelling as a
    range (:class:`~.specs.InputSpan`): the arguments of a brace pattern's task do not
    grow with its inputs."""
    tasks = []
    for t, (a, b) in enumerate(plan.split(len(inputs), pieces)):
        urls = compact(inputs, a, b)  # a list of inputs: its slice, shown as the task's too
        shown = inputs[a] if b - a == 1 else urls if isinstance(urls, list) else inputs[a:b]
        tasks.append(Task(partition, {"inputs": InputSpan(urls, a), "task": t, "spec": one},
                          input=shown))
    return tasks


class ExchangeJob:
    """One exchange on a connected client: the stages, their results, the scratch."""

    def __init__(self, spec: ExchangeSpec, inputs: Sequence[str], outset: shards.OutputSet,
                 present: set[str], opts: RunOptions):
        self.spec, self.inputs, self.outset, self.present, self.opts = \
            spec, inputs, outset, present, opts
        self.options = storage.resolve_options(opts.storage_options)
        self.scratch_root = spec.scratch or default_scratch(opts, outset)
        self.scratch = storage.join(self.scratch_root, f"{spec.tool}-{uuid.uuid4().hex[:12]}/")
        # a local --scratch folder that does not exist yet: htools makes it, and removes it
        self.made_root = "://" not in self.scratch_root and not os.path.exists(self.scratch_root)
        self.sized = resources(opts.client, spec.memory)
        self.memory, self.workers = self.sized.memory, self.sized.threads
        self.fan = plan.fan_in(self.memory, spec.fan_in)
        self.stats: dict = {"levels": [], "fan_in": self.fan}  # the summary's extra
        self.outputs: list[str] = []  # known once stage 1 has counted
        self.dedup = dedup_mode(spec.key, spec.script)
        self.join = False  # a large --keep/--drop list joins through the exchange (.run)
        self.drops: list[Run] | None = None  # the decide tasks' drop runs (.semijoin)
        self.deduped: Stage | None = None  # the dedup pass, once it succeeded
        self.on_write: Callable[[int], Callable[[], None] | None] | None = None  # lineage_record

    # ------------------------------------------------------------ the job --
    def run(self) -> JobSummary:
        spec, n_out = self.spec, self.outset.count
        size = shard_size(self.inputs, self.opts)
        beside = outputs_beside(self.scratch_root, self.outset.first())
        shuffle = spec.key.mode == "random"
        self.join = joins(spec, self.memory, self.options)  # a large list: .listjoin
        if spec.select is not None:
            self.stats["list_mode"] = "join" if self.join else "fetch"
        self.plan = plan_for(spec, len(self.inputs), n_out, size, self.sized, beside,
                             self.join, self.options)
        check_scratch_space(self.scratch_root, self.plan, size, spec.tool, beside)
        one = StageOne(scratch=self.scratch, buckets=self.plan.buckets, key=spec.key,
                       script=spec.script, memory=self.memory, max_errors=self.opts.max_errors,
                       options=self.options, mtime=spec.mtime,
                       counts=self.join or not (shuffle and n_out is not None),
                       select=spec.select)
        if not shuffle:
            one = self._with_splitters(one)
        if one.counts and not self._stage_two().passes_through:  # writes fold equal keys
            one = replace(one, group_by="head" if self.dedup == "pass" else "key")
        if self.dedup == "digests":  # htsort --dedup F by another key: digests beside
            one = replace(one, dedup_buckets=plan.DIGEST_BUCKETS)
        if self.join:  # the list's digests beside, joined by the decide tasks
            one = replace(one, dedup_buckets=plan.DIGEST_BUCKETS, select_join=True)
        if self.dedup == "pass":  # htsort --dedup F by another key, a reduce: first by F's content
            first = replace(one, buckets=self.plan.first_pass_buckets, counts=False,
                            key=replace(spec.key, reverse=False), first_pass=True,
                            group_by="")
            s1 = self._stage_one(first)
            if not s1.summary.ok:
                return self._summary(s1, None, "stage 1")
            dd = dedup_pass(self, s1.runs, first.buckets, one)
            if not dd.summary.ok:
                return self._summary(s1, dd, "the dedup pass")
            self.deduped, runs, counts, keys = dd, dd.runs, dd.counts, dd.keys
        else:
            s1 = self._stage_one(one)
            if not s1.summary.ok:
                return self._summary(s1, None, "stage 1")
            runs, counts, keys = s1.runs, s1.counts, s1.keys
        if one.dedup_buckets:  # which samples to drop: the semi-join on digests
            decided = decide(self, s1.digests, counts, spec.select if self.join else None)
            if not decided.summary.ok:
                return self._summary(s1, Stage(decided.summary), "the list join"
                                     if self.join else "the dedup decisions")
            self.deduped, self.drops, counts = decided, decided.runs, decided.counts
        if one.group_by:
            counted = self._count_groups(keys, counts)
            if not counted.summary.ok:
                return self._summary(s1, Stage(counted.summary), "counting groups")
            counts = counted.counts
        groups = self._outputs(counts)
        merged = self.merge_levels([(0, len(groups), runs)], groups, self._stage_two())
        if not merged.ok:
            return self._summary(s1, Stage(merged.summary), "a merge level")
        s2 = self._write(merged.parts, groups, sum(r.size for r in runs))
        if merged.summary is not None:  # merge tasks rerun after a transient fault count too
            s2.summary.add_failures(merged.summary)
        return self._summary(s1, s2)

    def _outputs(self, counts: np.ndarray | None) -> plan.Groups:
        """Each output's buckets (and with exact --maxcount, its records), from stage 1's
        counts per bucket; the output URLs and which of them exist."""
        spec, n_out = self.spec, self.outset.count
        if counts is None:  # a shuffle into @M: one bucket per output
            groups = plan.Groups.of_bounds(np.arange(self.plan.buckets + 1, dtype=np.int64))
        elif spec.maxcount:  # records, or groups of equal keys (StageTwo.by_groups)
            groups = plan.Groups.of_slices(counts, spec.maxcount)
        else:
            groups = plan.Groups.of_bounds(plan.bucket_bounds(counts, n_out, spec.maxcount))
        buckets = self.plan.buckets
        if n_out is None and groups.slices is None and len(groups) > buckets // 4:
            raise HtoolsError(
                f"{int(counts.sum())} samples at --maxcount {spec.maxcount} need {len(groups)} "
                f"outputs, more than an open-ended pattern can balance ({buckets // 4}); "
                f"name them instead, e.g. OUT-@{len(groups)}.tar")
        self.outputs = self.outset.urls(len(groups))
        if n_out is None:
            self.present = engine.plan_outputs(self.outputs, self.opts)
        return groups

    def clean_up(self) -> None:
        try:
            storage.delete_prefix(self.scratch, self.options)
            if self.made_root or (self.spec.scratch is None
                                  and self.scratch_root.startswith(tempfile.gettempdir())):
                os.rmdir(self.scratch_root)  # the folder this job made for itself
        except (HtoolsError, OSError):
            pass  # clean-up is best effort; the job's result stands

    # ------------------------------------------------------------ stage 1 --
    def _stage_one(self, one: StageOne) -> Partitioned:
        tasks = stage_one_tasks(self.inputs, self.plan.stage1_tasks, one)
        s1 = self.partitions("stage1", tasks, one.buckets, one.counts)
        self.stats.update(stage1_tasks=len(tasks), inputs_per_task=self.plan.inputs_per_task,
                          runs=len(s1.runs))
        return s1

    def _with_splitters(self, one: StageOne) -> StageOne:
        inputs = self.inputs
        rng = random.Random(f"splitters:{one.key.seed}")
        chosen = sorted(rng.sample(range(len(inputs)), min(SPLITTER_SHARDS, len(inputs))))
        limit = max(100, -(-KEYS_PER_BUCKET * one.buckets // max(len(chosen), 1)))
        keys: list = []
        tasks = [Task(sample_keys, {"input": inputs[i], "index": i, "spec": one, "limit": limit},
                      input=inputs[i]) for i in chosen]
        pre = engine.run("splitters", tasks, self.opts.with_(dry_run=False, quiet=True),
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
        return replace(one, splitters=splitters)

    def partitions(self, name: str, tasks: list[Task], buckets: int,
                    counted: bool) -> Partitioned:
        """Run tasks that write runs of all ``buckets`` (stage 1, the dedup tasks)."""
        by_task: dict[int, list] = {}
        by_keys: dict[int, list] = {}
        by_digests: dict[int, list] = {}
        counts = np.zeros(buckets, dtype=np.int64) if counted else None
        reports = Reports()

        def on_result(i: int, r: dict) -> None:
            extra = r.pop("extra")
            by_task[i] = extra.get("runs", [])
            by_keys[i] = extra.get("keys", [])
            by_digests[i] = extra.get("digests", [])
            if counts is not None:
                add_counts(counts, extra.get("counts"))
            reports.add(extra)

        s = engine.run(f"{self.spec.tool}-{name}", tasks, self.opts.with_(dry_run=False),
                       on_result=on_result, check_outputs=False)
        runs = [Run(url, size, 0, buckets) for t in sorted(by_task) for url, size in by_task[t]]
        keys = [Run(url, size, 0, buckets) for t in sorted(by_keys) for url, size in by_keys[t]]
        digests = [Run(url, size, 0, plan.DIGEST_BUCKETS) for t in sorted(by_digests)
                   for url, size in by_digests[t]]
        return Partitioned(s, reports, runs, counts, keys, digests)

    def _count_groups(self, keys: list[Run], records: np.ndarray) -> Partitioned:
        """Distinct group keys per bucket (:mod:`.groupcount`): count tasks over ranges
        of buckets, each reading those buckets of every keys file (keys only)."""
        total = int(records.sum())
        pieces = max(2 * self.workers, -(-total * 64 // self.memory))
        ranges = [r for r in plan.group_buckets(records, min(pieces, len(records)), None)
                  if r[1] > r[0]]
        tasks = [Task(count_groups, {"keys": keys, "a": a, "b": b,
                                     "options": scratch_options(self.options)},
                      input=f"{len(keys)} keys files, buckets {a}..{b - 1}")
                 for a, b in ranges]
        counts = np.zeros(len(records), dtype=np.int64)
        s = engine.run(f"{self.spec.tool}-groups", tasks, self.opts.with_(dry_run=False),
                       on_result=lambda _i, r: add_counts(counts, r.pop("extra").get("counts")),
                       check_outputs=False)
        self.stats.update(group_count_tasks=len(tasks), groups=int(counts.sum()),
                          group_count_seconds=s.seconds)
        self.delete(keys)
        return Partitioned(s, counts=counts)

    # ------------------------------------------------------- merge levels --
    def _stage_two(self) -> StageTwo:
        spec = self.spec
        reduce = spec.script if spec.script is not None \
            and spec.script.defines("reduce_samples") else None
        key = spec.key
        two = StageTwo(reverse=key.reverse, reduce=reduce, merge=spec.merge,
                       max_errors=self.opts.max_errors, mtime=spec.mtime, options=self.options,
                       dedup=None if self.dedup else key.dedup,
                       dedup_by_key=key.mode == "field" and key.type == "str"
                       and key.field == key.dedup, index=self.opts.index,
                       positions=bool(self.dedup) or self.join)
        return replace(two, by_groups=bool(spec.maxcount) and not two.passes_through)

    def merge_levels(self, parts: list, groups: plan.Groups, two: StageTwo,
                      name: str = "merge") -> Merged:
        """Merge runs F at a time until no output reads more than F runs (each level as
        :func:`.plan.next_level` plans it from the runs the level before really wrote)."""
        total: JobSummary | None = None
        level = 0
        while (shape := plan.next_level([(a, b, len(runs)) for a, b, runs in parts], self.fan,
                                        2 * self.workers)) is not None:
            level += 1
            tasks, slots, nxt = [], [], []
            for m, (_j0, _j1, runs) in zip(shape.merges, parts):
                if not m.groups:
                    nxt.append((m.j0, m.j1, runs))
                    continue
                for oa, ob in m.parts:
                    a, b = groups[oa][0], groups[ob - 1][1]
                    slot: list = [None] * len(m.groups)
                    nxt.append((oa, ob, slot))
                    for g, (ra, rb) in enumerate(m.groups):
                        url = storage.join(self.scratch, f"level{level}-{oa:07d}-{g:05d}-"
                                                         f"{uuid.uuid4().hex[:8]}.bin")
                        tasks.append(Task(merge_runs, {"runs": runs[ra:rb], "a": a, "b": b,
                                                       "url": url, "spec": two},
                                          input=f"{rb - ra} runs, outputs {oa}..{ob - 1}"))
                        slots.append((slot, g, a, b))

            def on_result(i: int, r: dict, slots=slots) -> None:
                slot, g, a, b = slots[i]
                made = r.pop("extra").get("run")
                if made:
                    slot[g] = Run(made[0], made[1], a, b)

            s = engine.run(f"{self.spec.tool}-{name}{level}", tasks,
                           self.opts.with_(dry_run=False), on_result=on_result,
                           check_outputs=False)
            self.stats["levels"].append({"stage": name, "tasks": len(tasks),
                                         "runs_per_task": shape.runs_per_task,
                                         "requests_per_task": 2 * shape.runs_per_task,
                                         "seconds": s.seconds})
            if total is None:
                total = s
            else:
                total.add_tasks(s)
            if not s.ok:
                return Merged(parts, total)
            self.delete([r for m, (_a, _b, runs) in zip(shape.merges, parts) if m.groups
                          for r in runs])
            parts = [(a, b, [r for r in runs if r is not None]) for a, b, runs in nxt]
        return Merged(parts, total)

    def delete(self, runs: list[Run]) -> None:
        """Runs a level consumed: deleted now, so scratch holds about one copy of the data."""
        options = scratch_options(self.options)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda r: storage.delete(r.url, options), runs))

    # ------------------------------------------------------------- writes --
    def _write(self, parts: list, groups: plan.Groups, total_bytes: int) -> Stage:
        two, outputs = self._stage_two(), self.outputs
        per = plan.outputs_per_task(len(outputs), total_bytes, self.memory, self.workers)
        tasks = []
        for j0, j1, runs in parts:
            todo = (j for j in range(j0, j1) if outputs[j] not in self.present)
            for a, b in plan.write_ranges(todo, per):
                # a range of the outputs, not a tuple an output (see specs.OutputSpan)
                outs = OutputSpan(compact(outputs, a, b), groups.a[a:b], groups.b[a:b],
                                  None if groups.slices is None else groups.slices[a:b])
                kwargs = {"outputs": outs, "runs": runs, "spec": two}
                if self.drops is not None:
                    kwargs["drops"] = self.drops
                tasks.append(Task(write_outputs, kwargs, input=f"{len(runs)} runs",
                                  outputs=outputs[a:b], narrow=narrow_write))
        reports = Reports()
        s2 = engine.run(self.spec.tool, tasks, self.opts.with_(dry_run=False),
                        on_result=lambda _i, r: reports.add(r.pop("extra", {})),
                        check_outputs=False, on_start=self.on_write)
        skipped = len(outputs) - s2.shards_total
        s2.shards_total += skipped
        s2.shards_skipped += skipped
        most = max((len(t.kwargs["runs"]) for t in tasks), default=0)
        self.stats.update(write_tasks=len(tasks), outputs_per_task=per,
                          max_runs_per_write=most, requests_per_write=2 * most)
        if self.spec.key.dedup and not self.dedup:  # dropped as duplicates
            self.stats["duplicates"] = reports.duplicates
        return Stage(s2, reports)

    # ----------------------------------------------------------- summary --
    def _summary(self, s1: Stage, end: Stage | None, failed: str | None = None) -> JobSummary:
        merges = sum(level["tasks"] for level in self.stats["levels"])
        extra = {"input_shards": len(self.inputs), "stage1_tasks_failed": s1.summary.shards_failed,
                 "memory_budget": self.memory, "intermediate_merges": merges, **self.stats}
        return job_summary(self.spec.tool, s1, self.deduped, end, self.outset.count or 1, extra,
                           failed)

