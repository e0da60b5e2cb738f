"""Running one Dask task per shard: the options every tool shares, submission,
retries, the job summary.  Which cluster a job runs on is :mod:`htools.clusters.connection`
(``connect`` and friends are re-exported here).

Task functions are top-level, take plain arguments, run inside the task frame
(:func:`htools.runtime.task.shard_task`) and return a :class:`~htools.summary.ShardResult`
dict; they never touch the client.  :func:`run` keeps a bounded window of tasks in
flight, so client and scheduler memory stay flat however many shards a job has.
Nothing here prints a report: library functions return the :class:`JobSummary`
(with the plan, for ``dry_run``); the CLI reports it (:mod:`htools.cli.common`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from htools import storage
from htools.clusters.connection import (
    check_resources,
    connect,
)
from htools.errors import HtoolsError, hide_credentials
from htools.options import RunOptions
from htools.runtime import preflight
from htools.runtime.progress import progress_display
from htools.storage.base import retry_policy
from htools.summary import JobSummary, ShardResult

STOP_WAIT = 60.0  # seconds Ctrl-C waits for this job's running tasks to end


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
        ordered: bool = False, check_outputs: bool = True,
        group: bool = False) -> JobSummary:
    """Run ``tasks`` (one per shard) and return the job summary.

    ``on_result(index, result)`` is called as results arrive -- in task order
    when ``ordered`` (results that arrive early wait, and at most a window of
    tasks runs ahead, so memory stays bounded).

    ``group``: short tasks may run several to a Dask task (see :func:`_group_size`),
    each with its own result, as if alone; for tasks whose function only reads its
    arguments and writes its own output (not ``ordered``, not multi-output tasks).
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
        try:
            from htools.usercode import shipping  # imports distributed

            scripts = shipping.scripts_in(v for _i, t in todo for v in t.kwargs.values())
            with connect(opts) as client, shipping.once_per_worker(client, scripts):
                preflight.check_workers(client, [t.input for _i, t in todo],  # issue 17
                                        [u for _i, t in todo for u in [t.output, *(t.outputs or [])]])
                check_resources(client, opts.resources)
                _execute(client, tool, todo, opts, summary, on_result, ordered,
                         group and not ordered)
        finally:  # a worker killed mid-write can leave a hidden temp file behind
            storage.remove_partials([u for _i, t in todo for u in [t.output, *(t.outputs or [])]],
                                    opts.storage_options)
    return summary.finish()


def _remove_stale(result: dict, opts: RunOptions) -> None:
    """With --overwrite, a shard that failed must not keep its output from an earlier run:
    a later --resume would take that stale output for this job's."""
    out = result["output"]
    if opts.overwrite and result["status"] == "failed" and out \
            and not storage.is_stream(out):
        try:
            storage.delete(out, opts.storage_options)
        except HtoolsError:
            pass  # the failure itself is reported


def _execute(client, tool, todo, opts, summary, on_result, ordered, group=False) -> None:
    from distributed import as_completed

    job = uuid.uuid4().hex[:8]
    threads = _threads(client)
    window = _window(client, ordered, threads)
    bar = progress_display(sum(t.shards for _i, t in todo), opts.quiet, client, tool)
    pending: dict[int, list[dict]] = {}
    next_emit = 0  # position in ``todo`` of the next result to hand on (ordered mode)
    submitted = 0
    position: dict[str, list[int]] = {}  # a Dask task's key -> the positions it runs
    tasks = {pos: t for pos, (_i, t) in enumerate(todo)}  # narrowed when a part is retried
    attempts: dict[int, int] = {}
    kept: dict[int, list[dict]] = {}  # results of a task waiting for its retried part
    policy = retry_policy({"retries": opts.retries})
    fatal: dict | None = None  # a result saying every shard would fail the same way
    seconds: list[float] = []  # of the last tasks that ran alone or grouped (for grouping)
    ac = as_completed()

    def submit(batch: list[tuple[list[int], float]]) -> None:
        """Submit tasks (positions, backoff delay) in one message to the scheduler: one
        graph update for all of them, not one per task (the limit on many tiny shards).
        A task of several positions runs their functions one after the other."""
        if not batch:
            return
        keys, fns, kwargs, delays = [], [], [], []
        for poss, delay in batch:
            pos = poss[0]
            i, t = todo[pos][0], tasks[pos]
            if len(poss) == 1:
                key = f"{tool}-{job}-{i:06d}-{attempts.get(pos, 1)}"
                fns.append(t.fn)
                kwargs.append(t.kwargs)
            else:
                key = f"{tool}-{job}-{i:06d}-{todo[poss[-1]][0]:06d}"
                fns.append(_call_each)
                kwargs.append(_group_kwargs([tasks[p] for p in poss]))
            position[key] = poss
            keys.append(key)
            delays.append(delay)
        ac.update(client.map(_call, fns, kwargs, delays, key=keys, pure=False,
                             retries=opts.retries, resources=opts.resources))

    def groupable(pos: int) -> bool:
        t = tasks[pos]
        return t.outputs is None and t.narrow is None and pos not in attempts

    def fresh(room: int) -> list[tuple[list[int], float]]:
        """Up to ``room`` new Dask tasks of the positions not yet submitted."""
        nonlocal submitted
        out = []
        size = _group_size(seconds, len(todo) - submitted, threads) if group else 1
        while fatal is None and submitted < len(todo) and len(out) < room:
            poss = [submitted]
            submitted += 1
            while len(poss) < size and submitted < len(todo) and groupable(submitted) \
                    and groupable(poss[0]) and tasks[submitted].fn is tasks[poss[0]].fn \
                    and tasks[submitted].kwargs.keys() == tasks[poss[0]].kwargs.keys():
                poss.append(submitted)
                submitted += 1
            out.append((poss, 0.0))
        return out

    submit(fresh(min(window, len(todo))))
    try:
        # the futures that finished since the last turn, with their results fetched in
        # one gather (one request per worker, not one per task)
        for batch in ac.batches():
            values = _gather(client, batch)
            later: list[tuple[list[int], float]] = []
            for fut in batch:
                poss = position.pop(fut.key)
                value = values.get(fut.key)
                if len(poss) > 1:
                    each = _results_of_group(fut, value)
                    if each is None:  # the group raised or its workers died: run each alone,
                        later.extend(([p], 0.0) for p in poss)  # as it would have run
                        fut.release()
                        continue
                    seconds.append(sum(r.get("seconds", 0.0) for rs in each for r in rs)
                                   / len(poss))
                else:
                    each = [_results_of(fut, tasks[poss[0]], value)]
                    if group and each[0]:
                        seconds.append(each[0][0].get("seconds", 0.0))
                fut.release()
                del seconds[:-_SECONDS_KEPT]
                for pos, results in zip(poss, each):
                    i, t = todo[pos][0], tasks[pos]
                    again = [r for r in results if r["status"] == "failed"
                             and r.get("transient") and attempts.get(pos, 1) <= opts.retries]
                    for r in results:
                        r["attempts"] = attempts.get(pos, 1)
                    if again:  # run the shard(s) again from the input, after a backoff
                        for r in again:
                            summary.retried(r)
                        retrying = {id(r) for r in again}
                        kept.setdefault(pos, []).extend(r for r in results
                                                        if id(r) not in retrying)
                        tasks[pos] = t.narrow(t, [r["output"] for r in again]) \
                            if t.narrow is not None and len(again) < len(results) else t
                        attempts[pos] = attempts.get(pos, 1) + 1
                        later.append(([pos], _backoff(policy, attempts[pos] - 1)))
                        continue
                    results = kept.pop(pos, []) + results
                    fatal = fatal or next((r for r in results if r.get("fatal")), None)
                    for result in results:
                        _remove_stale(result, opts)
                        summary.add(result)
                        bar.update(result)
                    if ordered:
                        pending[pos] = results
                        while next_emit in pending:
                            for r in pending.pop(next_emit):
                                if on_result:
                                    on_result(todo[next_emit][0], r)
                            next_emit += 1
                    elif on_result:
                        for result in results:
                            on_result(i, result)
            del batch, values
            if ordered:
                room = window - (submitted - next_emit)
            else:
                room = window - ac.count() - len(later)
            if room > 0:
                later.extend(fresh(room))
            submit(later)
        for pos in range(submitted, len(todo)):  # not run: they would fail the same way
            for result in _failed_all(tasks[pos], fatal["error"]):
                summary.add(result)
                if on_result:
                    on_result(todo[pos][0], result)
    except KeyboardInterrupt:
        _stop(client, ac, f"{tool}-{job}-")
        raise
    finally:
        bar.close()


GROUP_SECONDS = 0.05  # a Dask task of grouped short tasks runs about this long
GROUP_MAX = 64  # tasks to a group at most
_SECONDS_KEPT = 32  # the last tasks' run times the group size is made from


def _group_size(seconds: list[float], left: int, threads: int) -> int:
    """How many short tasks to run in one Dask task: enough that the group runs about
    GROUP_SECONDS (Dask's own cost, a few ms a task across client, scheduler and
    worker, then matters little), from the median run time of the last tasks; 1 until
    some have run, and never so many that fewer than 4 groups a worker thread are
    left (the end of the job stays balanced)."""
    if not seconds:
        return 1
    median = sorted(seconds)[len(seconds) // 2]
    size = int(GROUP_SECONDS / max(median, 1e-4))
    return max(1, min(size, GROUP_MAX, left // (4 * threads)))


def _group_kwargs(group: list[Task]) -> dict:
    """The arguments of :func:`_call_each` for ``group`` (one function, the same argument
    names): the arguments every task shares (the same object) once, the others as one
    tuple a task.  Compact, since Dask keeps the last messages it sent to each worker
    (``distributed.admin.low-level-log-length``, 1000 a stream): a group's arguments stay
    in the client's process (the scheduler's) until 1000 more messages have gone out."""
    first = group[0].kwargs
    shared = {k: v for k, v in first.items() if all(t.kwargs[k] is v for t in group[1:])}
    names = tuple(k for k in first if k not in shared)
    return {"fn": group[0].fn, "shared": shared, "names": names,
            "each": [tuple(t.kwargs[k] for k in names) for t in group]}


def _call_each(fn: Callable, shared: dict, names: tuple, each: list[tuple]) -> list:
    """A group's task: ``fn`` for each task of the group, one after the other, with the
    arguments all share and its own (see :func:`_group_kwargs`)."""
    return [fn(**shared, **dict(zip(names, values))) for values in each]


def _results_of_group(fut, value: Any = None) -> list[list[dict]] | None:
    """Each grouped task's result dicts; None when the group raised or its workers kept
    dying (its tasks then run again, each alone)."""
    try:
        result = value if fut.status == "finished" and value is not None else fut.result()
    except Exception:  # noqa: BLE001 - KilledWorker, a lost connection, a task raised
        return None
    return [r if isinstance(r, list) else [r] for r in result]


def _gather(client, futures: list) -> dict:
    """The results of those of ``futures`` that finished, by key, fetched in one call;
    {} when that fails (each future is then asked on its own, see :func:`_results_of`)."""
    finished = [f for f in futures if f.status == "finished"]
    if not finished:
        return {}
    try:
        values = client.gather(finished)
    except Exception:  # noqa: BLE001 - a result lost meanwhile: per future, as before
        return {}
    return {f.key: v for f, v in zip(finished, values)}


def _stop(client, ac, prefix: str, wait: float = STOP_WAIT) -> None:
    """Ctrl-C: cancel this job's tasks and wait (a bounded time) until none of them runs
    any more, so that what they write cannot outlive the clean-up that follows (on a
    separate scheduler, running tasks are not interrupted by the client's exit).  A
    second Ctrl-C leaves at once."""
    futures = list(ac.futures)
    try:
        client.cancel(futures)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            # the workers' own view: a cancelled task leaves the scheduler's `processing`
            # at once but runs on in its worker thread until it returns
            running = [k for keys in client.run(_running_keys, prefix).values() for k in keys]
            if not running:
                return
            time.sleep(0.2)
    except KeyboardInterrupt:
        return
    except Exception:  # noqa: BLE001 - a scheduler already gone: nothing runs for us
        return


def _running_keys(prefix: str, dask_worker=None) -> list[str]:
    """Run on a worker: the keys starting with ``prefix`` that its threads still execute
    (cancelled ones included)."""
    state = dask_worker.state
    return [str(ts.key) for ts in (*state.executing, *state.long_running)
            if str(ts.key).startswith(prefix)]


def _failed_all(task: Task, error: str) -> list[dict]:
    """A failed result, with ``error``, for every shard of ``task``."""
    results = []
    for out in task.outputs if task.outputs is not None else [task.output]:
        r = ShardResult(input=task.input, output=out)
        r.fail(error)
        results.append(r.as_dict())
    return results


def _call(fn: Callable, kwargs: dict, delay: float = 0.0) -> Any:
    """What every task runs: ``fn(**kwargs)``, after ``delay`` seconds for a retried
    shard (its backoff, spent on the worker so the client keeps handing out other work)."""
    if delay:
        time.sleep(delay)
    return fn(**kwargs)


def _backoff(policy, attempt: int) -> float:
    """The delay before retry number ``attempt`` (1, 2, ...) of a shard."""
    delays = policy.delays()
    delay = 0.0
    for _ in range(attempt):
        delay = next(delays, delay)
    return delay


def _threads(client) -> int:
    """The cluster's worker threads (1 when the scheduler cannot say)."""
    try:
        threads = sum(w.get("nthreads", 1)
                      for w in client.scheduler_info().get("workers", {}).values())
    except Exception:  # noqa: BLE001 - a scheduler that cannot say: assume one
        threads = 1
    return max(threads, 1)


def _window(client, ordered: bool, threads: int | None = None) -> int:
    """Tasks in flight at once: enough to keep every worker thread busy with a few
    queued behind it, few enough that client and scheduler memory stay flat.  In
    ``ordered`` mode, results that arrive early wait in the client, so fewer."""
    threads = _threads(client) if threads is None else threads
    return 2 * threads + 2 if ordered else max(16, 4 * threads)


def _results_of(fut, task: Task, value: Any = None) -> list[dict]:
    """A task's result dicts (``value``: its result, already fetched, if it finished);
    a task that raised (or whose workers kept dying) fails every shard it had."""
    try:
        result = value if fut.status == "finished" and value is not None else fut.result()
        return result if isinstance(result, list) else [result]
    except Exception as e:  # noqa: BLE001 -- KilledWorker, a lost scheduler connection
        return _failed_all(task, f"{type(e).__name__}: {e}")


def finish(summary: JobSummary, opts: RunOptions, outset=None,
           outputs: list[str] | None = None) -> JobSummary:
    """The end of every library function: for a job that wrote ``outputs`` (of the
    output set ``outset``) and succeeded, the shard index beside them (unless
    ``index=False``); ``--summary`` JSON if asked; the summary returned."""
    if outset is not None and outputs and opts.index and summary.ok and not opts.dry_run:
        from htools.shardindex import write_for_job

        write_for_job(outset, outputs, summary, opts.storage_options)
    if opts.summary:
        summary.write_json(opts.summary)
    return summary
