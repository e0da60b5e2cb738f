"""What a job needs to know of the cluster it runs on, answered in one place:
:class:`ClusterInfo` (worker threads, the smallest worker's memory, whether the workers
are this machine's own processes) and :func:`workers_elsewhere` (before any client
exists: may the workers be on other machines?)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from htools.clusters.connection import cluster_address

if TYPE_CHECKING:
    from htools.options import RunOptions


@dataclass(frozen=True)
class ClusterInfo:
    """A running cluster as a job sizes itself to it."""

    threads: int = 1  # worker threads over every worker (at least 1)
    memory: int | None = None  # the smallest worker memory limit, bytes (None: no limits)
    embedded: bool = False  # a LocalCluster of this machine: its workers see our files

    @classmethod
    def of(cls, client: Any) -> ClusterInfo:
        """Asked of ``client``'s scheduler (1 thread, no memory limit when it cannot say)."""
        try:
            workers = list(client.scheduler_info().get("workers", {}).values())
        except Exception:  # noqa: BLE001 - a scheduler that cannot say: assume one thread
            workers = []
        threads = sum(w.get("nthreads", 1) for w in workers)
        limits = [w.get("memory_limit") or 0 for w in workers]
        limits = [m for m in limits if m]
        return cls(threads=max(threads, 1), memory=min(limits) if limits else None,
                   embedded=is_embedded(client))


def is_embedded(client: Any) -> bool:
    """Whether ``client``'s workers are processes (or threads) of a ``LocalCluster`` on this
    machine, so that they see this machine's files."""
    try:
        from distributed import LocalCluster
    except ImportError:  # pragma: no cover - distributed is a dependency
        return False
    return isinstance(getattr(client, "cluster", None), LocalCluster)


def workers_elsewhere(opts: RunOptions) -> bool:
    """Whether a job's workers may be on other machines: a given client that is not
    embedded, or a scheduler address (``-c``, ``$HTOOLS_SCHEDULER``, k8s://, slurm://)."""
    if opts.client is not None:
        return not is_embedded(opts.client)
    return cluster_address(opts.cluster) is not None
