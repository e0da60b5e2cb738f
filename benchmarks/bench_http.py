"""HTTP (nginx on loopback) vs local-file throughput through htools.storage.

Writes and reads the same ~256 MB shard through ``storage.open_write`` /
``storage.open_read`` on a local path and on nginx (started here through
scripts/nginx-start unless ``--url`` is given), and prints MB/s and the ratio
HTTP/local for each (goal: >= 0.8x).  Best of ``--repeat`` runs.

    .venv/bin/python benchmarks/bench_http.py [--size-mb 256] [--chunk-kb 1024]
                                              [--repeat 3] [--url http://host:port]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from htools import storage

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(url: str, data: memoryview, chunk: int, options=None) -> None:
    with storage.open_write(url, options) as w:
        for i in range(0, len(data), chunk):
            w.write(data[i:i + chunk])


def read(url: str, size: int, chunk: int, options=None) -> None:
    got = 0
    with storage.open_read(url, options) as f:
        while block := f.read(chunk):
            got += len(block)
    if got != size:
        raise SystemExit(f"read {got} bytes from {url}, expected {size}")


def best(fn: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--chunk-kb", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--url", help="use this nginx instead of starting one")
    args = ap.parse_args()

    size = args.size_mb << 20
    chunk = args.chunk_kb << 10
    data = memoryview(os.urandom(size))
    work = Path(tempfile.mkdtemp(prefix="htools-bench-"))
    prefix = work / "nginx"
    try:
        base = args.url
        if base is None:
            started = subprocess.run(
                [str(REPO / "scripts" / "nginx-start"), "--port", str(free_port()),
                 "--root", str(work / "root"), "--prefix", str(prefix)],
                check=True, capture_output=True, text=True)
            base = started.stdout.strip().splitlines()[-1]
        local = str(work / "local" / "shard.tar")
        remote = f"{base.rstrip('/')}/bench/shard.tar"
        nosync = {"file": {"fsync": False}}

        results = {
            "write local (fsync)": best(lambda: write(local, data, chunk), args.repeat),
            "write local (no fsync)": best(lambda: write(local, data, chunk, nosync), args.repeat),
            "write http": best(lambda: write(remote, data, chunk), args.repeat),
            "read local": best(lambda: read(local, size, chunk), args.repeat),
            "read http": best(lambda: read(remote, size, chunk), args.repeat),
        }
        print(f"{args.size_mb} MB shard, {args.chunk_kb} KiB writes/reads, best of {args.repeat}")
        for name, seconds in results.items():
            print(f"  {name:24s} {seconds:7.3f} s  {size / seconds / 1e6:8.0f} MB/s")
        ratios = {
            "write http / local (fsync)":
                results["write local (fsync)"] / results["write http"],
            "write http / local (no fsync)":
                results["write local (no fsync)"] / results["write http"],
            "read http / local": results["read local"] / results["read http"],
        }
        for name, ratio in ratios.items():
            verdict = "ok" if ratio >= 0.8 else "below 0.8x goal"
            print(f"  {name:30s} {ratio:5.2f}x  {verdict}")
        storage.delete(remote)
    finally:
        if args.url is None and prefix.exists():
            subprocess.run([str(REPO / "scripts" / "nginx-stop"), "--prefix", str(prefix)],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
