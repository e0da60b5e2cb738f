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
and :mod:`htools.engine` reports a shard whose workers kept dying.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import HtoolsError
from .summary import ShardResult

BUG_HINT = "an htools bug; its traceback is in the --summary JSON"


@contextmanager
def shard_task(input: str | list[str], output: str = "", *,
               max_errors: int = 0) -> Iterator[ShardResult]:
    """A fresh :class:`ShardResult` for one task; failures end up in it, not raised."""
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
