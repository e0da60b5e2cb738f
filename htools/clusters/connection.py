"""Which Dask cluster a job runs on, and what its tasks may ask of the workers.

* ``cluster=None`` starts an embedded ``LocalCluster`` of worker processes (one per
  core, and at least one per GPU that ``nvidia-smi -L`` lists, unless ``workers`` says
  otherwise; one worker per GPU sees only that GPU and declares ``GPU=1``) that lives
  as long as the job;
* ``cluster="host:8786"`` / ``"tcp://host:8786"`` (or ``$HTOOLS_SCHEDULER``) connects
  to a running ``dask scheduler``;
* ``cluster="k8s://NAME?..."`` (:mod:`htools.clusters.kube`) and ``"slurm://PARTITION?..."``
  (:mod:`htools.clusters.slurm`) create or reach clusters on Kubernetes and SLURM;
* ``client=`` (Python API) uses a ``Client`` the caller already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from htools.clusters import forkserver, workerinit
from htools.display import in_notebook
from htools.errors import HtoolsError

if TYPE_CHECKING:
    from htools.options import RunOptions

SCHEDULER_ENV = "HTOOLS_SCHEDULER"


# ---------------------------------------------------------------- clusters --

def cluster_address(cluster: str | None) -> str | None:
    address = cluster or os.environ.get(SCHEDULER_ENV) or None
    if address and "://" not in address:
        address = "tcp://" + address
    return address


@contextlib.contextmanager
def connect(opts: RunOptions) -> Iterator[Any]:
    """A ``distributed.Client`` for the job, closing whatever this call created."""
    if opts.client is not None:
        yield opts.client
        return
    address = cluster_address(opts.cluster)
    if not address:
        forkserver.start()  # its imports beside this process's own
    import dask
    from distributed import Client, LocalCluster

    if address and address.startswith("k8s://"):
        from htools.clusters import kube

        with kube.cluster(address, quiet=opts.quiet) as cluster, Client(cluster) as client:
            _announce(client, opts)
            yield client
        return
    if address and address.startswith("slurm://"):
        from htools.clusters import slurm

        with slurm.cluster(address, quiet=opts.quiet, retries=opts.retries) as cluster, \
                Client(cluster) as client:
            _announce(client, opts)
            yield client
        return
    if address:
        try:
            client = Client(address, timeout=os.environ.get("HTOOLS_CONNECT_TIMEOUT", "20s"))
        except OSError as e:
            raise HtoolsError(f"cannot reach the Dask scheduler at {address}: {e}") from None
        with client:
            _announce(client, opts)
            yield client
        return
    gpus = count_gpus()
    n = opts.workers or max(os.cpu_count() or 1, gpus)  # at least one worker per GPU
    with dask.config.set({"distributed.scheduler.allowed-failures": max(opts.retries, 0),
                          "distributed.worker.daemon": False, **forkserver.config(),
                          **workerinit.monitoring_config()}):
        # the dashboard (bokeh: half a second of this process's CPU before any worker
        # starts) only for a job that shows its link; a quiet job's random port is known
        # to no one
        kw = dict(threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                  scheduler_kwargs={"dashboard": not opts.quiet}, host="127.0.0.1",
                  silence_logs=40, preload=["htools.clusters.workerinit"])
        env = forkserver.worker_env()  # what forked workers would otherwise miss
        if env:
            kw["env"] = env
        quiet_cancelled_closes()
        if gpus:
            cluster = _gpu_cluster(LocalCluster, n, gpus, kw)
        else:
            cluster = LocalCluster(n_workers=n, **kw)
        with cluster, Client(cluster) as client:
            if gpus:
                client.wait_for_workers(n, timeout=120)
            _announce(client, opts)
            yield client


class _CancelledClose(logging.Filter):
    """Drops a record whose exception is a cancelled close: a Ctrl-C as the job ends makes
    a worker exit while the client closes the cluster, and its nanny (in this process)
    logs the close the cluster's own close cancelled, with a traceback, at ERROR, though
    nothing failed."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


def quiet_cancelled_closes() -> None:
    """The embedded cluster's nannies log no cancelled close (:class:`_CancelledClose`);
    once per process."""
    logger = logging.getLogger("distributed.nanny")
    if not any(isinstance(f, _CancelledClose) for f in logger.filters):
        logger.addFilter(_CancelledClose())


def count_gpus() -> int:
    """How many GPUs ``nvidia-smi -L`` lists (lines ``GPU 0: NAME (UUID: ...)``); 0 without
    nvidia-smi or when it fails."""
    import re
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        p = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=15,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return 0
    if p.returncode != 0:
        return 0
    return sum(1 for line in p.stdout.splitlines() if re.match(r"GPU \d+:", line.strip()))


def _gpu_cluster(LocalCluster, n: int, gpus: int, kw: dict):
    """The embedded cluster on a machine with ``gpus`` GPUs: ``n`` worker processes of
    which the first ``min(n, gpus)`` each declare the resource ``GPU=1`` and see only
    their own GPU (``CUDA_VISIBLE_DEVICES``, unless already set), so that a job asking
    ``GPU=1`` runs one task per GPU and other jobs use every worker.

    This is the pinning dask-cuda's ``LocalCUDACluster`` does, written here: dask-cuda
    pins its own releases of dask and distributed and needs NVML (a GPU) to start."""
    import copy

    from distributed.system import MEMORY_LIMIT

    cluster = LocalCluster(n_workers=0, memory_limit=MEMORY_LIMIT // n, **kw)
    try:
        pinned = "CUDA_VISIBLE_DEVICES" in os.environ
        for i in range(n):
            spec = copy.deepcopy(cluster.new_spec)
            if i < gpus:
                spec["options"]["resources"] = {"GPU": 1}
                if not pinned:
                    spec["options"]["env"] = {**spec["options"].get("env", {}),
                                               "CUDA_VISIBLE_DEVICES": str(i)}
            cluster.worker_spec[i] = spec
        cluster.scale(n)
    except BaseException:
        cluster.close()
        raise
    return cluster


def _announce(client: Any, opts: RunOptions) -> None:
    """One stderr line with the workers and the dashboard; not in a notebook, whose
    progress display links the dashboard already."""
    if opts.quiet or in_notebook():
        return
    link = getattr(client, "dashboard_link", None)
    nworkers = len(client.scheduler_info().get("workers", {}))
    msg = f"htools: {nworkers} workers"
    if link:
        msg += f", dashboard at {link}"
    print(msg, file=sys.stderr, flush=True)


RESOURCE_WAIT = 5.0  # seconds a job waits for a worker with the resources it asks


def check_resources(client, resources: dict | None, wait: float = RESOURCE_WAIT) -> None:
    """Refuse to submit (in seconds, not a hang) when no worker of the cluster holds
    ``resources`` (each amount, on one worker): Dask would keep such tasks waiting for
    ever.  Workers still joining get ``wait`` seconds."""
    if not resources:
        return
    deadline = time.monotonic() + wait
    while True:
        workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
        if any(all((w.get("resources") or {}).get(k, 0) >= v for k, v in resources.items())
               for w in workers):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    asked = ", ".join(f"{k}={v}" for k, v in resources.items())
    held: dict[str, int] = {}
    for w in workers:
        r = w.get("resources") or {}
        label = ", ".join(f"{k}={v}" for k, v in sorted(r.items())) or "none"
        held[label] = held.get(label, 0) + 1
    have = "; ".join(f"{c} with {label}" for label, c in sorted(held.items())) or "no workers"
    raise HtoolsError(f"no Dask worker has the resources {asked} that every task asks for "
                      f"(--resources); the cluster's workers: {have}. Start workers with "
                      f"`dask worker ADDRESS --resources \"{asked.replace(', ', ' ')}\"`")
