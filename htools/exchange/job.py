"""Driving the exchange: stage 1, as many merge levels as the fan-in needs, the writes.

The client plans from aggregated numbers only: each stage-1 task returns its runs'
URLs and sizes and its sparse counts per bucket; merge and write tasks find their
byte ranges in the runs' own offset tables.  Client memory is O(N + M + buckets).
Scratch (``--scratch``, default a temp dir for the embedded cluster, else
``_htools_tmp/`` beside the outputs) is deleted at the end, after failures and
Ctrl-C too; each merge level deletes the runs it consumed.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from htools import lineage, shardindex, shards, storage
from htools.clusters import connection as clusters
from htools.errors import HtoolsError, hide_credentials
from htools.exchange import plan
from htools.exchange.dedup import dedup_and_partition, two_passes
from htools.exchange.keys import KeySpec, pick_splitters
from htools.exchange.runfile import Run
from htools.exchange.sizing import (
    default_memory,
    default_scratch,
    human_size,
    same_file_system,
    shard_size,
    worker_threads,
)
from htools.exchange.tasks import (
    StageOne,
    StageTwo,
    merge_runs,
    partition,
    sample_keys,
    scratch_options,
)
from htools.exchange.write import write_outputs
from htools.options import RunOptions
from htools.runtime import engine, preflight
from htools.runtime.engine import Task
from htools.storage.local import local_path, nearest_existing
from htools.summary import JobSummary
from htools.usercode.script import Script

SPLITTER_SHARDS = 32  # the pre-pass reads at most this many (random) input shards
KEYS_PER_BUCKET = 20  # sampled keys per bucket, over all shards read


@dataclass(frozen=True)
class ExchangeSpec:
    tool: str
    inputs: tuple[str, ...]
    outputs: str
    key: KeySpec
    script: Script | None = None  # process_sample / sort_key / reduce_samples
    merge: bool = False
    maxcount: int | None = None
    memory: int | None = None
    scratch: str | None = None
    mtime: float | None = 0
    fan_in: int | None = None  # runs one task reads at most (default: from --memory)


def run_exchange(spec: ExchangeSpec, opts: RunOptions) -> JobSummary:
    """Run the exchange; the summary (written to ``opts.summary`` if set) is returned."""
    inputs = shards.expand_all(list(spec.inputs))
    made = exchange_lineage(spec, inputs)
    summary, outputs = _exchange(spec, inputs, opts, made)
    return shardindex.finish(summary, opts, shards.OutputSet.parse(spec.outputs), outputs, made)


def exchange_lineage(spec: ExchangeSpec, inputs: list[str]) -> dict:
    """The lineage of an htshuffle or htsort (:mod:`htools.lineage`): the options that
    change the outputs' bytes (not --memory, --fan-in or --scratch, which do not)."""
    k = spec.key
    keyed = {"seed": k.seed} if k.mode == "random" else \
        {"key": k.field if k.mode == "field" else None, "key_type": k.type,
         "reverse": k.reverse, "merge": spec.merge}
    return lineage.make(spec.tool, inputs=inputs, outputs=spec.outputs, script=spec.script,
                        options={**keyed, "dedup": k.dedup, "maxcount": spec.maxcount,
                                 "mtime": spec.mtime})


def _exchange(spec: ExchangeSpec, inputs: list[str], opts: RunOptions, made: dict
              ) -> tuple[JobSummary, list[str]]:
    outset = shards.OutputSet.parse(spec.outputs)
    n_out = outset.count
    if n_out is None and not spec.maxcount:
        raise HtoolsError(f"{spec.outputs!r} is open-ended: give --maxcount, or name the "
                          "outputs with @M")
    if n_out is not None and spec.maxcount:
        raise HtoolsError(f"{spec.outputs!r} names exactly {n_out} outputs; --maxcount needs "
                          "a numbered pattern such as out-%06d.tar")
    if spec.mtime is None:  # "now", taken once: stage 1 encodes every sample's headers
        spec = replace(spec, mtime=time.time())
    known = outset.urls(n_out) if n_out else []
    preflight.check(inputs, (known or [outset.first()]) + ([spec.scratch] if spec.scratch else []),
                    opts.storage_options, write=not opts.dry_run)
    shardindex.check_lineage(outset, made, opts)
    present = engine.plan_outputs(known, opts)
    if opts.dry_run:
        return _dry_run(spec, outset, inputs, known, present, opts), []
    if known and len(present) == len(known):
        summary = JobSummary(spec.tool, shards_total=len(known), shards_skipped=len(known))
        return summary.finish(), known
    started = time.time()
    job = None
    try:
        with clusters.connect(opts) as client:
            job = _Job(spec, inputs, outset, present, opts.with_(client=client))
            preflight.check_workers(client, inputs, [outset.first(), job.scratch_root])
            summary = job.run()
    finally:  # once an embedded cluster is gone: its workers write no more runs
        if job is not None:
            job.clean_up()
    summary.started = started
    return summary.finish(), job.outputs


def _dry_run(spec, outset, inputs, known, present, opts) -> JobSummary:
    summary = JobSummary(spec.tool, shards_total=len(known))
    memory = spec.memory or 512 << 20
    workers = opts.workers or os.cpu_count() or 1
    group = plan.inputs_per_task(len(inputs), shard_size(inputs, opts), memory, workers)
    tasks = -(-len(inputs) // group)
    fan = plan.fan_in(memory, spec.fan_in)
    merges = plan.levels(tasks, len(known) or 1, fan, 2 * workers)
    summary.plan.append(f"stage 1: {len(inputs)} input shards in {tasks} tasks -> sorted "
                        "runs in scratch")
    if two_passes(spec.key):
        summary.plan.append(f"dedup pass: stage 1 buckets samples by the sha256 of "
                            f"{spec.key.dedup}; dedup tasks drop all but the first of each "
                            "value and write runs by the sort key (one more pass over "
                            "scratch)")
    summary.plan.append(f"merge levels: {len(merges)} (fan-in {fan}: a task reads at most "
                        f"{fan} runs, 2 range requests each; at least one run per stage-1 "
                        f"task; merge tasks per level: {merges or '-'})")
    for u in known or [outset.first() + " ..."]:
        mark = "  (exists, skipped)" if u in present else ""
        summary.plan.append(f"stage 2: -> {hide_credentials(u)}{mark}")
    return summary.finish()


class _Job:
    """One exchange on a connected client: the levels, their summaries, the scratch."""

    def __init__(self, spec: ExchangeSpec, inputs: list[str], outset: shards.OutputSet,
                 present: set[str], opts: RunOptions):
        self.spec, self.inputs, self.outset, self.present, self.opts = \
            spec, inputs, outset, present, opts
        self.options = storage.resolve_options(opts.storage_options)
        self.scratch_root = spec.scratch or default_scratch(opts, outset)
        self.scratch = storage.join(self.scratch_root, f"{spec.tool}-{uuid.uuid4().hex[:12]}/")
        self.memory = spec.memory or default_memory(opts.client)
        self.workers = worker_threads(opts.client)
        self.fan = plan.fan_in(self.memory, spec.fan_in)
        self.stats: dict = {"levels": [], "fan_in": self.fan}
        self.outputs: list[str] = []  # known once stage 1 has counted
        self.two_passes = two_passes(spec.key)
        self.deduped: JobSummary | None = None  # the dedup pass, once it succeeded

    # ------------------------------------------------------------ the job --
    def run(self) -> JobSummary:
        spec, n_out = self.spec, self.outset.count
        self.shard_size = shard_size(self.inputs, self.opts)
        self._check_scratch_space()
        shuffle = spec.key.mode == "random"
        buckets = plan.bucket_count(n_out, shuffle)
        one = StageOne(scratch=self.scratch, buckets=buckets, key=spec.key, script=spec.script,
                       memory=self.memory, max_errors=self.opts.max_errors,
                       options=self.options, mtime=spec.mtime,
                       counts=not (shuffle and n_out is not None))
        if not shuffle:
            one = self._with_splitters(one)
        if self.two_passes:  # htsort --dedup F by another key: first by F's content
            first = replace(one, buckets=self._first_pass_buckets(), counts=False,
                            key=replace(spec.key, reverse=False), first_pass=True)
            runs, _counts, s1 = self._stage_one(first)
            if not s1.ok:
                return self._combine(s1, None)
            runs, counts, dd = self._dedup_pass(runs, first.buckets, one)
            if not dd.ok:
                return self._combine(s1, dd, failed="the dedup pass")
            self.deduped = dd
        else:
            runs, counts, s1 = self._stage_one(one)
            if not s1.ok:
                return self._combine(s1, None)
        slices = None  # --maxcount N exactly: outputs cut by record count
        if counts is None:  # a shuffle into @M: one bucket per output
            groups = [(j, j + 1) for j in range(buckets)]
        elif spec.maxcount and self._passes_through():
            slices = plan.count_slices(counts, spec.maxcount)
            starts = plan.bucket_starts(counts)
            groups = [(a, b) for a, b, _begin, _n in slices]
            slices = [(begin, n, int(starts[a])) for a, _b, begin, n in slices]
        else:
            groups = plan.group_buckets(counts, n_out, spec.maxcount)
        if n_out is None and slices is None and len(groups) > buckets // 4:
            raise HtoolsError(
                f"{int(counts.sum())} samples at --maxcount {spec.maxcount} need {len(groups)} "
                f"outputs, more than an open-ended pattern can balance ({buckets // 4}); "
                f"name them instead, e.g. OUT-@{len(groups)}.tar")
        outputs = self.outputs = self.outset.urls(len(groups))
        if n_out is None:
            self.present = engine.plan_outputs(outputs, self.opts)
        parts, merges = self._merge_levels([(0, len(groups), runs)], groups)
        if merges is not None and not merges.ok:
            return self._combine(s1, merges)
        total = sum(r.size for r in runs)
        s2 = self._write(parts, groups, outputs, total, slices)
        if merges is not None:  # merge tasks rerun after a transient fault count too
            s2.shards_retried += merges.shards_retried
            s2.retries += merges.retries
        return self._combine(s1, s2)

    def clean_up(self) -> None:
        try:
            storage.delete_prefix(self.scratch, self.options)
            if self.spec.scratch is None and self.scratch_root.startswith(tempfile.gettempdir()):
                os.rmdir(self.scratch_root)  # the temp dir this job made for itself
        except (HtoolsError, OSError):
            pass  # clean-up is best effort; the job's result stands

    # ------------------------------------------------------------ stage 1 --
    def _check_scratch_space(self) -> None:
        """Refuse, before stage 1, a local scratch with less free space than the job needs.

        Runs hold every sample as the tar bytes it will be written as: about the input's
        bytes (more for compressed inputs).  Scratch holds one copy of the data at a
        time, plus a merge level's output while that level runs (a level deletes the
        runs it merged only once it is done), and outputs on the same file system grow
        while the last runs are still there: two copies in those cases."""
        if storage.protocol(self.scratch_root) != "file" or not self.shard_size:
            return
        folder = nearest_existing(local_path(self.scratch_root))
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return
        n = len(self.inputs)
        data = int(self.shard_size * n)
        group = plan.inputs_per_task(n, self.shard_size, self.memory, self.workers)
        tasks = -(-n // group)
        runs = tasks * max(1, -(-int(self.shard_size * group) // self.memory))
        levels = plan.levels(runs, self.outset.count or 1, self.fan, 2 * self.workers)
        beside = same_file_system(folder, self.outset.first())
        copies = 2 if levels or beside or self.two_passes else 1
        if free >= copies * data:
            return
        if self.two_passes:
            why = ("the dedup pass writes the sorted runs while the runs by content are "
                   "still there: 2 copies")
        elif levels:
            why = (f"with {len(levels)} merge level(s) (about {runs} runs, fan-in {self.fan}) "
                   "it holds one copy of the data plus a level's output: 2 copies")
        elif beside:
            why = ("the outputs are on the same file system and grow while the runs are "
                   "still there: 2 copies")
        else:
            why = "it holds every sample once as sorted runs: 1 copy"
        raise HtoolsError(
            f"scratch {hide_credentials(self.scratch_root)} has {human_size(free)} free; this "
            f"{self.spec.tool} needs about {human_size(copies * data)} there ({n} input "
            f"shards of about {human_size(self.shard_size)} each, {human_size(data)} in all, more if "
            f"they are compressed; {why}): free space or give --scratch on a larger disk")

    def _stage_one(self, one: StageOne):
        size = self.shard_size
        group = plan.inputs_per_task(len(self.inputs), size, self.memory, self.workers)
        numbered = list(enumerate(self.inputs))
        chunks = [numbered[a:b]
                  for a, b in plan.split(len(self.inputs), -(-len(self.inputs) // group))]
        tasks = [Task(partition, {"inputs": chunk, "task": t, "spec": one},
                      input=chunk[0][1] if len(chunk) == 1 else [u for _i, u in chunk])
                 for t, chunk in enumerate(chunks)]
        runs, counts, s1 = self._partitions("stage1", tasks, one.buckets, one.counts)
        self.stats.update(stage1_tasks=len(tasks), inputs_per_task=group, runs=len(runs))
        return runs, counts, s1

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

    # ------------------------------------------------------- merge levels --
    def _stage_two(self) -> StageTwo:
        spec = self.spec
        reduce = spec.script if spec.script is not None \
            and spec.script.defines("reduce_samples") else None
        key = spec.key
        return StageTwo(reverse=key.reverse, reduce=reduce, merge=spec.merge,
                        max_errors=self.opts.max_errors, mtime=spec.mtime, options=self.options,
                        dedup=None if self.two_passes else key.dedup,
                        dedup_by_key=key.mode == "field" and key.type == "str"
                        and key.field == key.dedup, index=self.opts.index,
                        positions=self.two_passes)

    # ---------------------------------------------------------- dedup pass --
    def _first_pass_buckets(self) -> int:
        """Buckets of the first pass (one dedup task each): about one memory budget of
        samples a task, and at least as many as stage-1 tasks."""
        n = len(self.inputs)
        group = plan.inputs_per_task(n, self.shard_size, self.memory, self.workers)
        data = int((self.shard_size or 0) * n)
        return max(1, min(plan.MAX_BUCKETS, max(-(-n // group), -(-data // self.memory))))

    def _dedup_pass(self, runs: list[Run], buckets: int, one: StageOne):
        """First-pass runs (by F's content) -> merge levels -> dedup tasks, which write
        the second pass's sorted runs.  Returns them, their counts per bucket and the
        pass's summary (its tasks, failures, and the duplicates dropped)."""
        two = StageTwo(max_errors=self.opts.max_errors, mtime=self.spec.mtime,
                       options=self.options, dedup=self.spec.key.dedup)
        groups = [(j, j + 1) for j in range(buckets)]
        parts, merges = self._merge_levels([(0, buckets, runs)], groups, two, "dedup-merge")
        if merges is not None and not merges.ok:
            return [], None, merges
        tasks = [Task(dedup_and_partition, {"runs": part, "a": j, "b": j + 1, "task": j,
                                            "one": one, "two": two},
                      input=f"{len(part)} runs, bucket {j}")
                 for j0, j1, part in parts for j in range(j0, j1) if part]
        made, counts, dd = self._partitions("dedup", tasks, one.buckets, True)
        self.stats.update(dedup_tasks=len(tasks), duplicates=sum(
            p.get("duplicates", 0) for p in dd.extra["memory"]))
        if merges is not None:
            dd = _add(dd, merges)
        if dd.ok:
            self._delete([r for _a, _b, part in parts for r in part])
        return made, counts, dd

    def _partitions(self, name: str, tasks: list[Task], buckets: int, counted: bool):
        """Run tasks that write runs of all ``buckets`` (stage 1, the dedup tasks).
        Returns their runs in task order (then spill order: equal keys keep input
        order), their counts per bucket summed (if ``counted``) and their summary."""
        by_task: dict[int, list] = {}
        counts = np.zeros(buckets, dtype=np.int64) if counted else None
        peaks: list[dict] = []

        def on_result(i: int, r: dict) -> None:
            extra = r.pop("extra")
            by_task[i] = extra.pop("runs", [])
            if counts is not None:
                _add_counts(counts, extra.pop("counts", None))
            peaks.append(extra)

        s = engine.run(f"{self.spec.tool}-{name}", tasks, self.opts.with_(dry_run=False),
                       on_result=on_result, check_outputs=False)
        s.extra["memory"] = peaks
        runs = [Run(url, size, 0, buckets) for t in sorted(by_task) for url, size in by_task[t]]
        return runs, counts, s

    def _merge_levels(self, parts: list, groups: list[tuple[int, int]],
                      two: StageTwo | None = None, name: str = "merge"):
        """Merge runs F at a time until no output reads more than F runs.  Returns the
        final parts ``(first output, end output, runs)`` and the levels' summary."""
        two = two or self._stage_two()
        total: JobSummary | None = None
        level = 0
        while any(len(runs) > self.fan for _a, _b, runs in parts):
            level += 1
            tasks, slots, nxt, consumed = [], [], [], []
            for j0, j1, runs in parts:
                shape = plan.merge_shape(len(runs), j1 - j0, self.fan, 2 * self.workers)
                if shape is None:
                    nxt.append((j0, j1, runs))
                    continue
                consumed += runs
                run_groups = [runs[a:b] for a, b in plan.split(len(runs), shape.groups)]
                for pa, pb in plan.split(j1 - j0, shape.parts):
                    oa, ob = j0 + pa, j0 + pb
                    a, b = groups[oa][0], groups[ob - 1][1]
                    slot: list = [None] * len(run_groups)
                    nxt.append((oa, ob, slot))
                    for g, grp in enumerate(run_groups):
                        url = storage.join(self.scratch, f"level{level}-{oa:07d}-{g:05d}-"
                                                         f"{uuid.uuid4().hex[:8]}.bin")
                        tasks.append(Task(merge_runs, {"runs": grp, "a": a, "b": b, "url": url,
                                                       "spec": two},
                                          input=f"{len(grp)} runs, outputs {oa}..{ob - 1}"))
                        slots.append((slot, g, a, b))

            def on_result(i: int, r: dict, slots=slots) -> None:
                slot, g, a, b = slots[i]
                made = r.pop("extra").get("run")
                if made:
                    slot[g] = Run(made[0], made[1], a, b)

            s = engine.run(f"{self.spec.tool}-{name}{level}", tasks,
                           self.opts.with_(dry_run=False), on_result=on_result,
                           check_outputs=False)
            most = max(len(t.kwargs["runs"]) for t in tasks)
            self.stats["levels"].append({"stage": name, "tasks": len(tasks), "runs_per_task": most,
                                         "requests_per_task": 2 * most, "seconds": s.seconds})
            total = s if total is None else _add(total, s)
            if not s.ok:
                return parts, total
            self._delete(consumed)
            parts = [(a, b, [r for r in runs if r is not None]) for a, b, runs in nxt]
        return parts, total

    def _delete(self, runs: list[Run]) -> None:
        """Runs a level consumed: deleted now, so scratch holds about one copy of the data."""
        options = scratch_options(self.options)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda r: storage.delete(r.url, options), runs))

    # ------------------------------------------------------------- writes --
    def _passes_through(self) -> bool:
        """Whether the writes copy records as they come (no reduce, --merge, or dedup
        among equal keys), so that an output may end inside a bucket."""
        two = self._stage_two()
        return not (two.reduce or two.merge or two.dedup)

    def _write(self, parts: list, groups: list[tuple[int, int]], outputs: list[str],
               total_bytes: int, slices: list | None = None) -> JobSummary:
        two = self._stage_two()
        per = plan.outputs_per_task(len(outputs), total_bytes, self.memory, self.workers)
        tasks = []
        for j0, j1, runs in parts:
            todo = [j for j in range(j0, j1) if outputs[j] not in self.present]
            for chunk in plan.write_chunks(todo, per):
                outs = [(outputs[j], groups[j][0], groups[j][1], *(slices[j] if slices else ()))
                        for j in chunk]
                tasks.append(Task(write_outputs, {"outputs": outs, "runs": runs, "spec": two},
                                  input=f"{len(runs)} runs", outputs=[o[0] for o in outs],
                                  narrow=_narrow_write))
        mem: list[dict] = []
        s2 = engine.run(self.spec.tool, tasks, self.opts.with_(dry_run=False),
                        on_result=lambda _i, r: mem.append(r.pop("extra", {})),
                        check_outputs=False)
        skipped = len(outputs) - s2.shards_total
        s2.shards_total += skipped
        s2.shards_skipped += skipped
        s2.extra["memory"] = mem
        most = max((len(t.kwargs["runs"]) for t in tasks), default=0)
        self.stats.update(write_tasks=len(tasks), outputs_per_task=per,
                          max_runs_per_write=most, requests_per_write=2 * most)
        if self.spec.key.dedup and not self.two_passes:  # dropped as duplicates
            self.stats["duplicates"] = sum(m.get("duplicates", 0) for m in mem)
        return s2

    # ----------------------------------------------------------- summary --
    def _combine(self, s1: JobSummary, s2: JobSummary | None,
                 failed: str | None = None) -> JobSummary:
        """One summary whose shards are the outputs: samples read in stage 1, written at
        the end; the failures of every stage.  When stage 1, the dedup pass or a merge
        level failed, nothing was written: every output counts as failed, every sample
        read as lost."""
        out = JobSummary(self.spec.tool, max_errors=s1.max_errors)
        for name in ("samples_read", "samples_mapped", "samples_dropped", "samples_failed",
                     "sample_errors", "bytes_in"):
            setattr(out, name, getattr(s1, name))
        out.failures, out.errors = list(s1.failures), list(s1.errors)
        out.failure_kinds = dict(s1.failure_kinds)
        mem = list(s1.extra.get("memory", []))
        written = s2 is not None and failed is None and s2.extra.get("memory") is not None
        out.shards_retried, out.retries = s1.shards_retried, list(s1.retries)
        for s in (self.deduped, s2):
            if s is None:
                continue
            out.sample_errors += s.sample_errors
            out.failures += s.failures
            out.errors += s.errors
            out.shards_retried += s.shards_retried
            out.retries += s.retries
            for kind, n in s.failure_kinds.items():
                out.failure_kinds[kind] = out.failure_kinds.get(kind, 0) + n
        if self.deduped is not None:  # duplicates the dedup pass dropped
            out.samples_mapped -= self.deduped.samples_dropped
            out.samples_dropped += self.deduped.samples_dropped
            mem += self.deduped.extra.get("memory", [])
        if written:
            out.shards_total, out.shards_done = s2.shards_total, s2.shards_done
            out.shards_skipped, out.shards_failed = s2.shards_skipped, s2.shards_failed
            out.samples_written = s2.samples_written
            out.written = s2.written
            # stage-1 records that the end dropped (reduce -> None) or lost (reduce raised,
            # an output failed) move out of "mapped": read = mapped + dropped + failed
            out.samples_mapped -= s2.samples_dropped + s2.samples_failed
            out.samples_dropped += s2.samples_dropped
            out.samples_failed += s2.samples_failed
            out.bytes_out = s2.bytes_out
            mem += s2.extra.get("memory", [])
        else:
            stage = failed or ("stage 1" if s2 is None else "a merge level")
            n_failed = s1.shards_failed if s2 is None else s2.shards_failed
            of = s1.shards_total if s2 is None else s2.shards_total
            out.shards_total = out.shards_failed = self.outset.count or 1
            out.samples_failed += out.samples_mapped  # read, but never written
            out.samples_mapped = 0
            out.notes.append(f"{stage} failed ({n_failed} of {of} tasks): nothing was written")
        merges = sum(level["tasks"] for level in self.stats["levels"])
        out.extra = {"input_shards": len(self.inputs), "stage1_tasks_failed": s1.shards_failed,
                     "memory_budget": self.memory, "intermediate_merges": merges, **self.stats}
        if mem:
            out.extra["peak_rss"] = max(m.get("peak_rss", 0) for m in mem)
            out.extra["rss_start_min"] = min(m.get("rss_start", 0) for m in mem)
        return out


def _add_counts(counts: np.ndarray, sparse: tuple | None) -> None:
    """Add a task's sparse per-bucket counts (bucket numbers, counts) to ``counts``."""
    if sparse is not None:
        idx, n = sparse
        np.add.at(counts, np.frombuffer(idx, dtype=np.uint32),
                  np.frombuffer(n, dtype=np.uint64).astype(np.int64))


def _narrow_write(task: Task, urls: list[str]) -> Task:
    """The write task for only ``urls`` of its outputs (a retry of those that failed)."""
    keep = set(urls)
    outs = [o for o in task.kwargs["outputs"] if o[0] in keep]
    return replace(task, kwargs={**task.kwargs, "outputs": outs}, outputs=[o[0] for o in outs])


def _add(a: JobSummary, b: JobSummary) -> JobSummary:
    """Two merge levels' summaries as one (tasks, failures, retries)."""
    for name in ("shards_total", "shards_done", "shards_failed", "shards_retried"):
        setattr(a, name, getattr(a, name) + getattr(b, name))
    a.failures += b.failures
    a.retries += b.retries
    for kind, n in b.failure_kinds.items():
        a.failure_kinds[kind] = a.failure_kinds.get(kind, 0) + n
    return a
