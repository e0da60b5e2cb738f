"""htshuffle / htsort on a fresh LocalCluster for benchmarks/bench_exchange.py and
suite.py: seconds, the workers' peak memory growth, CPU seconds."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time

from htools.runtime.memory import peak_rss


@contextlib.contextmanager
def cluster(workers: int = 2):
    """A fresh LocalCluster (so each worker's lifetime peak RSS is this job's)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=40) as c, Client(c) as client:
        client.run(_warm)  # imports done before any clock starts, as copy_once's warm-up
        yield client


def _warm() -> None:
    import htools.exchange  # noqa: F401
    import htools.mapper  # noqa: F401


def rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def worker_start(client) -> int:
    return min(client.run(rss_now).values())


def worker_growth(client, start: int) -> int:
    return max(client.run(peak_rss).values()) - start


def summary_growth(summary) -> int:
    """The job summary's own figure (the tasks' :func:`htools.runtime.memory.peak_rss`)."""
    return summary.extra.get("peak_rss", 0) - summary.extra.get("rss_start_min", 0)


def measured(dask, fn, /, *args, **kw):
    """Seconds, worker peak-memory growth and result of ``fn`` on a fresh cluster."""
    start = worker_start(dask)
    os.sync()  # no writeback of an earlier run's outputs under way (bench_mapper.settled)
    t0 = time.perf_counter()
    result = fn(*args, **kw)
    elapsed = time.perf_counter() - t0
    return elapsed, worker_growth(dask, start), result


# -------------------------------------------------------------- htools side --

def htools_job(kind: str, inputs: list[str], out: str, memory: int | None = None,
               workers: int = 2) -> tuple[float, int]:
    """Seconds and peak worker memory growth of one htshuffle / htsort on a fresh cluster."""
    elapsed, growth, _cpu = htools_job_cpu(kind, inputs, out, memory, workers)
    return elapsed, growth


def htools_job_cpu(kind: str, inputs: list[str], out: str, memory: int | None = None,
                   workers: int = 2) -> tuple[float, int, float]:
    """:func:`htools_job`, and the CPU seconds its workers' processes spent on it."""
    import htools

    fn = htools.shuffle if kind == "shuffle" else htools.sort
    pattern = os.path.join(out, f"out-@{len(inputs):04d}.tar")
    with cluster(workers) as client:
        cpu0 = sum(client.run(_cpu_now).values())
        elapsed, growth, summary = measured(client, fn, inputs, pattern, client=client,
                                            quiet=True, overwrite=True, memory=memory)
        cpu = sum(client.run(_cpu_now).values()) - cpu0
    if not summary.ok:
        sys.exit(f"ht{kind} failed: {summary.failures[:1]}")
    shutil.rmtree(out, ignore_errors=True)
    return elapsed, growth, cpu


def _cpu_now() -> float:
    """This process's CPU seconds (all its threads, user and system)."""
    return time.process_time()
