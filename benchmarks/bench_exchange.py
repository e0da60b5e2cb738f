"""htshuffle / htsort against the baselines of issue #4, on the same samples.

    .venv/bin/python benchmarks/bench_exchange.py [--gb 2] [--kib 16] [--quick] [--dir DIR]
    .venv/bin/python benchmarks/bench_exchange.py --copies [--quick] [--gb 1.6]

Every figure is a ratio ``baseline seconds / htools seconds`` measured in this run
(> 1: htools is faster).  What each baseline does:

* **copy once** -- two processes (the same 2 cores as the 2 Dask workers) read every
  input shard with htools' codec and write it back out: one read + one write of the
  data, no exchange.  An exchange reads and writes everything twice (runs in
  scratch), so its floor is 0.5.
* **webdataset copy** (``--copies``) -- the same two processes, with webdataset's
  reader and ``TarWriter`` and no flush to disk: CPU-bound (issue 26).
  ``--copies`` prints issue 26's rows (:func:`rows`, which benchmarks/suite.py can call):
  htshuffle of 128 KiB samples vs the webdataset copy, and htshuffle vs copy once at 16
  and 128 KiB, each with the CPU seconds a GB of both sides (htools: its two workers'
  processes; a copy: its two processes' own), steadier than wall time on a shared
  machine.
* **dask P2P** -- the same samples as a pandas DataFrame (``key`` str, ``cls`` and
  ``bin`` bytes columns), one uncompressed parquet file per input shard in scratch.
  Timed: ``dd.read_parquet`` -> ``.shuffle(on="key", shuffle_method="p2p")`` (or
  ``.sort_values("key", shuffle_method="p2p")``) -> ``.to_parquet`` (uncompressed),
  on a fresh 2-worker LocalCluster like htools'.  Both sides read every byte from
  scratch files and write every byte to output files; P2P spills to worker-local
  disk as htools spills runs to scratch.  Hash partitioning of random keys is
  dask's random shuffle (rows keep their order inside a partition, where
  htshuffle also shuffles inside each output).
* **webdataset loop** -- one process: ``wds.WebDataset(urls).shuffle(N)`` ->
  ``wds.ShardWriter`` (a local shuffle buffer of N samples, not a global shuffle).
* **GNU sort** -- ``LC_ALL=C sort --parallel=2`` of a TSV of the keys alone: the
  key-only floor, no payload moves.

Peak worker memory is ``peak_rss - rss_start_min`` of the tasks (htools) or the
growth of the workers' peak RSS over their RSS at start (baselines).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from htools import storage, tar
from htools.runtime.memory import peak_rss

SHARD_MB = 32  # input shard size: the shard count grows with the data


# ------------------------------------------------------------------ data --

def shard_count(gb: float) -> int:
    return max(4, round(gb * 1024 / SHARD_MB))


def make_dataset(folder: str, gb: float, sample_kib: int, seed: int = 0) -> list[str]:
    """Shards of samples with a random hex ``__key__``, a ``bin`` payload and a ``cls``."""
    os.makedirs(folder, exist_ok=True)
    n = shard_count(gb)
    size = sample_kib << 10
    per_shard = max(1, int(gb * (1 << 30) / size / n))
    rng = random.Random(seed)
    blob = rng.randbytes(size + 4096)  # the same data on every run (digests compare)
    urls = []
    for s in range(n):
        url = os.path.join(folder, f"in-{s:04d}.tar")
        with open(url, "wb") as f, tar.TarWriter(f) as w:
            for i in range(per_shard):
                at = rng.randrange(4096)
                w.write({"__key__": f"{rng.getrandbits(64):016x}", "bin": blob[at:at + size],
                         "cls": str(i % 10).encode()})
        urls.append(url)
    return urls


def total_bytes(urls: list[str]) -> int:
    return sum(os.path.getsize(u) for u in urls)


def samples_of(url: str):
    with storage.open_read(url) as raw:
        for s in tar.read_samples(tar.open_stream_reader(raw, url), url):
            s.pop("__url__", None)
            yield s


def to_parquet(urls: list[str], folder: str) -> str:
    """The same samples as parquet, one uncompressed file per input shard (untimed)."""
    import pandas as pd

    os.makedirs(folder, exist_ok=True)
    for i, url in enumerate(urls):
        rows = list(samples_of(url))
        df = pd.DataFrame({"key": [r["__key__"] for r in rows],
                           "cls": [r["cls"] for r in rows], "bin": [r["bin"] for r in rows]})
        df.to_parquet(os.path.join(folder, f"part-{i:04d}.parquet"), compression=None,
                      index=False)
    return folder


def keys_tsv(urls: list[str], path: str) -> str:
    with open(path, "w") as f:
        for i, url in enumerate(urls):
            for s in samples_of(url):
                f.write(f"{s['__key__']}\t{i}\n")
    return path


# -------------------------------------------------------------- clusters --

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


def _rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def worker_start(client) -> int:
    return min(client.run(_rss_now).values())


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


# ------------------------------------------------------------- baselines --

def _copy_one(args: tuple[str, str]) -> float:
    """Copy one shard with htools' codec; the CPU seconds it took."""
    cpu0 = time.process_time()
    url, out = args
    with storage.open_read(url) as raw, storage.open_write(out) as dst, \
            tar.TarWriter(dst) as w:
        for s in tar.read_samples(tar.open_stream_reader(raw, url), url):
            s.pop("__url__", None)
            w.write(s)
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


def _wds_copy_one(args: tuple[str, str]) -> float:
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
    return copy_once(inputs, out, procs, _wds_copy_one)


ISSUE_26 = {  # GB of data at 16 and 128 KiB: issue 26's (the README's 16 KiB rows: 2 GB)
    False: {16: 2.0, 128: 1.6}, True: {16: 0.02, 128: 0.02}}
COPY_GOALS = {16: ">= 0.42", 128: ">= 0.40"}


def rows(work: str, quick: bool, row, sizes: dict[int, float] | None = None) -> list[dict]:
    """Issue 26's rows, each side measured in this run (``row``: benchmarks/suite.py's
    ``row(name, ours, base, goal, mb, mem=...)``): htshuffle vs copy once (2 procs,
    htools codec) at 16 and 128 KiB, and htshuffle of 128 KiB samples vs the 2-process
    webdataset copy.  Each row also carries ``cpu`` and ``base_cpu``, CPU seconds of
    the two sides (:func:`htools_job_cpu`, :func:`copy_cpu`)."""
    out = []
    for kib, gb in (sizes or ISSUE_26[quick]).items():
        inputs = make_dataset(os.path.join(work, f"issue26-{kib}"), gb, kib)
        mb = total_bytes(inputs) / 1e6
        try:
            shuf, mem, cpu = htools_job_cpu("shuffle", inputs, os.path.join(work, "i26-s"))
            copy, copy_cpu_s = copy_cpu(inputs, os.path.join(work, "i26-c"))
            out.append({**row(f"htshuffle vs copy once (2 procs, htools codec), {kib} KiB",
                              shuf, copy, COPY_GOALS.get(kib, ">= 0.4"), mb, mem=mem),
                        "cpu": cpu, "base_cpu": copy_cpu_s})
            if kib == 128:
                wcopy, wcpu = copy_cpu(inputs, os.path.join(work, "i26-w"), 2, _wds_copy_one)
                out.append({**row("htshuffle of 128 KiB samples vs webdataset copy "
                                  "(2 procs, no flush)", shuf, wcopy, ">= 0.45", mb, mem=mem),
                            "cpu": cpu, "base_cpu": wcpu})
        finally:
            shutil.rmtree(os.path.dirname(inputs[0]), ignore_errors=True)
    return out


def _suite_row(name: str, ours: float, base: float, goal: str, mb: float,
               mem: int | None = None, base_mem: int | None = None) -> dict:
    return row(name, ours, base, goal, mem, base_mem, mb)


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
    rss0 = _rss_now()
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


# ------------------------------------------------------------------- main --

def compare(work: str, inputs: list[str], buffer: int = 4096) -> list[dict]:
    """Rows of issue #4 on one dataset (the growth rows come from :func:`growth`)."""
    mb = total_bytes(inputs) / 1e6
    n = len(inputs)
    pq = to_parquet(inputs, os.path.join(work, "parquet"))
    tsv = keys_tsv(inputs, os.path.join(work, "keys.tsv"))
    shuf, shuf_mem = htools_job("shuffle", inputs, os.path.join(work, "hs"))
    srt, srt_mem = htools_job("sort", inputs, os.path.join(work, "ht"))
    copy = copy_once(inputs, os.path.join(work, "copy"))
    p2p_s, p2p_s_mem = dask_p2p("shuffle", pq, os.path.join(work, "p2p-s"), n)
    p2p_o, p2p_o_mem = dask_p2p("sort", pq, os.path.join(work, "p2p-o"), n)
    loop, loop_mem = wds_loop(inputs, os.path.join(work, "wds"), buffer, n)
    floor = gnu_sort(tsv, os.path.join(work, "keys.sorted"))
    shutil.rmtree(pq, ignore_errors=True)
    os.remove(tsv)
    return [
        row("htshuffle vs copy once (2 procs, htools codec)", shuf, copy, ">= 0.4", shuf_mem,
            None, mb),
        row("htshuffle vs dask P2P shuffle", shuf, p2p_s, ">= 1.0", shuf_mem, p2p_s_mem, mb),
        row(f"htshuffle vs webdataset shuffle({buffer}) loop", shuf, loop, ">= 2", shuf_mem,
            loop_mem, mb),
        row("htsort vs dask P2P sort_values", srt, p2p_o, ">= 1.0", srt_mem, p2p_o_mem, mb),
        row("htsort vs GNU sort of the keys (key-only floor)", srt, floor, "floor", srt_mem,
            None, mb),
    ]


def row(name: str, ours: float, base: float, goal: str, mem: int | None,
        base_mem: int | None, mb: float) -> dict:
    return {"operation": name, "htools_s": ours, "baseline_s": base, "ratio": base / ours,
            "goal": goal, "mem": mem, "base_mem": base_mem, "mb": mb}


def growth(work: str, sizes: list[float], sample_kib: int, memory: int) -> list[dict]:
    """htsort with a fixed --memory at each size: seconds and peak worker memory growth."""
    out = []
    for gb in sizes:
        inputs = make_dataset(os.path.join(work, f"g{gb}"), gb, sample_kib, seed=1)
        mb = total_bytes(inputs) / 1e6
        seconds, mem = htools_job("sort", inputs, os.path.join(work, "g-out"), memory=memory)
        out.append({"gb": gb, "mb": mb, "seconds": seconds, "mem": mem, "shards": len(inputs)})
        shutil.rmtree(os.path.dirname(inputs[0]), ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=None, help="GB of data (default 2; with "
                    "--copies: issue 26's sizes, 2 at 16 KiB and 1.6 at 128 KiB)")
    ap.add_argument("--kib", type=int, default=None, help="sample size (default 16; with "
                    "--copies: both 16 and 128)")
    ap.add_argument("--memory-mb", type=int, default=64, help="htsort budget for the growth rows")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--copies", action="store_true",
                    help="only htshuffle vs the two copies (issue 26's rows)")
    a = ap.parse_args()
    work = a.dir or tempfile.mkdtemp(prefix="bench-exchange-")
    try:
        if a.copies:
            sizes = dict(ISSUE_26[a.quick])
            if a.kib is not None:
                sizes = {a.kib: sizes.get(a.kib, sizes[16])}
            if a.gb is not None:
                sizes = dict.fromkeys(sizes, a.gb)
            print_copies(rows(work, a.quick, _suite_row, sizes))
            return
        kib = a.kib or 16
        gb = 0.03 if a.quick else a.gb or 2.0
        inputs = make_dataset(os.path.join(work, "in"), gb, kib)
        found = compare(work, inputs)
        print(f"bench_exchange: {len(inputs)} shards, {found[0]['mb']:.0f} MB of {kib} KiB samples")
        for r in found:
            print(f"{r['operation']:52} {r['ratio']:6.2f}  goal {r['goal']:7}"
                  f" {r['htools_s']:.1f}s vs {r['baseline_s']:.1f}s")
        sizes = [gb / 4, gb / 2, gb, gb * 2]
        for g in growth(work, sizes, kib, a.memory_mb << 20):
            print(f"htsort {g['mb']:.0f} MB: {g['seconds']:.1f}s, peak worker memory "
                  f"{g['mem'] / 2**20:.0f} MiB")
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)


def print_copies(found: list[dict]) -> None:
    """Issue 26's rows: the wall-time ratio and goal, then each side's CPU a GB."""
    os_load = os.getloadavg()[0]
    for r in found:
        gb = r["mb"] / 1e3
        print(f"{r['operation']:66} {r['ratio']:5.2f}  goal {r['goal']:7}"
              f" {r['htools_s']:.2f}s vs {r['baseline_s']:.2f}s ({r['mb']:.0f} MB);"
              f" CPU {r['cpu'] / gb:.2f} vs {r['base_cpu'] / gb:.2f} s/GB"
              f" (ratio {r['base_cpu'] / r['cpu']:.2f})")
    print(f"load average at the end: {os_load:.1f}")


if __name__ == "__main__":
    main()
