"""What ``--dry-run`` shows of an exchange: its plan (:class:`.plan.ExchangePlan`, the
one the run makes) as lines for people and as the figures the run's summary reports in
``extra`` (stage-1 tasks, runs, levels, write tasks), so the two can be compared."""

from __future__ import annotations

from collections.abc import Sequence

from htools import shards, storage
from htools.errors import hide_credentials
from htools.exchange import plan
from htools.exchange.dedupjob import dedup_mode
from htools.exchange.listjoin import joins, plan_line, table_bytes
from htools.exchange.plan import ExchangePlan, MergeLevel
from htools.exchange.sizing import Resources, dry_run_resources, human_size, shard_size
from htools.options import RunOptions
from htools.summary import JobSummary


def plan_lines(p: ExchangePlan, sized: Resources, dedup: str | None,
               join: bool = False) -> list[str]:
    """The plan, a line a stage (the outputs' lines follow); ``join``: the decide tasks
    join a --keep/--drop list (:func:`.listjoin.plan_line` says so)."""
    lines = [f"sized for {sized.threads} worker threads and a memory budget of "
             f"{human_size(sized.memory)} a task ({sized.source})",
             f"stage 1: {p.inputs} input shards in {p.stage1_tasks} tasks ({p.inputs_per_task} "
             f"input(s) each) -> about {p.runs} sorted runs in scratch"]
    if p.decide_tasks and not join:
        lines.append(f"dedup: stage 1 also writes each sample's sha256 of {dedup} and place "
                     f"(about 60 bytes) by digest; {p.decide_tasks} decide tasks keep the first "
                     "of each value and hand each write task the places to drop (no pass more)")
    elif p.first_pass_buckets:
        lines.append(f"dedup pass: stage 1 buckets samples by the sha256 of {dedup}; "
                     f"{p.first_pass_buckets} dedup tasks (after {_levels(p.first_pass_levels)}) "
                     "drop all but the first of each value and write runs by the sort key "
                     f"(about {p.sort_runs}; one more pass over scratch)")
    lines.append(f"merge levels: {len(p.levels)} (fan-in {p.fan_in}: a task reads at most "
                 f"{p.fan_in} runs, 2 range requests each; merge tasks per level: "
                 f"{[lv.tasks for lv in p.levels] or '-'})")
    lines.append(f"writes: {p.write_tasks} tasks ({p.outputs_per_task} output(s) each, at most "
                 f"{p.runs_per_write} runs read each); {p.range_requests} range requests in "
                 f"all; scratch holds up to {p.scratch_copies} cop{'ies' if p.scratch_copies > 1 else 'y'} "
                 "of the data")
    return lines


def _levels(levels: tuple[MergeLevel, ...]) -> str:
    if not levels:
        return "no merge level"
    return f"{len(levels)} merge level(s) of {', '.join(str(lv.tasks) for lv in levels)} tasks"


def plan_figures(p: ExchangePlan, join: bool = False) -> dict:
    """The plan's figures under the names the run's summary gives them in ``extra``."""
    levels = [_level("dedup-merge", lv) for lv in p.first_pass_levels]
    levels += [_level("merge", lv) for lv in p.levels]
    figures = {"input_shards": p.inputs, "memory_budget": p.memory,
               "intermediate_merges": p.merge_tasks, "levels": levels, "fan_in": p.fan_in,
               "stage1_tasks": p.stage1_tasks, "inputs_per_task": p.inputs_per_task,
               "runs": p.runs, "write_tasks": p.write_tasks,
               "outputs_per_task": p.outputs_per_task, "max_runs_per_write": p.runs_per_write,
               "requests_per_write": 2 * p.runs_per_write, "worker_threads": p.workers}
    if join:
        figures["decide_tasks"] = p.decide_tasks
    elif p.first_pass_buckets or p.decide_tasks:
        figures["dedup_tasks"] = p.first_pass_buckets or p.decide_tasks
    return figures


def _level(stage: str, lv: MergeLevel) -> dict:
    return {"stage": stage, "tasks": lv.tasks, "runs_per_task": lv.runs_per_task,
            "requests_per_task": 2 * lv.runs_per_task}


def plan_for(spec, inputs: int, outputs: int | None, shard_bytes: float | None,
             sized: Resources, beside: bool = False, join: bool = False,
             options: dict | None = None, table: int | None = None) -> plan.ExchangePlan:
    """The plan of ``spec`` (the run's and the dry run's); ``join``: its --keep/--drop
    list joins through the exchange (:mod:`.listjoin`), its table ``table`` bytes (when
    known; else :func:`.listjoin.table_bytes`)."""
    if not join:
        table = 0
    elif table is None:
        table = table_bytes(spec.select, options)
    mode = dedup_mode(spec.key, spec.script)
    return plan.plan_exchange(inputs=inputs, shard_bytes=shard_bytes, outputs=outputs,
                              memory=sized.memory, workers=sized.threads,
                              shuffle=spec.key.mode == "random", fan=spec.fan_in,
                              dedup_pass=mode == "pass", semijoin=join or mode == "digests",
                              beside=beside, table=table)


def dry_run(spec, outset: shards.OutputSet, inputs: Sequence[str], known: list[str],
            present: set[str], opts: RunOptions) -> JobSummary:
    """``--dry-run``: the plan of ``spec`` (an ExchangeSpec) as lines and figures, nothing run."""
    sized = dry_run_resources(opts, spec.memory)
    options = storage.resolve_options(opts.storage_options)
    table = table_bytes(spec.select, options) if spec.select is not None else 0  # once:
    join = joins(spec, sized.memory, options, table)  # before the build, a request
    planned = plan_for(spec, len(inputs), outset.count, shard_size(inputs, opts), sized,
                       join=join, options=options, table=table)
    summary = JobSummary(spec.tool, shards_total=len(known))
    summary.plan = plan_lines(planned, sized, spec.key.dedup, join)
    if spec.select is not None:
        summary.plan.insert(2, plan_line(spec.select, join, sized.memory, planned.decide_tasks,
                                         table))
    for u in known or [outset.first() + " ..."]:
        mark = "  (exists, skipped)" if u in present else ""
        summary.plan.append(f"stage 2: -> {hide_credentials(u)}{mark}")
    summary.extra = plan_figures(planned, join)
    return summary.finish()
