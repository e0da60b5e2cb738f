"""Where the run loop's calls execute (:mod:`htools.runtime.runloop`): the workers of a
Dask cluster (:class:`DaskExecutor`), threads of this process (:class:`LocalExecutor`:
htupload writing local files that the workers of a cluster elsewhere cannot see), or
processes forked from the fork server (:class:`htools.runtime.forkpool.ForkPool`: htupload
of local files into a local folder, without Dask).

Both take :class:`Call` s (a key, a top-level function, its arguments, a backoff delay)
and hand back, a batch at a time, what finished as :class:`Done` (the value, or the
exception that the call raised or its workers died of).  Nothing else of Dask reaches
the loop, so it runs as well on a small in-memory stand-in (``tests/test_runloop.py``).
"""

from __future__ import annotations

import pickle
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from htools.summary import compact, expand

STOP_WAIT = 60.0  # seconds Ctrl-C waits for this job's running tasks to end
PACK_ITEMS = 16  # a call with a list (or tuple) argument this long travels packed


@dataclass
class Call:
    """One call to run: ``fn(**kwargs)`` after ``delay`` seconds, known by ``key``."""

    key: str
    fn: Callable
    kwargs: dict
    delay: float = 0.0


@dataclass
class Done:
    """A call that finished: its value, or the exception it ended with."""

    key: str
    value: Any = None
    error: BaseException | None = None


def call(fn: Callable, kwargs: dict | bytes, delay: float = 0.0) -> Any:
    """What every task runs: ``fn(**kwargs)``, after ``delay`` seconds for a retried
    shard (its backoff, spent where the task runs so the client keeps handing out work);
    ``kwargs`` may come packed (:func:`pack`)."""
    if delay:
        time.sleep(delay)
    if isinstance(kwargs, bytes):
        kwargs = pickle.loads(zlib.decompress(kwargs))
    return fn(**kwargs)


def dask_call(fn: Callable, kwargs: dict | bytes, delay: float = 0.0) -> Any:
    """What a Dask task runs: :func:`call`, its result dicts compacted for the trip back
    to the client (:class:`DaskExecutor` expands them)."""
    return _resized(call(fn, kwargs, delay), compact)


def _resized(value: Any, fn: Callable[[dict], dict]) -> Any:
    """``fn`` of each of a task's result dicts (alone, in a list, a group's lists):
    :func:`htools.summary.compact` on the worker, :func:`~htools.summary.expand` back."""
    if isinstance(value, dict) and "status" in value:
        return fn(value)
    if isinstance(value, list):
        return [_resized(v, fn) for v in value]
    return value


def pack(kwargs: dict) -> dict | bytes:
    """A call's arguments as they travel to its worker: as they are, or, when one of
    them is a long list (a stage-1 task's inputs, a write task's outputs, a group's
    tasks), pickled and compressed into one ``bytes``.

    The scheduler keeps the messages it sent to each worker (the last
    ``distributed.admin.low-level-log-length`` of them, 1000 a stream, each under 1 MB)
    long after their tasks are gone: with few tasks of many shards, that is every
    task's arguments until the job ends, as Python objects (measured: 390 bytes a shard
    of an htshuffle N -> N, 7.8 MB at 20,000).  Packed, they are one small ``bytes``
    each (about 10 bytes a shard: their URLs differ in a few digits)."""
    if not any(isinstance(v, (list, tuple)) and len(v) >= PACK_ITEMS
               for v in kwargs.values()):
        return kwargs
    try:
        blob = pickle.dumps(kwargs, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):  # a local function, a lambda
        import cloudpickle

        blob = cloudpickle.dumps(kwargs, protocol=pickle.HIGHEST_PROTOCOL)
    return zlib.compress(blob, 1)


class DaskExecutor:
    """Calls as Dask tasks of ``client``: submitted in one message a turn, their results
    fetched in one gather a turn (one request per worker, not one per task)."""

    def __init__(self, client: Any, threads: int, *, retries: int = 0,
                 resources: dict | None = None, as_completed: Callable | None = None):
        if as_completed is None:
            from distributed import as_completed
        self.client, self.threads = client, threads
        self.retries, self.resources = retries, resources
        self.ac = as_completed()

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc) -> None:
        pass  # the client is the caller's

    def submit(self, calls: list[Call]) -> None:
        """One graph update for all of ``calls`` (the limit on many tiny shards)."""
        if not calls:
            return
        self.ac.update(self.client.map(
            dask_call, [c.fn for c in calls], [pack(c.kwargs) for c in calls],
            [c.delay for c in calls],
            key=[c.key for c in calls], pure=False, retries=self.retries,
            resources=self.resources))

    def in_flight(self) -> int:
        return self.ac.count()

    def batches(self) -> Iterator[list[Done]]:
        """The calls that finished since the last turn, their futures released."""
        for batch in self.ac.batches():
            values = _gather(self.client, batch)
            done = []
            for fut in batch:
                done.append(_done(fut, values.get(fut.key)))
                fut.release()
            del batch, values
            yield done

    def stop(self, prefix: str, wait: float = STOP_WAIT) -> None:
        """Ctrl-C: cancel this job's tasks and wait (a bounded time) until none of them
        runs any more, so that what they write cannot outlive the clean-up that follows
        (on a separate scheduler, running tasks are not interrupted by the client's exit).
        A second Ctrl-C leaves at once."""
        try:
            self.client.cancel(list(self.ac.futures))
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                # the workers' own view: a cancelled task leaves the scheduler's
                # `processing` at once but runs on in its worker thread until it returns
                running = [k for keys in self.client.run(_running_keys, prefix).values()
                           for k in keys]
                if not running:
                    return
                time.sleep(0.2)
        except KeyboardInterrupt:
            return
        except Exception:  # noqa: BLE001 - a scheduler already gone: nothing runs for us
            return


def _gather(client: Any, futures: list) -> dict:
    """The results of those of ``futures`` that finished, by key, fetched in one call;
    {} when that fails (each future is then asked on its own, see :func:`_done`)."""
    finished = [f for f in futures if f.status == "finished"]
    if not finished:
        return {}
    try:
        values = client.gather(finished)
    except Exception:  # noqa: BLE001 - a result lost meanwhile: per future, as before
        return {}
    return {f.key: v for f, v in zip(finished, values)}


def _done(fut: Any, value: Any) -> Done:
    """A finished future as :class:`Done` (``value``: its result, already gathered), its
    result dicts whole again."""
    try:
        if not (fut.status == "finished" and value is not None):
            value = fut.result()
        return Done(fut.key, _resized(value, expand))
    except Exception as e:  # noqa: BLE001 - KilledWorker, a lost connection, a task raised
        return Done(fut.key, error=e)


def _running_keys(prefix: str, dask_worker=None) -> list[str]:
    """Run on a worker: the keys starting with ``prefix`` that its threads still execute
    (cancelled ones included)."""
    state = dask_worker.state
    return [str(ts.key) for ts in (*state.executing, *state.long_running)
            if str(ts.key).startswith(prefix)]


class LocalExecutor:
    """Calls run by ``threads`` threads of this process (a context manager: leaving it
    lets the calls that run end and starts none of the others)."""

    client = None  # no Dask client (no dashboard to show)

    def __init__(self, threads: int, name: str = "htools"):
        self.threads = max(1, threads)
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=name)
        self.running: dict[Future, str] = {}

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, calls: list[Call]) -> None:
        for c in calls:
            self.running[self.pool.submit(call, c.fn, c.kwargs, c.delay)] = c.key

    def in_flight(self) -> int:
        return len(self.running)

    def batches(self) -> Iterator[list[Done]]:
        while self.running:
            finished, _ = wait(list(self.running), return_when=FIRST_COMPLETED)
            done = []
            for fut in finished:
                key = self.running.pop(fut)
                try:
                    done.append(Done(key, fut.result()))
                except Exception as e:  # noqa: BLE001 - a task function that raised
                    done.append(Done(key, error=e))
            yield done

    def stop(self, prefix: str) -> None:
        """Ctrl-C: nothing new starts; the calls that run end (their shards' partial
        files are removed after)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
