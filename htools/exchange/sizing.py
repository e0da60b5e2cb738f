"""Sizing an exchange to where it runs: the default scratch and memory budget, the
worker threads, the mean input shard size, and the disk-space arithmetic of a local
scratch."""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

from htools import shards, storage
from htools.clusters import connection as clusters
from htools.errors import HtoolsError
from htools.options import RunOptions
from htools.storage.local import local_path, nearest_existing
from htools.summary import format_bytes

SIZE_PROBES = 8  # input shards whose size is asked for to group small inputs


def shard_size(inputs: list[str], opts: RunOptions) -> float | None:
    """The mean size of a few input shards (None when it cannot be known)."""
    step = max(1, len(inputs) // SIZE_PROBES)
    probes = inputs[::step][:SIZE_PROBES]
    if any(storage.is_stream(u) for u in probes):
        return None
    try:
        with ThreadPoolExecutor(max_workers=len(probes)) as pool:
            sizes = list(pool.map(lambda u: storage.size(u, opts.storage_options), probes))
    except HtoolsError:
        return None  # a missing input is reported by its task
    return sum(sizes) / len(sizes)


def human_size(n: float) -> str:
    """Bytes exactly and for people: ``123456789 bytes (123.5 MB)``."""
    n = int(n)
    return f"{n} bytes ({format_bytes(n)})" if n >= 1000 else f"{n} bytes"


def same_file_system(folder: str, output: str) -> bool:
    """Whether a local ``output`` lands on the file system of ``folder``."""
    if storage.protocol(output) != "file":
        return False
    try:
        return os.stat(folder).st_dev == \
            os.stat(nearest_existing(os.path.dirname(local_path(output)) or ".")).st_dev
    except OSError:
        return False


def worker_threads(client) -> int:
    try:
        return max(1, sum(w.get("nthreads", 1)
                          for w in client.scheduler_info().get("workers", {}).values()))
    except Exception:  # noqa: BLE001
        return 1


def default_scratch(opts: RunOptions, outset: shards.OutputSet) -> str:
    """A local temp dir for the embedded cluster; else ``_htools_tmp/`` beside the outputs."""
    if opts.client is not None and clusters.cluster_address(opts.cluster) is None \
            and is_local_cluster(opts.client):
        return tempfile.mkdtemp(prefix="htools-scratch-") + "/"
    return outset.folder() + "_htools_tmp/"


def is_local_cluster(client) -> bool:
    cluster = getattr(client, "cluster", None)
    return cluster is not None and type(cluster).__name__ == "LocalCluster"


def default_memory(client) -> int:
    """A quarter of the smallest worker memory limit (512 MiB when workers have none)."""
    try:
        limits = [w.get("memory_limit") or 0
                  for w in client.scheduler_info().get("workers", {}).values()]
    except Exception:  # noqa: BLE001
        limits = []
    limits = [m for m in limits if m]
    if not limits:
        return 512 << 20
    return max(16 << 20, min(limits) // 4)
