"""The baselines of benchmarks/bench_exchange.py: one copy of every shard (htools' codec,
or webdataset's), dask P2P shuffle / sort_values, a webdataset shuffle loop, GNU sort
of the keys (each side's seconds and memory as bench_exchange.py's docstring says)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import time

from exchange_data import copy_shard, samples_of
from exchange_jobs import cluster, measured, rss_now

from htools.runtime.memory import peak_rss


def _copy_one(args: tuple[str, str]) -> float:
    """Copy one shard with htools' codec; the CPU seconds it took."""
    cpu0 = time.process_time()
    copy_shard(*args)
    return time.process_time() - cpu0


def copy_once(inputs: list[str], out: str, procs: int = 2, copy_one=_copy_one) -> float:
    """Read + write every shard once with htools' codec (or ``copy_one``), ``procs``
    processes."""
    return copy_cpu(inputs, out, procs, copy_one)[0]


def copy_cpu(inputs: list[str], out: str, procs: int = 2, copy_one=_copy_one
             ) -> tuple[float, float]:
    """:func:`copy_once`'s seconds, and the CPU seconds its processes spent copying."""
    os.makedirs(out, exist_ok=True)
    jobs = [(u, os.path.join(out, os.path.basename(u))) for u in inputs]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:
        pool.map(copy_one, jobs[:procs])  # warm the processes (imports) before the clock
        os.sync()
        t0 = time.perf_counter()
        cpu = sum(pool.map(copy_one, jobs, chunksize=1))
        elapsed = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return elapsed, cpu


def wds_copy_shard(args: tuple[str, str]) -> float:
    import webdataset as wds

    cpu0 = time.process_time()
    url, out = args
    with wds.TarWriter(out) as w:
        for s in wds.WebDataset(url, shardshuffle=False, empty_check=False):
            w.write({k: v for k, v in s.items() if k == "__key__" or not k.startswith("_")})
    return time.process_time() - cpu0


def wds_copy(inputs: list[str], out: str, procs: int = 2) -> float:
    """Read + write every shard once with webdataset's reader and TarWriter, ``procs``
    processes, no flush to disk (issue 26's CPU-bound floor)."""
    return copy_once(inputs, out, procs, wds_copy_shard)


def dask_p2p(kind: str, parquet_dir: str, out: str, partitions: int) -> tuple[float, int]:
    """read_parquet -> P2P shuffle or sort_values -> to_parquet, on a fresh 2-worker cluster."""
    import dask.dataframe as dd

    def job() -> None:
        df = dd.read_parquet(parquet_dir)
        if kind == "shuffle":
            df = df.shuffle(on="key", npartitions=partitions, shuffle_method="p2p")
        else:
            df = df.sort_values("key", npartitions=partitions, shuffle_method="p2p")
        df.to_parquet(out, compression=None, write_index=False, schema=_schema())

    with cluster(2) as client:
        elapsed, growth, _ = measured(client, job)
    shutil.rmtree(out, ignore_errors=True)
    return elapsed, growth


def _schema():
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("cls", pa.binary()), ("bin", pa.binary())])


def wds_loop(inputs: list[str], out: str, buffer: int, outputs: int) -> tuple[float, int]:
    """One fresh process: webdataset read -> shuffle buffer -> ShardWriter.
    Seconds and that process's peak RSS growth."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_wds_loop, (inputs, out, buffer, outputs))


def _wds_loop(inputs: list[str], out: str, buffer: int, outputs: int) -> tuple[float, int]:
    import webdataset as wds

    os.makedirs(out, exist_ok=True)
    n = sum(1 for _ in samples_of(inputs[0])) * len(inputs)
    rss0 = rss_now()
    os.sync()
    t0 = time.perf_counter()
    ds = wds.WebDataset(inputs, shardshuffle=False, empty_check=False).shuffle(buffer)
    with wds.ShardWriter(os.path.join(out, "out-%04d.tar"), maxcount=-(-n // outputs),
                         verbose=0, encoder=False) as sink:
        for s in ds:
            sink.write({k: v for k, v in s.items() if k == "__key__" or not k.startswith("_")})
    elapsed = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return elapsed, max(0, peak_rss() - rss0)


def gnu_sort(tsv: str, out: str) -> float:
    env = {**os.environ, "LC_ALL": "C"}
    t0 = time.perf_counter()
    subprocess.run(["sort", "--parallel=2", "-S", "512M", "-t", "\t", "-k1,1", tsv, "-o", out],
                   check=True, env=env)
    elapsed = time.perf_counter() - t0
    os.remove(out)
    return elapsed
