"""HTTP (nginx on loopback) vs local-file throughput through htools.storage.

Writes and reads the same ~256 MB shard through ``storage.open_write`` /
``storage.open_read`` on a local path and on nginx (started here through
scripts/nginx-start unless ``--url`` is given), and prints MB/s and the ratio
HTTP/local for each (goal: >= 0.8x).  Best of ``--repeat`` runs.

The cost of replayable uploads (issue 25): an HTTP write keeps a spool of its body (in
memory up to $HTOOLS_SPOOL_MEMORY, beyond that in a temp file) so a fault at the commit
sends it again instead of rerunning the shard.  Measured twice: one 256 MB write with
and without the spool, and htmapper (identity, 2 workers, embedded cluster) over
``--shards`` shards on nginx with and without it (goal: spooled / unspooled <= 1.1x).

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


def spool(on: bool) -> None:
    """Uploads with (the default) or without a replayable copy; workers started after
    this inherit it."""
    os.environ["HTOOLS_SPOOL"] = "on" if on else "off"


def mapper_job(base: str, shards: int, mb: int) -> Callable[[], None]:
    """htmapper identity over ``shards`` shards of about ``mb`` MB on nginx."""
    import htools
    from htools import tar

    rng = os.urandom(1 << 20)
    per = mb  # samples of ~1 MB each
    for n in range(shards):
        with storage.open_write(f"{base}/in/s-{n:04d}.tar") as w:
            tar.write_samples(w, ({"__key__": f"{n}-{i}", "bin": rng[i:] + rng[:i]}
                                  for i in range(per)), url="x.tar")
    script = Path(tempfile.mkdtemp(prefix="htools-bench-script-")) / "identity.py"
    script.write_text("def process_sample(s):\n    return s\n")

    def job() -> None:
        s = htools.map_shards(f"{base}/in/s-@{shards:04d}.tar", f"{base}/out/o-@{shards:04d}.tar",
                              str(script), workers=2, quiet=True, overwrite=True)
        if not s.ok:
            raise SystemExit(f"htmapper failed: {s.failures}")
    return job


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
    ap.add_argument("--shards", type=int, default=16, help="htmapper shards (0: skip)")
    ap.add_argument("--shard-mb", type=int, default=32)
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
        spool(False)
        results["write http (no spool)"] = best(lambda: write(remote, data, chunk), args.repeat)
        if args.shards:
            job = mapper_job(f"{base.rstrip('/')}/bench-mapper", args.shards, args.shard_mb)
            results["htmapper http (no spool)"] = best(job, args.repeat)
            spool(True)
            results["htmapper http"] = best(job, args.repeat)
        spool(True)
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
        costs = {"write http, spooled / not (time)":
                 results["write http"] / results["write http (no spool)"]}
        if args.shards:
            costs["htmapper http, spooled / not (time)"] = \
                results["htmapper http"] / results["htmapper http (no spool)"]
        for name, ratio in costs.items():
            verdict = "ok" if ratio <= 1.1 else "above the 1.1x goal"
            print(f"  {name:36s} {ratio:5.2f}x  {verdict}")
        storage.delete(remote)
    finally:
        if args.url is None and prefix.exists():
            subprocess.run([str(REPO / "scripts" / "nginx-stop"), "--prefix", str(prefix)],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
