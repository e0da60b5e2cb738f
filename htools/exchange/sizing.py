"""Sizing an exchange to where it runs: the worker threads and a task's memory budget
(:func:`resources`, read from the workers; :func:`dry_run_resources` for ``--dry-run``),
the default scratch, the mean input shard size, and the scratch-space check."""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from htools import shards, storage
from htools.clusters import connection as clusters
from htools.clusters.info import ClusterInfo, is_embedded
from htools.errors import HtoolsError, hide_credentials
from htools.exchange.plan import ExchangePlan
from htools.options import RunOptions
from htools.runtime import engine
from htools.storage.local import local_path, nearest_existing
from htools.summary import format_bytes

SIZE_PROBES = 8  # input shards whose size is asked for to group small inputs
NO_LIMIT_MEMORY = 512 << 20  # the budget when workers declare no memory limit
MIN_MEMORY = 16 << 20


@dataclass(frozen=True)
class Resources:
    """What an exchange is planned for: worker threads, a task's memory budget, and
    where these numbers come from (shown by ``--dry-run``)."""

    threads: int
    memory: int
    source: str


def resources(client, memory: int | None) -> Resources:
    """The workers of ``client``: their threads, and ``memory`` or a quarter of the
    smallest worker memory limit (512 MiB when they have none)."""
    threads, limits = _workers(client)
    return Resources(threads, memory or _budget(limits), "read from the cluster's workers")


def dry_run_resources(opts: RunOptions, memory: int | None) -> Resources:
    """``--dry-run``'s sizing: the run's own (:func:`resources`) when a client is at hand
    or a scheduler address is given; else estimated, since a dry run starts no cluster:
    the embedded cluster it would start (``--workers`` or one per core, 1 thread each,
    this machine's memory shared among them), or for k8s:// and slurm:// the same
    arithmetic on ``--workers``."""
    address = clusters.cluster_address(opts.cluster)
    if opts.client is not None or (address and not address.startswith(("k8s://", "slurm://"))):
        with engine.cluster(opts.with_(quiet=True)) as client:
            return resources(client, memory)
    from distributed.system import MEMORY_LIMIT

    n = opts.workers or os.cpu_count() or 1
    where = "the embedded cluster" if address is None else address.split("?")[0]
    return Resources(n, memory or _budget([MEMORY_LIMIT // n]),
                     f"estimated for {where}: {n} workers of 1 thread sharing "
                     f"{human_size(MEMORY_LIMIT)}; the run reads them from its workers")


def _workers(client) -> tuple[int, list[int]]:
    """Worker threads in all, and the smallest worker's memory limit (none: no limit)."""
    info = ClusterInfo.of(client)
    return info.threads, [info.memory] if info.memory else []


def _budget(limits: list[int]) -> int:
    limits = [m for m in limits if m]
    return max(MIN_MEMORY, min(limits) // 4) if limits else NO_LIMIT_MEMORY


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


def default_scratch(opts: RunOptions, outset: shards.OutputSet) -> str:
    """A local temp dir for the embedded cluster; else ``_htools_tmp/`` beside the outputs."""
    if opts.client is not None and clusters.cluster_address(opts.cluster) is None \
            and is_embedded(opts.client):
        return tempfile.mkdtemp(prefix="htools-scratch-") + "/"
    return outset.folder() + "_htools_tmp/"


def outputs_beside(scratch_root: str, output: str) -> bool:
    """Whether a local ``output`` lands on the file system of a local scratch."""
    if storage.protocol(scratch_root) != "file" or storage.protocol(output) != "file":
        return False
    try:
        folder = nearest_existing(local_path(scratch_root))
        return os.stat(folder).st_dev == \
            os.stat(nearest_existing(os.path.dirname(local_path(output)) or ".")).st_dev
    except OSError:
        return False


def check_scratch_space(scratch_root: str, plan: ExchangePlan, shard_bytes: float | None,
                        tool: str, beside: bool) -> None:
    """Refuse, before stage 1, a local scratch with less free space than the job needs.

    Runs hold every sample as the tar bytes it will be written as: about the input's
    bytes (more for compressed inputs).  Scratch holds ``plan.scratch_copies`` copies of
    the data at once: one, plus a merge level's output while that level runs (a level
    deletes the runs it merged only once it is done), or the dedup pass's sorted runs
    beside the runs by content, or outputs on the same file system that grow while the
    last runs are still there."""
    if storage.protocol(scratch_root) != "file" or not shard_bytes:
        return
    try:
        free = shutil.disk_usage(nearest_existing(local_path(scratch_root))).free
    except OSError:
        return
    data = int(shard_bytes * plan.inputs)
    copies = plan.scratch_copies
    if free >= copies * data:
        return
    if plan.first_pass_buckets:
        why = ("the dedup pass writes the sorted runs while the runs by content are "
               "still there: 2 copies")
    elif plan.levels:
        why = (f"with {len(plan.levels)} merge level(s) (about {plan.runs} runs, fan-in "
               f"{plan.fan_in}) it holds one copy of the data plus a level's output: 2 copies")
    elif beside:
        why = ("the outputs are on the same file system and grow while the runs are "
               "still there: 2 copies")
    else:
        why = "it holds every sample once as sorted runs: 1 copy"
    raise HtoolsError(
        f"scratch {hide_credentials(scratch_root)} has {human_size(free)} free; this "
        f"{tool} needs about {human_size(copies * data)} there ({plan.inputs} input "
        f"shards of about {human_size(shard_bytes)} each, {human_size(data)} in all, more if "
        f"they are compressed; {why}): free space or give --scratch on a larger disk")
