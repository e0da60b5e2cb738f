"""The one frame every task function runs in.

A task function (top-level, plain arguments, run on a worker) does its work inside
``with shard_task(input, output, max_errors=...) as result:`` and returns
``result.as_dict()``.  The frame times the work and turns what goes wrong into a
failed shard instead of an exception that Dask would ship back without context:

* an :class:`~htools.errors.HtoolsError` (bad data, storage, the user's script, the
  ``--max-errors`` budget spent, see :meth:`ShardResult.sample_error`) becomes the
  shard's one-line error, marked ``transient`` when the same run may succeed later
  (a storage fault whose own retries ran out, a commit that failed mid-way): the engine
  runs such a shard again from its input;
* any other exception is a bug in htools: the shard fails with a line that says so,
  and its traceback is kept in the result (the ``--summary`` JSON shows it).

A worker that dies mid-task is not the frame's business: Dask retries the task,
and :mod:`htools.runtime.engine` reports a shard whose workers kept dying.

The frame also undoes, once per process, Dask's default malloc setting for worker
processes (:func:`tune_malloc`), which costs a task a page fault for most samples.
"""

from __future__ import annotations

import functools
import os
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from htools.errors import HtoolsError
from htools.summary import ShardResult

BUG_HINT = "an htools bug; its traceback is in the --summary JSON"


@contextmanager
def shard_task(input: str | list[str], output: str = "", *,
               max_errors: int = 0) -> Iterator[ShardResult]:
    """A fresh :class:`ShardResult` for one task; failures end up in it, not raised."""
    if not _tuned:
        tune_malloc()
    result = ShardResult(input=input, output=output, max_errors=max_errors)
    t0 = time.perf_counter()
    try:
        yield result
    except HtoolsError as e:
        result.fail(str(e), transient=bool(getattr(e, "transient", False)),
                    fatal=bool(getattr(e, "fatal", False)))
    except Exception as e:  # noqa: BLE001 - a bug: keep it, with its traceback
        result.fail(f"{type(e).__name__}: {e} ({BUG_HINT})", traceback.format_exc())
    result.seconds = round(time.perf_counter() - t0, 4)


# glibc malloc thresholds for a task's process (see tune_malloc)
MMAP_THRESHOLD = 4 << 20  # blocks from this size on get their own mmap
TRIM_THRESHOLD = 8 << 20  # free memory kept at the top of the heap (2 x the above, as glibc)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_tuned = False  # tune_malloc ran in this process
_applied = False  # and changed the thresholds


def tune_malloc() -> bool:
    """Raise glibc's malloc thresholds in a process started with a small
    ``MALLOC_TRIM_THRESHOLD_`` (Dask's nannies start every worker with 65536).

    With that setting glibc gives the top of the heap back to the system as soon as
    64 KiB of it is free, and keeps blocks of 128 KiB or more on their own mmap
    (the environment variable also turns off glibc's own adjustment of that limit):
    a task that reads and writes samples of a few KiB or more then page-faults for
    nearly every sample it allocates and frees (measured: 140,000 faults and 25 % more
    CPU for 0.3 GB of 16 KiB samples, none without the setting).  Here the process
    keeps up to :data:`TRIM_THRESHOLD` of free heap and mmaps only blocks of
    :data:`MMAP_THRESHOLD` or more: Dask's aim, a worker's freed memory going back to
    the system, still holds beyond those few MiB.  Nothing changes in a process
    without the variable, off glibc, or with ``HTOOLS_MALLOC_TUNE=0``.  Once per
    process; returns whether the thresholds were changed."""
    global _tuned, _applied
    _tuned = True
    try:
        trim = int(os.environ.get("MALLOC_TRIM_THRESHOLD_", ""))
    except ValueError:
        return False
    if trim >= TRIM_THRESHOLD or os.environ.get("HTOOLS_MALLOC_TUNE", "1") == "0":
        return False
    set_option = mallopt()
    if set_option is None:
        return False
    _applied = bool(set_option(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(set_option(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied


def malloc_tuned() -> bool:
    """Whether :func:`tune_malloc` set this process's thresholds (not where the user's
    ``MALLOC_TRIM_THRESHOLD_``, ``HTOOLS_MALLOC_TUNE=0`` or the C library left them)."""
    return _applied


@functools.cache
def mallopt():
    """The C library's ``mallopt(param, value)`` (glibc; musl's does nothing), or None."""
    try:
        import ctypes

        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
