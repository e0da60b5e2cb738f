"""Batched scripts: ``process_batch(samples)`` with an optional ``prepare_sample(sample)``
in front, run as a bounded pipeline inside one task::

    reader thread --> prepare_sample on N threads --> process_batch --> writer thread
       (in order, at most ~2 batches ahead)         (the task thread)   (bounded queue)

While the model runs on a batch, the next batches are read and prepared and the
previous batch's outputs are written, so a job runs at the rate of its slowest stage,
not at the sum of them (the same split as Ray Data's ``map_batches`` or a PyTorch
``DataLoader`` feeding a model).  Threads hand each other chunks of samples, not
samples (a batch split among the prepare threads), so the Python work around the
stages -- queue hand-offs, futures, wake-ups, all holding the GIL that the prepare
threads need between their decodes -- is paid per chunk.  Memory stays bounded: the
reader stops :data:`AHEAD_BATCHES` batches ahead of the model, the writer takes at
most :data:`WRITE_BATCHES` batches of outputs.

A batch holds up to ``batch_size`` samples of one shard, in shard order (a shard's
last batch is shorter).  ``process_batch`` returns a list with one entry per input: a
sample, ``None`` (drop) or a list of samples, each turned into outputs as with
``process_sample`` (:func:`htools.usercode.apply.outputs_of`).  A batch that raises
runs again one sample at a time, so only the samples that fail count against
``--max-errors``, each naming its key.  A result that is not such a list (another
type, a generator, the wrong length) fails the shard with one line naming
``process_batch``, the shard and the lengths.  ``prepare_sample`` returning ``None``
drops the sample; raising is that sample's error.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from htools.errors import HtoolsError, ScriptError, hide_credentials
from htools.summary import ShardResult
from htools.usercode.apply import outputs_of, same_key_output
from htools.usercode.script import user_traceback

DEFAULT_BATCH_SIZE = 32
AHEAD_BATCHES = 2  # batches the reader and prepare threads work ahead of the model
WRITE_BATCHES = 2  # batches of outputs waiting for the writer thread at most
_POLL = 0.1  # seconds a blocked thread waits before looking whether the task stopped
_END = object()
HAND_ON = 0.001  # seconds the reader or writer thread holds the GIL at most while not needed


class _Pause:
    """Lets go of the GIL, at most once every :data:`HAND_ON` seconds, while the thread
    is not what the task waits for.

    The reader and writer threads run Python (tar parsing, writing) for milliseconds at
    a time, letting go of the GIL only at their next read or write call.  A thread
    coming back from code that ran without the GIL -- the model (a sleep, a GPU call,
    BLAS) or a prepare thread's decode -- waits for them that long (up to the
    interpreter's 5 ms switch interval), every batch or every sample.  While the
    reader is ahead (a chunk waits in its queue) or the writer is not holding the
    model back (its queue has room), a ``time.sleep(0)`` hands the GIL on: it keeps
    the thread away long enough (about 50-90 us) for a waiting thread to wake and take
    it, where a bare release would take it straight back."""

    __slots__ = ("last", "q", "reader")

    def __init__(self, q: queue.Queue, reader: bool) -> None:
        self.last = time.perf_counter()
        self.q = q
        self.reader = reader

    def __call__(self) -> None:
        now = time.perf_counter()
        if now - self.last >= HAND_ON:
            if (self.q.qsize() > 0) if self.reader else not self.q.full():
                time.sleep(0)
            self.last = time.perf_counter()


@dataclass(frozen=True)
class BatchSpec:
    """How a ``process_batch`` script runs: samples per batch, prepare threads per task."""

    batch_size: int = DEFAULT_BATCH_SIZE
    prepare_threads: int = 1

    @classmethod
    def of(cls, batch_size: int | None, prepare_threads: int | None) -> BatchSpec:
        """Checked values (None: the default); a bad one is one clear line."""
        size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        threads = 1 if prepare_threads is None else prepare_threads
        for name, value in (("--batch-size", size), ("--prepare-threads", threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HtoolsError(f"{name} {value!r}: give a whole number of 1 or more")
        return cls(size, threads)

    def chunks(self, prepared: bool) -> tuple[int, int]:
        """Samples a hand-off from the reader carries, and hand-offs the look-ahead queue
        holds: about :data:`AHEAD_BATCHES` batches in flight, counting the one the reader
        holds.  With ``prepare_sample`` a batch is split among the prepare threads, so
        that they all work on the next batch while the model runs."""
        chunk = -(-self.batch_size // self.prepare_threads) if prepared else self.batch_size
        return chunk, max(1, -(-AHEAD_BATCHES * self.batch_size // chunk) - 1)


@dataclass
class _Item:
    """One input sample on its way through the pipeline."""

    key: str
    aliased: bool  # the script saw ``key`` as a copy of ``__key__``
    value: Any = None  # what prepare_sample returned (the sample itself without one)
    error: BaseException | None = None  # prepare_sample raised


class _Stop(Exception):
    """The task stopped (an error elsewhere): a helper thread ends quietly."""


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=_POLL)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event):
    while True:
        try:
            return q.get(timeout=_POLL)
        except queue.Empty:
            if stop.is_set():
                raise _Stop from None


def _prepared(prepare: Callable | None, samples: list[dict]) -> list[_Item]:
    """A chunk of samples as the script sees them (``key`` beside ``__key__``), each
    through ``prepare_sample`` if there is one: one hand-off between threads a chunk."""
    items = []
    for sample in samples:
        key = sample["__key__"]
        aliased = "key" not in sample
        if aliased:
            sample["key"] = key
        item = _Item(key, aliased, sample)
        if prepare is not None:
            try:
                item.value = prepare(sample)
            except Exception as e:  # noqa: BLE001 -- the user's prepare_sample: that sample's error
                item.error = e
        items.append(item)
    return items


def _feed(samples: Iterator[dict], prepare: Callable | None, pool: ThreadPoolExecutor | None,
          chunk: int, out: queue.Queue, stop: threading.Event, errors: list) -> None:
    """The reader thread: every sample, in chunks of ``chunk`` prepared on the pool
    (futures in order), into ``out``."""
    pause = _Pause(out, reader=True)
    try:
        held: list[dict] = []
        for sample in samples:
            held.append(sample)
            pause()
            if len(held) == chunk:
                _put(out, _hand_off(prepare, pool, held), stop)
                held = []
        if held:
            _put(out, _hand_off(prepare, pool, held), stop)
        _put(out, _END, stop)
    except _Stop:
        pass
    except BaseException as e:  # noqa: BLE001 -- reading failed: raised on the task thread
        errors.append(e)
        stop.set()


def _hand_off(prepare: Callable | None, pool: ThreadPoolExecutor | None,
              samples: list[dict]) -> list[_Item] | Future:
    return _prepared(prepare, samples) if pool is None else pool.submit(_prepared, prepare,
                                                                         samples)


def _drain(q: queue.Queue, write: Callable[[dict], Any], stop: threading.Event,
           errors: list) -> None:
    """The writer thread: write each batch of outputs, in order, until the end mark."""
    pause = _Pause(q, reader=False)
    try:
        while True:
            outs = _get(q, stop)
            if outs is _END:
                return
            for sample in outs:
                if stop.is_set():
                    return
                write(sample)
                pause()
    except _Stop:
        pass
    except BaseException as e:  # noqa: BLE001 -- writing failed: raised on the task thread
        errors.append(e)
        stop.set()


def run_batches(samples: Iterator[dict], script: Any, result: ShardResult, url: str,
                write: Callable[[dict], Any], spec: BatchSpec,
                check: Callable[[list[dict]], list[dict]] | None = None) -> None:
    """Map ``samples`` (one shard's, read lazily) through ``script.process_batch`` (and
    its ``prepare_sample``, if any), handing each output sample to ``write`` on a
    thread of its own.  ``check`` sees each batch's outputs before they are queued
    (the mapper refuses repeated keys there).  Counts go into ``result``; an error
    (reading, writing, a bad result, the error budget spent) is raised here once
    every thread of the pipeline has stopped."""
    prepare = getattr(script, "prepare_sample", None)
    fn = script.process_batch
    stop = threading.Event()
    errors: list[BaseException] = []
    chunk, chunks = spec.chunks(prepare is not None)
    ahead: queue.Queue = queue.Queue(maxsize=chunks)
    written: queue.Queue = queue.Queue(maxsize=WRITE_BATCHES)
    pool = ThreadPoolExecutor(spec.prepare_threads, thread_name_prefix="htools-prepare") \
        if prepare is not None else None
    reader = threading.Thread(target=_feed, name="htools-read", daemon=True,
                              args=(samples, prepare, pool, chunk, ahead, stop, errors))
    writer = threading.Thread(target=_drain, args=(written, write, stop, errors),
                              name="htools-write", daemon=True)
    reader.start()
    writer.start()
    try:
        for batch in _batches(ahead, spec.batch_size, stop, result, url):
            outs = _apply(fn, batch, result, url)
            if check is not None:
                outs = check(outs)
            if outs:
                _put(written, outs, stop)
        _put(written, _END, stop)
        writer.join()
    except _Stop:
        pass
    finally:
        stop.set()  # helper threads still running (after an error) end at their next step
        writer.join()
        reader.join()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if errors:
        raise errors[0]


def _batches(ahead: queue.Queue, size: int, stop: threading.Event, result: ShardResult,
             url: str) -> Iterator[list[_Item]]:
    """Batches of up to ``size`` prepared samples, in order; a sample that
    ``prepare_sample`` dropped or failed on is counted here and left out."""
    batch: list[_Item] = []
    while True:
        got = _get(ahead, stop)
        if got is _END:
            break
        items = got.result() if isinstance(got, Future) else got
        for item in items:
            result.samples_read += 1
            if item.error is not None:
                result.sample_error(url, item.key, "prepare_sample raised", item.error,
                                    user_traceback(item.error))
            elif item.value is None:
                result.samples_dropped += 1
            else:
                batch.append(item)
                if len(batch) == size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def _apply(fn: Callable, batch: list[_Item], result: ShardResult, url: str) -> list[dict]:
    """The output samples of one batch; a batch that raises runs again sample by sample."""
    try:
        got = fn([item.value for item in batch])
    except Exception as e:  # noqa: BLE001 -- the user's model: find the failing samples
        if getattr(e, "fatal", False):
            raise
        return [out for item in batch for out in _one(fn, item, result, url)]
    entries = _entries(got, len(batch), url, batch[0].key)
    outs: list[dict] = []
    for item, entry in zip(batch, entries):
        outs.extend(_outputs(entry, item, result, url))
    return outs


def _one(fn: Callable, item: _Item, result: ShardResult, url: str) -> list[dict]:
    """``item`` alone, as a batch of one: its outputs, or its error counted."""
    try:
        got = fn([item.value])
    except Exception as e:  # noqa: BLE001 -- the user's model raised on this sample
        if getattr(e, "fatal", False):
            raise
        result.sample_error(url, item.key, "process_batch raised", e, user_traceback(e))
        return []
    return _outputs(_entries(got, 1, url, item.key)[0], item, result, url)


def _entries(got: Any, n: int, url: str, first: str) -> list:
    """``process_batch``'s result checked: a list (or tuple) of one entry per sample."""
    where = f"{hide_credentials(url)}: process_batch"
    if type(got) not in (list, tuple):
        kind = "a generator" if hasattr(got, "__next__") else type(got).__name__
        raise ScriptError(f"{where} returned {kind} for the batch of {n} samples from key "
                          f"{first!r}; return a list with one entry per input sample (a "
                          "sample, None or a list of samples)")
    if len(got) != n:
        raise ScriptError(f"{where} returned a list of {len(got)} entries for a batch of {n} "
                          f"samples (from key {first!r}); return one entry per input sample")
    return list(got)


def _outputs(entry: Any, item: _Item, result: ShardResult, url: str) -> list[dict]:
    """One entry of a batch's result as output samples, counted as mapped or dropped."""
    out = same_key_output(entry, item.key, item.aliased)
    if out is not None:
        result.samples_mapped += 1
        return [out]
    try:
        outs = outputs_of(entry, item.key, item.aliased, what="process_batch")
    except ScriptError as e:
        raise ScriptError(f"{hide_credentials(url)}: key {item.key!r}: {e}") from None
    if outs:
        result.samples_mapped += 1
    else:
        result.samples_dropped += 1
    return outs
