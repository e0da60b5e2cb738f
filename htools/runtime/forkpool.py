"""Calls run by worker processes forked from the fork server, without Dask
(:class:`ForkPool`): the executor of an htupload of local files into a local folder on the
embedded cluster, whose tasks need nothing of Dask but a process to run in.

Beside :class:`~htools.runtime.executors.DaskExecutor` and
:class:`~htools.runtime.executors.LocalExecutor`, with their interface (``threads``,
``submit``, ``in_flight``, ``batches``, ``stop``), so the run loop, its retries, progress and
reports are the same.  Why: such a job's tasks take about a second in all on 2 cores, and
Dask's embedded cluster costs about as much again (``distributed``'s imports in this
process and the fork server, the scheduler, a nanny and a worker a process, each task's
round trips); the pool costs a fork a worker.

* Each worker is a process of one thread forked from htools' fork server
  (:mod:`htools.clusters.forkserver`, preloaded with the task's modules), running one call at
  a time sent down its pipe; it gets this process's environment as it is when the pool
  starts (the fork server may have started earlier) and ignores SIGINT: a terminal's Ctrl-C
  is this process's to handle.
* A worker that dies (killed, out of memory) fails only the call it ran: that call runs
  again on a new worker, up to ``retries`` times (``--retries``, as Dask retries a task
  whose worker died), then ends with :class:`WorkerDied`.
* A worker's memory is bounded as a Dask nanny bounds it: past :data:`TERMINATE` of its
  share of the machine's memory (the memory over the workers, Dask's default limit) it is
  ended, and its call goes as above (checked every :data:`MEMORY_CHECK` seconds).
* Ctrl-C (:meth:`ForkPool.stop`): nothing new starts, the running calls end (a bounded
  wait; a second Ctrl-C does not wait), then the workers are ended.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

from htools.display import in_notebook
from htools.errors import HtoolsError
from htools.runtime.executors import STOP_WAIT, Call, Done, call

# what a worker imports anyway, preloaded by the fork server when the pool starts it
PRELOAD = ("htools.runtime.forkpool", "htools.upload_files")
TERMINATE = 0.95  # of a worker's memory limit, as Dask's distributed.worker.memory.terminate
MEMORY_CHECK = 0.1  # seconds between looks at the workers' memory (a nanny's monitor-interval)


class WorkerDied(HtoolsError):
    """A call's worker process ended while it ran, as often as it was retried."""


class _Worker:
    """One worker process and this side of its pipe; ``running``: its call, if any."""

    def __init__(self, ctx: Any, env: dict[str, str]):
        import multiprocessing

        self.conn, child = multiprocessing.Pipe()
        alive, self.alive = multiprocessing.Pipe(duplex=False)  # closes when this process ends
        self.proc = ctx.Process(target=serve, args=(child, env, alive), daemon=True,
                                name="htools-worker")
        self.proc.start()
        child.close()
        alive.close()
        self.running: Call | None = None
        self.over = False  # ended for its memory

    def end(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.conn.close()
        self.alive.close()


class ForkPool:
    """``workers`` processes forked from the fork server, one call at a time each; calls
    whose worker died run again up to ``retries`` times.  :meth:`start` forks them (the
    first time: the fork server's start), :meth:`close` ends them; a context manager for
    the run loop (leaving it leaves them to their owner, as DaskExecutor leaves its client)."""

    client = None  # no Dask client (no dashboard to show)

    def __init__(self, workers: int, retries: int = 0, memory_limit: int | None = None,
                 quiet: bool = True):
        self.threads = max(1, workers)
        self.quiet = quiet  # else the run loop's entry says how many workers run
        self.retries = retries
        # bytes a worker may hold (default: the machine's memory over the workers)
        self.memory_limit = memory_limit if memory_limit is not None \
            else _machine_memory() // self.threads
        self.checked = 0.0  # when the workers' memory was last looked at
        self.workers: list[_Worker] = []
        self.queue: deque[Call] = deque()
        self.deaths: dict[str, int] = {}  # a call's key -> how often its worker died
        self.env: dict[str, str] = {}
        self.ctx: Any = None

    def start(self) -> ForkPool:
        import multiprocessing

        from htools.clusters import forkserver

        # a command's one job preloads only what its workers import; in a notebook or
        # another Python caller, later jobs' Dask workers fork from the same server
        forkserver.start(PRELOAD if forkserver.is_command() else (*forkserver.PRELOAD, *PRELOAD))
        # as it is now: with what the fork server's start put there for the workers
        # (Dask's pre-spawn variables: MALLOC_TRIM_THRESHOLD_, which tune_malloc reads)
        self.env = dict(os.environ)
        self.ctx = multiprocessing.get_context(forkserver.method())
        while len(self.workers) < self.threads:
            self.workers.append(_Worker(self.ctx, self.env))
        return self

    def __enter__(self) -> ForkPool:
        """The run loop starts (not when every task was skipped): one line on stderr
        unless ``quiet``, as the embedded cluster's."""
        if not self.quiet and not in_notebook():
            print(f"htools: {self.threads} worker processes", file=sys.stderr, flush=True)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        """The pool is its owner's (see close), unless the loop left by an exception:
        the calls that run are then ended before the job removes their partial outputs."""
        if exc_type is not None:
            self.close()

    def close(self) -> None:
        """End every worker (a call that runs is cut short: its partial output stays for
        the job's clean-up to remove)."""
        for w in self.workers:
            w.end()
        self.workers.clear()

    def submit(self, calls: list[Call]) -> None:
        self.queue.extend(calls)
        self._dispatch()

    def in_flight(self) -> int:
        return len(self.queue) + sum(w.running is not None for w in self.workers)

    def batches(self) -> Iterator[list[Done]]:
        """The calls that finished since the last turn (a worker's death handled on the
        way: its call queued again, or failed)."""
        while self.in_flight():
            busy = [w for w in self.workers if w.running is not None]
            ready = set(wait([x for w in busy for x in (w.conn, w.proc.sentinel)],
                             MEMORY_CHECK if self.memory_limit else None))
            if self.memory_limit and time.monotonic() >= self.checked + MEMORY_CHECK:
                self.checked = time.monotonic()
                self._bound_memory(busy)
            done: list[Done] = []
            for w in busy:
                if w.conn in ready:
                    try:
                        done.append(_received(w))
                        continue
                    except (EOFError, OSError):
                        pass  # it died while answering: as below
                if w.conn in ready or w.proc.sentinel in ready:
                    lost = self._died(w)
                    if lost is not None:
                        done.append(lost)
            self._dispatch()
            if done:
                yield done

    def _died(self, w: _Worker) -> Done | None:
        """``w`` died: replaced by a new worker; its call queued again (None), or failed
        when it has been retried as often as allowed."""
        c = w.running
        w.running = None
        w.end()
        code = w.proc.exitcode
        self.workers[self.workers.index(w)] = _Worker(self.ctx, self.env)
        n = self.deaths[c.key] = self.deaths.get(c.key, 0) + 1
        if n <= self.retries:
            self.queue.appendleft(c)
            return None
        why = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        why = f"ended past {TERMINATE:.0%} of its memory limit, " \
              f"{self.memory_limit / 2**20:.0f} MiB" if w.over else f"{why}: killed, or out of memory?"
        return Done(c.key, error=WorkerDied(
            f"its worker process died ({why}) {n} time{'s' if n > 1 else ''}"))

    def _bound_memory(self, busy: list[_Worker]) -> None:
        """End the workers holding more than :data:`TERMINATE` of the memory limit (their
        death is seen on the next turn)."""
        for w in busy:
            if _rss(w.proc.pid) > TERMINATE * self.memory_limit and w.proc.is_alive():
                w.over = True
                w.proc.kill()

    def _dispatch(self) -> None:
        for i, w in enumerate(self.workers):
            if not self.queue:
                return
            if w.running is None and not w.proc.is_alive():  # died idle: no call lost
                w.end()
                w = self.workers[i] = _Worker(self.ctx, self.env)
            if w.running is None:
                c = self.queue.popleft()
                try:
                    w.conn.send((c.fn, c.kwargs, c.delay))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # it died: batches() sees its sentinel
                w.running = c

    def stop(self, prefix: str, wait_for: float = STOP_WAIT) -> None:
        """Ctrl-C: nothing new starts; the calls that run end (at most ``wait_for``
        seconds; a second Ctrl-C ends them at once), then the workers."""
        self.queue.clear()
        deadline = time.monotonic() + wait_for
        try:
            for w in self.workers:
                if w.running is not None:
                    wait([w.conn, w.proc.sentinel], max(0.0, deadline - time.monotonic()))
        except KeyboardInterrupt:
            pass
        finally:
            self.close()


CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def _machine_memory() -> int:
    """The memory this process may use, in bytes, as Dask's ``memory_limit`` reckons it:
    the machine's, or less where a cgroup (a container, a pod) or ``RLIMIT_RSS`` bounds it
    (0 where nothing says: no limit)."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    for path in CGROUP_LIMITS:
        try:
            with open(path, encoding="ascii") as f:
                limits.append(int(f.read().strip()))  # "max": no limit (ValueError)
        except (OSError, ValueError):
            pass
    try:
        import resource

        hard = resource.getrlimit(resource.RLIMIT_RSS)[1]
        if hard != resource.RLIM_INFINITY:
            limits.append(hard)
    except (ImportError, OSError, ValueError, AttributeError):
        pass
    return min((n for n in limits if n > 0), default=0)


def _rss(pid: int) -> int:
    """Resident memory of the process ``pid`` in bytes (0 where /proc cannot say)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _received(w: _Worker) -> Done:
    """``w``'s answer to its call (EOFError, OSError: it died answering)."""
    try:
        ok, value = w.conn.recv()
    except (EOFError, OSError):
        raise
    except Exception as e:  # noqa: BLE001 - read whole, but it does not unpickle
        ok, value = False, HtoolsError(f"the task's answer cannot be read back: "
                                       f"{type(e).__name__}: {e}")
    c, w.running = w.running, None
    assert c is not None
    return Done(c.key, value) if ok else Done(c.key, error=value)


def serve(conn: Connection, env: dict[str, str], alive: Connection) -> None:
    """A worker: the calls sent down ``conn``, one at a time, each answered with (True,
    its value) or (False, the exception it raised), until the pipe closes; it exits at
    once when ``alive`` closes (the pool's process is gone: killed, say), as a Dask
    worker whose nanny is gone does, rather than finish a shard for no one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(alive,), daemon=True,
                     name="htools-worker-alive").start()
    for k in [k for k in os.environ if k not in env]:
        del os.environ[k]
    os.environ.update(env)
    while True:
        try:
            fn, kwargs, delay = conn.recv()
        except (EOFError, OSError):
            return
        try:
            answer: tuple[bool, Any] = (True, call(fn, kwargs, delay))
        except Exception as e:  # noqa: BLE001 - the task's failure, handed back
            answer = (False, e)
        try:
            conn.send(answer)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            return  # the pool is gone
        except Exception as e:  # noqa: BLE001 - an exception (or value) that won't pickle
            conn.send((False, HtoolsError(f"{type(answer[1]).__name__}: {answer[1]} ({e})")))


def _exit_with(alive: Connection) -> None:
    """Exit this worker as soon as ``alive`` reads its end (its other side closed)."""
    try:
        alive.recv()
    except (EOFError, OSError):
        pass
    os._exit(1)
