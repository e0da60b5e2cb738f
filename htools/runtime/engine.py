"""Running a job's tasks, one per shard: outputs checked first (``--resume``,
``--overwrite``, ``--dry-run``), then every task through the run loop
(:class:`~htools.runtime.runloop.RunLoop`) on an executor -- the job's Dask cluster
(:mod:`htools.clusters`), or threads of this process when the caller gives a
:class:`~htools.runtime.executors.LocalExecutor` -- and the job summary.

Task functions are top-level, take plain arguments, run inside the task frame
(:func:`htools.runtime.task.shard_task`) and return a :class:`~htools.summary.ShardResult`
dict; they never touch the client.  A job's user code travels to the workers once
(the tool's :class:`~htools.usercode.shipping.Shipment`, registered for the run).
Nothing here prints a report or writes the shard index: library functions return the
:class:`JobSummary` (with the plan, for ``dry_run``); the writing tools write their index
(:mod:`htools.shardindex`); the CLI reports (:mod:`htools.cli.common`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from htools import storage
from htools.clusters.connection import check_resources, connect
from htools.clusters.info import ClusterInfo
from htools.errors import HtoolsError, hide_credentials
from htools.options import RunOptions
from htools.runtime import interrupts, preflight
from htools.runtime.executors import DaskExecutor, LocalExecutor
from htools.runtime.runloop import RunLoop
from htools.summary import JobSummary, ShardResult
from htools.usercode.shipping import Shipment


@dataclass
class Task:
    """One unit of work: a top-level function, its keyword arguments, and what it writes.

    Most tasks handle one shard and return one result dict.  A task that writes several
    small outputs (``outputs``) returns a list with one result per output, in order;
    each counts as a shard of the job.
    """

    fn: Callable[..., dict | list[dict]]
    kwargs: dict
    input: str | list[str] = ""
    output: str = ""  # "" when the task writes nothing checked for resume
    outputs: list[str] | None = None  # a multi-output task's outputs (not resume-checked)
    # for a multi-output task: the same task for only some of its outputs (a retry of
    # the ones that failed transiently); None runs the whole task again
    narrow: Callable[[Task, list[str]], Task] | None = field(default=None, repr=False)

    @property
    def shards(self) -> int:
        return len(self.outputs) if self.outputs is not None else 1


# ----------------------------------------------------------------- outputs --

def existing_outputs(outputs: list[str], options: dict | None) -> set[str]:
    """Which of ``outputs`` already exist (checked concurrently: object stores are slow)."""
    urls = [u for u in outputs if u and not storage.is_stream(u)]
    if not urls:
        return set()
    with ThreadPoolExecutor(max_workers=16) as pool:
        flags = list(pool.map(lambda u: storage.exists(u, options), urls))
    return {u for u, f in zip(urls, flags) if f}


def plan_outputs(outputs: list[str], opts: RunOptions) -> set[str]:
    """Outputs to skip (``--resume``), or refuse to start if outputs exist."""
    if opts.overwrite:
        return set()
    present = existing_outputs(outputs, opts.storage_options)
    if present and not opts.resume and not opts.dry_run:
        listed = sorted(present)
        shown = ", ".join(hide_credentials(u) for u in listed[:3])
        more = f" and {len(listed) - 3} more" if len(listed) > 3 else ""
        raise HtoolsError(f"{len(listed)} output(s) already exist ({shown}{more}); "
                          "use --resume to skip them or --overwrite to replace them")
    return present


def refuse_stdio(tasks: list[Task]) -> None:
    """``-`` cannot work here: tasks run in worker processes, whose stdin/stdout are not
    the user's (a worker would read an empty stdin and report an empty shard)."""
    for t in tasks:
        for url in ([t.input] if isinstance(t.input, str) else t.input) + [t.output] \
                + (t.outputs or []):
            if url == "-":
                raise HtoolsError("'-' (stdin/stdout) is not available to Dask workers: give "
                                  "a file or URL, or a pipe:COMMAND that workers can run")


def plan_lines(tasks: list[Task], skip: set[str], resume: bool) -> list[str]:
    """What ``dry_run`` shows: one line per task."""
    lines = []
    for t in tasks:
        src = t.input if isinstance(t.input, str) else " + ".join(t.input)
        mark = ""
        if t.output in skip:
            mark = "  (exists, skipped)" if resume else "  (exists: needs --resume or --overwrite)"
        lines.append(f"{hide_credentials(src)} -> {hide_credentials(t.output)}{mark}")
    return lines


# --------------------------------------------------------------- running ---

def run(tool: str, tasks: list[Task], opts: RunOptions, *,
        on_result: Callable[[int, dict], None] | None = None,
        ordered: bool = False, check_outputs: bool = True, group: bool = False,
        executor: LocalExecutor | DaskExecutor | None = None, shipment: Shipment | None = None,
        on_start: Callable[[int], Callable[[], None] | None] | None = None) -> JobSummary:
    """Run ``tasks`` (one per shard) and return the job summary.

    ``on_result(index, result)`` is called as results arrive -- in task order
    when ``ordered`` (results that arrive early wait, and at most a window of
    tasks runs ahead, so memory stays bounded).

    ``group``: short tasks may run several to a Dask task (see
    :func:`~htools.runtime.runloop.group_size`), each with its own result, as if alone;
    for tasks whose function only reads its arguments and writes its own output (not
    ``ordered``, not multi-output tasks).

    ``executor``: where the tasks run (default: the job's Dask cluster, see
    :func:`htools.clusters.connection.connect`), entered for this run; the same loop,
    retries and summary either way.  ``shipment``: the job's user code, whose tasks carry its
    :attr:`~htools.usercode.shipping.Shipment.script`.  ``on_start(skipped)`` is called once the
    executor is ready, before the first task runs (not when every task is skipped, nor
    in a dry run), with the count of outputs ``--resume`` keeps: e.g.
    :func:`htools.lineage_record.start_record`; what it returns (if not None) is called
    when every task then failed (not on Ctrl-C: an output may have been written whose
    result never came back).
    """
    refuse_stdio(tasks)
    summary = JobSummary(tool=tool, shards_total=sum(t.shards for t in tasks),
                         max_errors=opts.max_errors)
    skip = plan_outputs([t.output for t in tasks], opts) if check_outputs else set()
    if opts.dry_run:
        summary.plan = plan_lines(tasks, skip, opts.resume)
        return summary.finish()
    todo: list[tuple[int, Task]] = []
    for i, t in enumerate(tasks):
        if t.output and t.output in skip:
            r = ShardResult(input=t.input, output=t.output, status="skipped").as_dict()
            summary.add(r)
            if on_result:
                on_result(i, r)
        else:
            todo.append((i, t))
    if todo:
        outputs = [u for _i, t in todo for u in [t.output, *(t.outputs or [])]]
        try:
            with executor if executor is not None \
                    else _on_cluster(opts, todo, outputs, shipment) as ex:
                undo = on_start(len(tasks) - len(todo)) if on_start is not None else None
                RunLoop(ex, tool, todo, opts, summary, on_result=on_result,
                        ordered=ordered, group=group).run()
                if undo is not None and not summary.shards_done:
                    undo()
        finally:  # a worker killed mid-write can leave a hidden temp file behind
            storage.remove_partials(outputs, opts.storage_options)
    return summary.finish()


@contextmanager
def _on_cluster(opts: RunOptions, todo: list[tuple[int, Task]], outputs: list[str],
                shipment: Shipment | None) -> Iterator[DaskExecutor]:
    """The job's cluster, checked (paths the workers see, resources they hold), with
    the job's user code registered for as long as it runs."""
    with cluster(opts) as client, \
            (shipment.registered(client) if shipment is not None else nullcontext()):
        preflight.check_workers(client, [t.input for _i, t in todo], outputs)  # issue 17
        check_resources(client, opts.resources)
        yield DaskExecutor(client, ClusterInfo.of(client).threads, retries=opts.retries,
                           resources=opts.resources)


@contextmanager
def cluster(opts: RunOptions) -> Iterator[Any]:
    """The job's client (:func:`~htools.clusters.connection.connect`), whose closing a
    Ctrl-C cannot cut short: an embedded cluster's close takes about a second, and one
    interrupted half-way is closed again at exit, which then waits its 10 s timeout (a
    Ctrl-C in a job's last second took 10 s).  A Ctrl-C while it closes is raised once it
    is closed."""
    cm = connect(opts)
    client = cm.__enter__()
    try:
        yield client
    except BaseException:
        with interrupts.deferred():
            if not cm.__exit__(*sys.exc_info()):
                raise
    else:
        with interrupts.deferred():
            cm.__exit__(None, None, None)


def finish(summary: JobSummary, opts: RunOptions) -> JobSummary:
    """The end of every library function: ``--summary`` JSON if asked; the summary
    returned.  (A writing tool writes its shard index first: :mod:`htools.shardindex`.)"""
    with interrupts.finishing():  # the job is done: a Ctrl-C now does not undo it
        if opts.summary:
            summary.write_json(opts.summary)
    return summary
