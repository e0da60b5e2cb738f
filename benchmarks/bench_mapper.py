"""htmapper throughput against a single-process loop over the same shards.

    .venv/bin/python benchmarks/bench_mapper.py [--gb 1.0] [--quick] [--dir DIR]

Prints ratios measured in one run (absolute times only beside them):
  * htmapper (identity script, 1 worker) vs a single-process read-write loop with
    htools' own codec -- goal >= 0.5 per worker;
  * htmapper with 2 workers vs 1 worker -- goal >= 1.7x;
  * the fixed cost per shard on empty shards -- goal <= 50 ms.
Clusters are started before the clock starts; their start-up is not counted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from htools import storage, tario


def identity(sample):
    return sample


def make_shards(folder: str, gb: float, sample_kib: int = 16, shards: int = 16) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    per_shard = max(1, int(gb * (1 << 30) / (sample_kib << 10) / shards))
    payload = os.urandom(sample_kib << 10)
    urls = []
    for s in range(shards):
        url = os.path.join(folder, f"in-{s:04d}.tar")
        with open(url, "wb") as f, tario.TarWriter(f) as w:
            for i in range(per_shard):
                w.write({"__key__": f"s{s}/{i:07d}", "bin": payload[i % 97:] + payload[:i % 97],
                         "cls": str(i % 10).encode()})
        urls.append(url)
    return urls


def baseline_loop(inputs: list[str], out_dir: str) -> float:
    """One process: read each shard with htools' codec and write it back out."""
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    for url in inputs:
        out = os.path.join(out_dir, os.path.basename(url))
        with storage.open_read(url) as raw, storage.open_write(out) as dst, \
                tario.TarWriter(dst) as w:
            for sample in tario.read_samples(tario.open_stream_reader(raw, url), url):
                sample.pop("__url__", None)
                w.write(sample)
    return time.perf_counter() - t0


def timed_mapper(inputs: list[str], out_pattern: str, workers: int) -> float:
    import htools
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=40) as cluster, Client(cluster) as c:
        c.run(lambda: None)  # workers are up
        t0 = time.perf_counter()
        summary = htools.map_shards(inputs, out_pattern, identity, client=c, quiet=True,
                                    overwrite=True)
        elapsed = time.perf_counter() - t0
    if not summary.ok:
        sys.exit(f"htmapper failed: {summary.failures[:1]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="a tiny run to check the harness")
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    gb = 0.03 if a.quick else a.gb
    work = a.dir or tempfile.mkdtemp(prefix="bench-mapper-")
    try:
        inputs = make_shards(os.path.join(work, "in"), gb)
        n = len(inputs)
        size = sum(os.path.getsize(u) for u in inputs)
        base = min(baseline_loop(inputs, os.path.join(work, "loop")) for _ in range(2))
        one = timed_mapper(inputs, os.path.join(work, "m1", f"out-@{n:04d}.tar"), 1)
        two = timed_mapper(inputs, os.path.join(work, "m2", f"out-@{n:04d}.tar"), 2)
        empties = [os.path.join(work, "empty", f"e-{i:04d}.tar") for i in range(100 if not a.quick else 20)]
        os.makedirs(os.path.dirname(empties[0]), exist_ok=True)
        for e in empties:
            with open(e, "wb") as f, tario.TarWriter(f):
                pass
        empty = timed_mapper(empties, os.path.join(work, "me", f"o-@{len(empties):04d}.tar"), 2)
        mb = size / 1e6
        rows = [
            ("htmapper 1 worker vs single-process loop", base / one, ">= 0.5",
             f"{mb / one:.0f} vs {mb / base:.0f} MB/s"),
            ("htmapper 2 workers vs 1 worker", one / two, ">= 1.7",
             f"{mb / two:.0f} vs {mb / one:.0f} MB/s"),
            ("fixed cost per empty shard (ms, 2 workers, per task)",
             empty * 2 / len(empties) * 1000, "<= 50", f"{len(empties)} shards in {empty:.2f}s"),
        ]
        print(f"bench_mapper: {n} shards, {mb:.0f} MB of 16 KiB samples")
        print(f"{'measure':55} {'ratio':>8}  {'goal':8} detail")
        for name, ratio, goal, detail in rows:
            print(f"{name:55} {ratio:8.2f}  {goal:8} {detail}")
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
