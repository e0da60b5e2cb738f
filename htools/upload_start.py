"""htupload of local files starts its embedded cluster while it scans them: the start of a
``LocalCluster`` (2-3 s on 2 cores: worker processes import Dask and htools) and the
scan of a large folder take about as long, and neither needs the other."""

from __future__ import annotations

import contextvars
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from htools import storage
from htools.clusters.info import workers_elsewhere
from htools.options import RunOptions
from htools.runtime import engine


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
    box: dict[str, Any] = {}
    # the Client marks itself current in a context: entered and left in this one
    context = contextvars.copy_context()

    def start() -> None:
        try:
            cm = engine.cluster(opts)
            box["client"] = context.run(cm.__enter__)
            box["cm"] = cm
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=start, name="htupload-cluster-start", daemon=True)
    thread.start()

    def ready() -> RunOptions:
        thread.join()
        if "error" in box:
            raise box["error"]
        return opts.with_(client=box["client"])

    try:
        yield ready
    finally:  # the start finishes (a second or two) before the cluster can be closed
        thread.join()
        if "cm" in box:
            context.run(box["cm"].__exit__, *sys.exc_info())
