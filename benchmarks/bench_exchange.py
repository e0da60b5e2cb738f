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

The pieces: ``exchange_data.py`` (the datasets), ``exchange_jobs.py`` (an htools job on a
fresh cluster, measured), ``exchange_baselines.py`` (the baselines); here the rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from exchange_baselines import copy_cpu, copy_once, dask_p2p, gnu_sort, wds_copy_shard, wds_loop
from exchange_data import keys_tsv, make_dataset, to_parquet, total_bytes
from exchange_jobs import htools_job, htools_job_cpu

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
                wcopy, wcpu = copy_cpu(inputs, os.path.join(work, "i26-w"), 2, wds_copy_shard)
                out.append({**row("htshuffle of 128 KiB samples vs webdataset copy "
                                  "(2 procs, no flush)", shuf, wcopy, ">= 0.45", mb, mem=mem),
                            "cpu": cpu, "base_cpu": wcpu})
        finally:
            shutil.rmtree(os.path.dirname(inputs[0]), ignore_errors=True)
    return out


def _suite_row(name: str, ours: float, base: float, goal: str, mb: float,
               mem: int | None = None, base_mem: int | None = None) -> dict:
    return row(name, ours, base, goal, mem, base_mem, mb)



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
