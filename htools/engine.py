"""Running one Dask task per shard: the options every tool shares, submission,
retries, the job summary.  Which cluster a job runs on is :mod:`htools.clusters`
(``connect`` and friends are re-exported here).

Task functions are top-level, take plain arguments, run inside the task frame
(:func:`htools.task.shard_task`) and return a :class:`~htools.summary.ShardResult`
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
from dataclasses import dataclass, field, fields, replace
from typing import Any

from . import preflight, storage
from .clusters import (SCHEDULER_ENV, check_resources, cluster_address, connect,  # noqa: F401
                       count_gpus, parse_resources)
from .errors import HtoolsError, hide_credentials
from .progress import progress_display
from .storage.base import retry_policy
from .summary import JobSummary, ShardResult

STOP_WAIT = 60.0  # seconds Ctrl-C waits for this job's running tasks to end


@dataclass(frozen=True)
class RunOptions:
    """Options every command shares (the CLI's common flags)."""

    cluster: str | None = None
    workers: int | None = None
    retries: int = 2
    quiet: bool = False
    resume: bool = False
    overwrite: bool = False
    dry_run: bool = False
    max_errors: int = 0
    summary: str | None = None
    storage_options: dict | None = None
    index: bool = True  # write STEM.index.json beside the outputs (htools.shardindex)
    # Dask worker resources every task asks for ({"GPU": 1}): tasks run only on workers
    # that declare them (dask worker --resources GPU=1), as many at once as they hold
    resources: dict | None = None
    client: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise HtoolsError("--resume and --overwrite exclude each other")
        if self.max_errors < 0 or self.retries < 0:
            raise HtoolsError("max_errors and retries must be >= 0")
        if self.resources is not None:
            object.__setattr__(self, "resources", parse_resources(self.resources) or None)

    @classmethod
    def of(cls, options: dict) -> RunOptions:
        """From a library function's keyword arguments (a clear error for unknown ones)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise HtoolsError(f"unknown option(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(names))}")
        return cls(**options)

    def as_kwargs(self) -> dict:
        """The options as keyword arguments of a library function."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def with_(self, **kw) -> RunOptions:
        return replace(self, **kw)


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
        ordered: bool = False, check_outputs: bool = True) -> JobSummary:
    """Run ``tasks`` (one per shard) and return the job summary.

    ``on_result(index, result)`` is called as results arrive -- in task order
    when ``ordered`` (results that arrive early wait, and at most a window of
    tasks runs ahead, so memory stays bounded).
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
            with connect(opts) as client:
                preflight.check_workers(client, [t.input for _i, t in todo],  # issue 17
                                        [u for _i, t in todo for u in [t.output, *(t.outputs or [])]])
                check_resources(client, opts.resources)
                _execute(client, tool, todo, opts, summary, on_result, ordered)
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


def _execute(client, tool, todo, opts, summary, on_result, ordered) -> None:
    from distributed import as_completed

    job = uuid.uuid4().hex[:8]
    window = _window(client, ordered)
    bar = progress_display(sum(t.shards for _i, t in todo), opts.quiet, client, tool)
    pending: dict[int, list[dict]] = {}
    next_emit = 0  # position in ``todo`` of the next result to hand on (ordered mode)
    submitted = 0
    position: dict[str, int] = {}
    tasks = {pos: t for pos, (_i, t) in enumerate(todo)}  # narrowed when a part is retried
    attempts: dict[int, int] = {}
    kept: dict[int, list[dict]] = {}  # results of a task waiting for its retried part
    policy = retry_policy({"retries": opts.retries})
    fatal: dict | None = None  # a result saying every shard would fail the same way

    def submit(pos: int, delay: float = 0.0):
        i, t = todo[pos][0], tasks[pos]
        key = f"{tool}-{job}-{i:06d}-{attempts.get(pos, 1)}"
        position[key] = pos
        if delay:
            return client.submit(_after, delay, t.fn, key=key, pure=False,
                                 retries=opts.retries, resources=opts.resources, **t.kwargs)
        return client.submit(t.fn, key=key, pure=False, retries=opts.retries,
                             resources=opts.resources, **t.kwargs)

    # with_results: results are fetched in the background as tasks finish, not one
    # round trip at a time by this loop (the limit on many tiny shards)
    ac = as_completed(with_results=True, raise_errors=False)
    while submitted < min(window, len(todo)):
        ac.add(submit(submitted))
        submitted += 1
    try:
        for fut, value in ac:
            pos = position.pop(fut.key)
            i, t = todo[pos][0], tasks[pos]
            results = _results_of(fut, t, value)
            fut.release()
            again = [r for r in results if r["status"] == "failed" and r.get("transient")
                     and attempts.get(pos, 1) <= opts.retries]
            for r in results:
                r["attempts"] = attempts.get(pos, 1)
            if again:  # run the shard(s) again from the input, after a backoff
                for r in again:
                    summary.retried(r)
                retrying = {id(r) for r in again}
                kept.setdefault(pos, []).extend(r for r in results if id(r) not in retrying)
                tasks[pos] = t.narrow(t, [r["output"] for r in again]) \
                    if t.narrow is not None and len(again) < len(results) else t
                attempts[pos] = attempts.get(pos, 1) + 1
                ac.add(submit(pos, _backoff(policy, attempts[pos] - 1)))
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
            done = next_emit if ordered else submitted - ac.count()
            while fatal is None and submitted < len(todo) and submitted - done < window:
                ac.add(submit(submitted))
                submitted += 1
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


def _after(delay: float, fn: Callable, /, **kwargs) -> Any:
    """Run ``fn`` after ``delay`` seconds (the backoff of a retried shard, spent on the
    worker so the client keeps handing out other work)."""
    time.sleep(delay)
    return fn(**kwargs)


def _backoff(policy, attempt: int) -> float:
    """The delay before retry number ``attempt`` (1, 2, ...) of a shard."""
    delays = policy.delays()
    delay = 0.0
    for _ in range(attempt):
        delay = next(delays, delay)
    return delay


def _window(client, ordered: bool) -> int:
    """Tasks in flight at once: enough to keep every worker thread busy with a few
    queued behind it, few enough that client and scheduler memory stay flat.  In
    ``ordered`` mode, results that arrive early wait in the client, so fewer."""
    try:
        threads = sum(w.get("nthreads", 1)
                      for w in client.scheduler_info().get("workers", {}).values())
    except Exception:  # noqa: BLE001 - a scheduler that cannot say: assume one
        threads = 1
    threads = max(threads, 1)
    return 2 * threads + 2 if ordered else max(16, 4 * threads)


def _results_of(fut, task: Task, value: Any = None) -> list[dict]:
    """A task's result dicts (``value``: its result, already fetched, if it finished);
    a task that raised (or whose workers kept dying) fails every shard it had."""
    try:
        result = value if fut.status == "finished" and value is not None else fut.result()
        return result if isinstance(result, list) else [result]
    except Exception as e:  # KilledWorker, a lost scheduler connection
        return _failed_all(task, f"{type(e).__name__}: {e}")


def finish(summary: JobSummary, opts: RunOptions, outset=None,
           outputs: list[str] | None = None) -> JobSummary:
    """The end of every library function: for a job that wrote ``outputs`` (of the
    output set ``outset``) and succeeded, the shard index beside them (unless
    ``index=False``); ``--summary`` JSON if asked; the summary returned."""
    if outset is not None and outputs and opts.index and summary.ok and not opts.dry_run:
        from .shardindex import write_for_job

        write_for_job(outset, outputs, summary, opts.storage_options)
    if opts.summary:
        summary.write_json(opts.summary)
    return summary
