"""htupload of local files starts its workers while it scans them: the start of a
``LocalCluster`` (2-3 s on 2 cores: worker processes import Dask and htools) and the
scan of a large folder take about as long, and neither needs the other.

An upload of local files into a local folder on the embedded cluster (no ``--cluster``,
``$HTOOLS_SCHEDULER``, ``client=`` or ``--resources``) runs without Dask: its tasks go to
processes forked from the fork server (:class:`~htools.runtime.forkpool.ForkPool`), which
start in a fraction of the cluster's time (:func:`workers_meanwhile`).
``HTOOLS_UPLOAD_EXECUTOR=dask`` runs it on the embedded Dask cluster all the same."""

from __future__ import annotations

import contextvars
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from htools import storage
from htools.clusters import forkserver
from htools.clusters.info import workers_elsewhere
from htools.options import RunOptions
from htools.runtime import engine
from htools.runtime.forkpool import ForkPool

EXECUTOR_ENV = "HTOOLS_UPLOAD_EXECUTOR"  # "dask": a local upload on Dask's embedded cluster


def forked(opts: RunOptions, first_output: str) -> bool:
    """Whether the job's tasks run in a :class:`ForkPool`: local output, the embedded
    cluster (no client, scheduler or resources asked), the fork server available, not a
    dry run, and not ``$HTOOLS_UPLOAD_EXECUTOR=dask``."""
    return os.environ.get(EXECUTOR_ENV, "").strip().lower() != "dask" and not opts.dry_run \
        and opts.client is None and not workers_elsewhere(opts) and not opts.resources \
        and storage.protocol(first_output) == "file" and forkserver.method() == "forkserver"


@contextmanager
def workers_meanwhile(opts: RunOptions, first_output: str
                      ) -> Iterator[Callable[[], tuple[RunOptions, ForkPool | None]]]:
    """The job's workers started while the block runs: a :class:`ForkPool` (see
    :func:`forked`), else the embedded cluster (:func:`cluster_meanwhile`).  The block gets
    a function that waits for them and returns ``opts`` (with the cluster's client) and
    the pool (None on Dask)."""
    if not forked(opts, first_output):
        with cluster_meanwhile(opts, first_output) as ready:
            yield lambda: (ready(), None)
        return
    pool = ForkPool(opts.workers or os.cpu_count() or 1, retries=opts.retries,
                    quiet=opts.quiet)
    try:
        with _started_meanwhile(pool.start, "htupload-pool-start") as ready:
            yield lambda: (opts, ready())
    finally:
        pool.close()


@contextmanager
def cluster_meanwhile(opts: RunOptions, first_output: str
                      ) -> Iterator[Callable[[], RunOptions]]:
    """Start the job's embedded cluster on a thread while the block runs; the block gets a
    function that waits for it and returns ``opts`` with its client.  The cluster is
    closed on leaving the block (after its start has finished, should the block fail
    first).  A dry run, ``--resume`` (which may have nothing left to run), a given client,
    a scheduler elsewhere, and a job whose ``first_output`` exists (refused before any
    task runs, unless ``--overwrite``) start nothing early: the function returns ``opts``."""
    if opts.dry_run or opts.resume or opts.client is not None or workers_elsewhere(opts) \
            or (not opts.overwrite and storage.exists(first_output, opts.storage_options)):
        yield lambda: opts
        return
    # the Client marks itself current in a context: entered and left in this one
    context = contextvars.copy_context()
    cm = engine.cluster(opts)
    entered: list[bool] = []

    def start() -> Any:
        client = context.run(cm.__enter__)
        entered.append(True)
        return client

    try:
        with _started_meanwhile(start, "htupload-cluster-start") as ready:
            yield lambda: opts.with_(client=ready())
    finally:  # the start finishes (a second or two) before the cluster can be closed
        if entered:
            context.run(cm.__exit__, *sys.exc_info())


@contextmanager
def _started_meanwhile(start: Callable[[], Any], name: str) -> Iterator[Callable[[], Any]]:
    """``start()`` run on a thread while the block runs; the block gets a function that
    waits for it and returns what it returned (or raises what it raised).  Leaving the
    block waits for the thread first."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = start()
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()

    def ready() -> Any:
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    try:
        yield ready
    finally:
        thread.join()
