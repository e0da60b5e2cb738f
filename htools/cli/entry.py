"""The console scripts' entry points: the fork server of the embedded cluster started
first, then the command's module imported and run.

A command's module imports htools and click (~0.3 s) before its ``main`` runs, and the
embedded cluster's fork server (:mod:`htools.clusters.forkserver`), which imports Dask
and the command's module once for every worker, used to start only when the job
connected; the cluster then waited for its imports (~0.2 s).  Started here, its imports
run on another core beside this process's own.  Not for a run that needs no embedded
cluster: a scheduler address (``-c``/``--cluster``, ``$HTOOLS_SCHEDULER``), ``--dry-run``,
``--help``, ``--version`` (a flag missed here only costs the server's start in vain: the
command ends it at exit).  htupload decides later between its own forked workers and
Dask (:mod:`htools.runtime.forkpool`): it starts as before.
"""

from __future__ import annotations

import importlib
import os
import sys

NO_CLUSTER_FLAGS = ("-h", "--help", "--version", "--dry-run")


def wants_embedded_cluster(args: list[str], environ=os.environ) -> bool:
    """Whether a command run with ``args`` will start the embedded cluster, as far as its
    flags tell before they are parsed."""
    if environ.get("HTOOLS_SCHEDULER"):
        return False
    for arg in args:
        if arg == "--":
            break
        if arg in NO_CLUSTER_FLAGS or arg.startswith("--cluster") or \
                (arg.startswith("-c") and not arg.startswith("--")):
            return False
    return True


def _run(module: str) -> None:
    if wants_embedded_cluster(sys.argv[1:]):
        from htools.clusters import forkserver

        forkserver.for_command(module)
        forkserver.start()
    importlib.import_module(module).main()


def htmapper() -> None:
    _run("htools.cli.mapper")


def htextract() -> None:
    _run("htools.cli.extract")


def htshuffle() -> None:
    _run("htools.cli.shuffle")


def htsort() -> None:
    _run("htools.cli.sort")
