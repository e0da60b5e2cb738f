"""The run loop: one job's tasks through an executor (:mod:`htools.runtime.executors`),
a bounded window of them in flight, so client and scheduler memory stay flat however
many shards a job has.

:class:`RunLoop` turns, a batch of finished calls at a time, through three parts:

* **submit and group** (:meth:`RunLoop.fresh`, :meth:`RunLoop.calls`): new positions
  up to the window's room; with ``group``, short tasks several to one call (enough that
  a call runs about :data:`GROUP_SECONDS`), each keeping its own result;
* **settle** (:meth:`RunLoop.settle`): a shard that failed transiently runs again after
  the storage retry policy's backoff (``HTOOLS_RETRY_BACKOFF`` / ``HTOOLS_RETRY_CAP``),
  a multi-output task only for the outputs that failed (``Task.narrow``); a group that
  raised runs each of its tasks alone; a *fatal* result (every shard would fail the same
  way) stops new submissions, and the shards not run fail with its error;
* **deliver** (:meth:`RunLoop.deliver`): results into the summary and the progress display,
  and to ``on_result`` -- in task order when ``ordered`` (early results wait, and at most
  a window of tasks runs ahead).

Ctrl-C stops the executor's calls of this job (a bounded wait) and re-raises.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from htools import storage
from htools.errors import HtoolsError
from htools.options import RunOptions
from htools.runtime.executors import Call, Done
from htools.runtime.progress import progress_display
from htools.storage.base import RetryPolicy, retry_policy
from htools.summary import JobSummary, ShardResult

if TYPE_CHECKING:
    from htools.runtime.engine import Task

GROUP_SECONDS = 0.05  # a call of grouped short tasks runs about this long
GROUP_MAX = 64  # tasks to a group at most
SECONDS_KEPT = 32  # the last tasks' run times the group size is made from

Batch = list[tuple[list[int], float]]  # calls to make: (positions, backoff delay) each


class RunLoop:
    """One job's tasks (``todo``: (index in the job, task) pairs) through ``executor``,
    results into ``summary``.  ``executor`` has ``threads``, ``submit(calls)``,
    ``in_flight()``, ``batches()`` and ``stop(prefix)``."""

    def __init__(self, executor: Any, tool: str, todo: list[tuple[int, Task]],
                 opts: RunOptions, summary: JobSummary, *,
                 on_result: Callable[[int, dict], None] | None = None,
                 ordered: bool = False, group: bool = False):
        self.ex, self.tool, self.todo, self.opts = executor, tool, todo, opts
        self.summary, self.on_result = summary, on_result
        self.ordered, self.group = ordered, group and not ordered
        self.prefix = f"{tool}-{uuid.uuid4().hex[:8]}-"  # the keys of this job's calls
        self.window = window(executor.threads, ordered)
        self.policy: RetryPolicy = retry_policy({"retries": opts.retries})
        self.tasks = {pos: t for pos, (_i, t) in enumerate(todo)}  # narrowed on retry
        self.position: dict[str, list[int]] = {}  # a call's key -> the positions it runs
        self.attempts: dict[int, int] = {}
        self.kept: dict[int, list[dict]] = {}  # results waiting for a retried part
        self.pending: dict[int, list[dict]] = {}  # ordered: results that came early
        self.next_emit = 0  # ordered: position of the next result to hand on
        self.submitted = 0  # positions submitted for the first time
        self.fatal: dict | None = None  # a result saying every shard would fail so
        self.seconds: list[float] = []  # run times of the last tasks (for grouping)
        self.bar: Any = None

    def run(self) -> None:
        """Every task run (or failed by a fatal result), every result delivered."""
        self.bar = progress_display(sum(t.shards for _i, t in self.todo), self.opts.quiet,
                                    getattr(self.ex, "client", None), self.tool)
        self.submit(self.fresh(min(self.window, len(self.todo))))
        try:
            for done in self.ex.batches():
                later: Batch = []
                for d in done:
                    self.finished(d, later)
                del done
                room = self.window - (self.submitted - self.next_emit) if self.ordered \
                    else self.window - self.ex.in_flight() - len(later)
                if room > 0:
                    later.extend(self.fresh(room))
                self.submit(later)
            self.fail_unrun()
        except KeyboardInterrupt:
            self.ex.stop(self.prefix)
            raise
        finally:
            self.bar.close()

    # ------------------------------------------------------- submit and group --

    def fresh(self, room: int) -> Batch:
        """Up to ``room`` new calls of the positions not yet submitted (none after a
        fatal result)."""
        out: Batch = []
        n = len(self.todo)
        size = group_size(self.seconds, n - self.submitted, self.ex.threads) \
            if self.group else 1
        while self.fatal is None and self.submitted < n and len(out) < room:
            poss = [self.submitted]
            self.submitted += 1
            while len(poss) < size and self.submitted < n \
                    and self.joins(poss[0], self.submitted):
                poss.append(self.submitted)
                self.submitted += 1
            out.append((poss, 0.0))
        return out

    def joins(self, first: int, pos: int) -> bool:
        """Whether the task at ``pos`` may run in one call with that at ``first``."""
        a, b = self.tasks[first], self.tasks[pos]
        return self.groupable(first) and self.groupable(pos) and b.fn is a.fn \
            and b.kwargs.keys() == a.kwargs.keys()

    def groupable(self, pos: int) -> bool:
        t = self.tasks[pos]
        return t.outputs is None and t.narrow is None and pos not in self.attempts

    def calls(self, batch: Batch) -> list[Call]:
        """The calls of ``batch``; a call of several positions runs their functions one
        after the other (:func:`call_each`)."""
        out = []
        for poss, delay in batch:
            first = self.todo[poss[0]][0]
            if len(poss) == 1:
                t = self.tasks[poss[0]]
                key = f"{self.prefix}{first:06d}-{self.attempts.get(poss[0], 1)}"
                out.append(Call(key, t.fn, t.kwargs, delay))
            else:
                key = f"{self.prefix}{first:06d}-{self.todo[poss[-1]][0]:06d}"
                out.append(Call(key, call_each,
                                group_kwargs([self.tasks[p] for p in poss]), delay))
            self.position[key] = poss
        return out

    def submit(self, batch: Batch) -> None:
        if batch:
            self.ex.submit(self.calls(batch))

    # ---------------------------------------------------------------- settle --

    def finished(self, done: Done, later: Batch) -> None:
        """A finished call: each of its positions settled, then delivered."""
        poss = self.position.pop(done.key)
        if len(poss) > 1:
            each = results_of_group(done)
            if each is None:  # the group raised or its workers died: each alone, as it
                later.extend(([p], 0.0) for p in poss)  # would have run
                return
            self.seconds.append(sum(r.get("seconds", 0.0) for rs in each for r in rs)
                                / len(poss))
        else:
            each = [results_of(done, self.tasks[poss[0]])]
            if self.group and each[0]:
                self.seconds.append(each[0][0].get("seconds", 0.0))
        del self.seconds[:-SECONDS_KEPT]
        for pos, results in zip(poss, each):
            settled = self.settle(pos, results, later)
            if settled is not None:
                self.deliver(pos, settled)

    def settle(self, pos: int, results: list[dict], later: Batch) -> list[dict] | None:
        """The results of ``pos`` to deliver, or None when its transient failures run
        again (added to ``later``, after their backoff; a multi-output task narrowed to
        the outputs that failed, the others kept until it is done)."""
        attempt = self.attempts.get(pos, 1)
        for r in results:
            r["attempts"] = attempt
        again = [r for r in results if r["status"] == "failed" and r.get("transient")
                 and attempt <= self.opts.retries]
        if again:
            for r in again:
                self.summary.retried(r)
            retrying = {id(r) for r in again}
            self.kept.setdefault(pos, []).extend(r for r in results if id(r) not in retrying)
            t = self.tasks[pos]
            if t.narrow is not None and len(again) < len(results):
                self.tasks[pos] = t.narrow(t, [r["output"] for r in again])
            self.attempts[pos] = attempt + 1
            later.append(([pos], backoff(self.policy, attempt)))
            return None
        results = self.kept.pop(pos, []) + results
        self.fatal = self.fatal or next((r for r in results if r.get("fatal")), None)
        return results

    def fail_unrun(self) -> None:
        """After a fatal result: the positions never submitted fail with its error."""
        for pos in range(self.submitted, len(self.todo)):
            for result in failed_all(self.tasks[pos], self.fatal["error"]):
                self.summary.add(result)
                if self.on_result:
                    self.on_result(self.todo[pos][0], result)

    # --------------------------------------------------------------- deliver --

    def deliver(self, pos: int, results: list[dict]) -> None:
        """Settled results into the summary and the progress display, and on to
        ``on_result`` (in task order when ``ordered``)."""
        for result in results:
            remove_stale(result, self.opts)
            self.summary.add(result)
            self.bar.update(result)
        if self.ordered:
            self.pending[pos] = results
            while self.next_emit in self.pending:
                for r in self.pending.pop(self.next_emit):
                    if self.on_result:
                        self.on_result(self.todo[self.next_emit][0], r)
                self.next_emit += 1
        elif self.on_result:
            for result in results:
                self.on_result(self.todo[pos][0], result)


# ------------------------------------------------------------------ helpers --

def window(threads: int, ordered: bool) -> int:
    """Calls in flight at once: enough to keep every worker thread busy with a few
    queued behind it, few enough that client and scheduler memory stay flat.  In
    ``ordered`` mode, results that arrive early wait in the client, so fewer."""
    return 2 * threads + 2 if ordered else max(16, 4 * threads)


def backoff(policy: RetryPolicy, attempt: int) -> float:
    """The delay before retry number ``attempt`` (1, 2, ...) of a shard."""
    delays = policy.delays()
    delay = 0.0
    for _ in range(attempt):
        delay = next(delays, delay)
    return delay


def group_size(seconds: list[float], left: int, threads: int) -> int:
    """How many short tasks to run in one call: enough that the group runs about
    GROUP_SECONDS (Dask's own cost, a few ms a task across client, scheduler and
    worker, then matters little), from the median run time of the last tasks; 1 until
    some have run, and never so many that fewer than 4 groups a worker thread are
    left (the end of the job stays balanced)."""
    if not seconds:
        return 1
    median = sorted(seconds)[len(seconds) // 2]
    size = int(GROUP_SECONDS / max(median, 1e-4))
    return max(1, min(size, GROUP_MAX, left // (4 * threads)))


def group_kwargs(group: list[Task]) -> dict:
    """The arguments of :func:`call_each` for ``group`` (one function, the same argument
    names): the arguments every task shares (the same object) once, the others as one
    tuple a task.  Compact, since Dask keeps the last messages it sent to each worker
    (``distributed.admin.low-level-log-length``, 1000 a stream): a group's arguments stay
    in the client's process (the scheduler's) until 1000 more messages have gone out."""
    first = group[0].kwargs
    shared = {k: v for k, v in first.items() if all(t.kwargs[k] is v for t in group[1:])}
    names = tuple(k for k in first if k not in shared)
    return {"fn": group[0].fn, "shared": shared, "names": names,
            "each": [tuple(t.kwargs[k] for k in names) for t in group]}


def call_each(fn: Callable, shared: dict, names: tuple, each: list[tuple]) -> list:
    """A group's call: ``fn`` for each task of the group, one after the other, with the
    arguments all share and its own (see :func:`group_kwargs`)."""
    return [fn(**shared, **dict(zip(names, values))) for values in each]


def results_of_group(done: Done) -> list[list[dict]] | None:
    """Each grouped task's result dicts; None when the group raised or its workers kept
    dying (its tasks then run again, each alone)."""
    if done.error is not None:
        return None
    return [r if isinstance(r, list) else [r] for r in done.value]


def results_of(done: Done, task: Task) -> list[dict]:
    """A task's result dicts; a task that raised (or whose workers kept dying) fails
    every shard it had."""
    if done.error is not None:
        e = done.error
        return failed_all(task, f"{type(e).__name__}: {e}")
    return done.value if isinstance(done.value, list) else [done.value]


def failed_all(task: Task, error: str) -> list[dict]:
    """A failed result, with ``error``, for every shard of ``task``."""
    results = []
    for out in task.outputs if task.outputs is not None else [task.output]:
        r = ShardResult(input=task.input, output=out)
        r.fail(error)
        results.append(r.as_dict())
    return results


def remove_stale(result: dict, opts: RunOptions) -> None:
    """With --overwrite, a shard that failed must not keep its output from an earlier run:
    a later --resume would take that stale output for this job's."""
    out = result["output"]
    if opts.overwrite and result["status"] == "failed" and out \
            and not storage.is_stream(out):
        try:
            storage.delete(out, opts.storage_options)
        except HtoolsError:
            pass  # the failure itself is reported
