"""Preloaded in the embedded cluster's worker processes (``dask_setup``).

A terminal's Ctrl-C sends SIGINT to the whole process group: the CLI and the worker
processes it spawned.  A worker then exits quietly (SystemExit, status 130) instead of
printing a KeyboardInterrupt traceback from each of its threads; as before, its task
threads (not daemons) finish or abort their writes before the process ends, so no
temp object is left behind.  The client handles the Ctrl-C for the job (cancels its
tasks, removes scratch and partial outputs, aborts unfinished uploads, closes the
cluster)."""

from __future__ import annotations

import signal
import threading


def _quit(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def dask_setup(worker=None) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _quit)
