"""htupload of a directory of small files vs GNU ``tar -cf`` of the same tree, wall time of
each whole command (htupload's cluster start included), in one run.

The tree: ``--samples`` samples of two 300-byte files (``.txt`` and ``.cls``), 1,000
samples a folder; htupload writes ``--shards`` shards (the issue's row: 100,000 samples,
200,000 files -> 64 shards).  Prints ``RATIO htupload / GNU tar ...`` (GNU tar's time over
htupload's: higher is better, goal >= 0.4); asserts nothing about speed.

    python benchmarks/bench_upload.py              # 100,000 samples -> 64 shards
    python benchmarks/bench_upload.py --quick      # 5,000 samples -> 8 shards
    python benchmarks/bench_upload.py --parts      # and htupload's own CPU, part by part
    python benchmarks/bench_upload.py --dask       # and htupload on Dask's embedded cluster

htupload of a folder into a local folder runs on worker processes forked from the fork
server, not on Dask (:mod:`htools.runtime.forkpool`); ``--dask`` also times it with
``HTOOLS_UPLOAD_EXECUTOR=dask`` (Dask's embedded cluster, as before), alternated with the
others, and prints ``RATIO htupload, Dask / forked``.

``--parts`` times, in this process (CPU seconds, best of ``--repeat``), what htupload does
besides Dask: its imports (in a new Python), the client's scan (with and without a
``stat`` a file), its lineage and plan, and the tasks' work (read the files, build the
tar, sha256 for the index), each also in microseconds a file; then the wall time of a
shard's write and commit with and without its fsyncs (the wait a worker's one thread
spends on the disk).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

PER_FOLDER = 1000
FIELDS = ("cls", "txt")


def make_tree(root: str, samples: int, size: int = 300) -> None:
    """``samples`` samples of two ``size``-byte files, ``PER_FOLDER`` a folder."""
    blob = os.urandom(size + 4096)
    for i in range(samples):
        folder = os.path.join(root, f"d{i // PER_FOLDER:04d}")
        if i % PER_FOLDER == 0:
            os.makedirs(folder)
        for j, field in enumerate(FIELDS):
            off = (7 * i + j) % 4096
            with open(os.path.join(folder, f"s{i:07d}.{field}"), "wb") as f:
                f.write(blob[off:off + size])


def cpu() -> float:
    return time.process_time()


def parts(src: str, shards: int, files: int, repeat: int) -> None:
    """htupload's own CPU, part by part, without a cluster."""
    from htools import tar
    from htools.options import RunOptions
    from htools.shards import OutputSet
    from htools.summary import ShardResult
    from htools.upload import _lineage, _lineage_paths, plan, scan
    from htools.upload_files import _file_samples, collector_paused

    one = OutputSet.parse("o-@1.tar")
    best: dict[str, float] = {"imports": min(import_cpu() for _ in range(repeat))}
    for _ in range(repeat):
        t = [cpu()]
        with collector_paused():  # as the command scans
            sized = scan(src)
        t.append(cpu())
        with collector_paused():
            samples = scan(src, sized=False)
        t.append(cpu())
        kw = {"maxcount": None, "maxsize": None, "shuffle": False, "seed": 0, "mtime": 0}
        _lineage(one, kw, _lineage_paths(samples), sizes=[s.size for s in sized])
        t.append(cpu())
        tasks = plan(src, f"o-@{shards}.tar", RunOptions.of({"quiet": True}), scanned=samples)
        t.append(cpu())
        read = [list(_file_samples(k.kwargs["samples"], ShardResult())) for k in tasks]
        t.append(cpu())
        out = []
        for task in read:
            buf = io.BytesIO()
            with tar.TarWriter(buf, count_fields=True) as w:
                for sample in task:
                    w.write(sample)
            out.append(buf.getvalue())
        t.append(cpu())
        for data in out:
            hashlib.sha256(data).digest()
        t.append(cpu())
        names = ["scan, sized", "scan, no stat", "lineage", "plan", "task: read files",
                 "task: tar writer", "task: sha256"]
        for name, a, b in zip(names, t, t[1:]):
            best[name] = min(best.get(name, b - a), b - a)
    print(f"PART import htools.cli.upload (a new Python): {best.pop('imports'):.3f} s CPU")
    for name, s in best.items():
        print(f"PART {name}: {s:.3f} s CPU, {s / files * 1e6:.2f} us a file")
    commits(out, os.path.join(os.path.dirname(src), "commits"), repeat)


def import_cpu() -> float:
    """CPU seconds of ``import htools.cli.upload`` in a new Python (the client's and the
    fork server's start both pay it)."""
    code = ("import time; t = time.process_time(); import htools.cli.upload; "
            "print(time.process_time() - t)")
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True).stdout)


def commits(shards: list[bytes], folder: str, repeat: int) -> None:
    """The commit of each shard (written whole, then committed), with and without the
    fsyncs (the file's, then its folder's): wall milliseconds a shard, of which the
    task's thread waits for the disk in the fsyncs (a core left idle unless another
    thread or process has work), best of ``repeat``."""
    from htools import storage

    for fsync in (False, True):
        best = float("inf")
        for _ in range(repeat):
            shutil.rmtree(folder, ignore_errors=True)
            t = time.perf_counter()
            for i, data in enumerate(shards):
                with storage.open_write(os.path.join(folder, f"s-{i:04d}.tar"),
                                        {"file": {"fsync": fsync}}) as f:
                    f.write(data)
            best = min(best, time.perf_counter() - t)
        print(f"PART write and commit, fsync {'on' if fsync else 'off'}: "
              f"{best / len(shards) * 1e3:.2f} ms a shard of "
              f"{sum(map(len, shards)) / len(shards) / 1e6:.1f} MB (wall)")
    shutil.rmtree(folder, ignore_errors=True)


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds of ``cmd``, and the CPU seconds of it and of the processes it started
    (the cluster's workers): a figure that other load on the machine changes less."""
    os.sync()  # no writeback of the last run's outputs under way (bench_mapper.settled)
    t, used = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   env=env)
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t, (now.ru_utime + now.ru_stime
                                     - used.ru_utime - used.ru_stime)


def compare(src: str, tmp: str, shards: int, repeat: int, workers: int | None = None,
            dask: bool = False) -> dict[str, list[tuple[float, float]]]:
    """htupload of the tree ``src`` into ``shards`` shards and GNU ``tar -cf`` of it (and,
    with ``dask``, htupload on Dask's embedded cluster), each ``repeat`` times, alternated
    (outputs in ``tmp``, removed): (wall, CPU) of every run."""
    out, archive = os.path.join(tmp, "out"), os.path.join(tmp, "all.tar")
    htupload = os.path.join(os.path.dirname(sys.executable), "htupload")
    up = [htupload, src, os.path.join(out, f"s-@{shards}.tar"), "-q",
          *(["--workers", str(workers)] if workers else [])]
    gnu = ["tar", "-cf", archive, "-C", src, "."]
    runs: dict[str, list[tuple[float, float]]] = {"htupload": [], "GNU tar -cf": []}
    on_dask = {**os.environ, "HTOOLS_UPLOAD_EXECUTOR": "dask"}
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        runs["htupload"].append(timed(up))
        runs["GNU tar -cf"].append(timed(gnu))
        if dask:
            shutil.rmtree(out, ignore_errors=True)
            runs.setdefault("htupload, Dask", []).append(timed(up, on_dask))
    shutil.rmtree(out, ignore_errors=True)
    os.remove(archive)
    return runs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--shards", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2, help="best of N runs of each command")
    p.add_argument("--quick", action="store_true", help="5,000 samples -> 8 shards, once")
    p.add_argument("--dir", default=None, help="where to make the tree (a temporary folder)")
    p.add_argument("--src", default=None, help="a tree make_tree() made before (kept)")
    p.add_argument("--parts", action="store_true", help="also htupload's own CPU by part")
    p.add_argument("--dask", action="store_true",
                   help="also htupload on Dask's embedded cluster (HTOOLS_UPLOAD_EXECUTOR=dask)")
    a = p.parse_args()
    if a.quick:
        a.samples, a.shards, a.repeat = 5000, 8, 1
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        src = a.src or os.path.join(tmp, "src")
        if not a.src:
            make_tree(src, a.samples)
        runs = compare(src, tmp, a.shards, a.repeat, a.workers, a.dask)
        files = a.samples * len(FIELDS)
        if a.parts:
            parts(src, a.shards, files, a.repeat)
        for name, got in runs.items():
            print(f"{name}: {min(w for w, _c in got):.2f} s "
                  f"({', '.join(f'{w:.2f}' for w, _c in got)}), CPU "
                  f"{', '.join(f'{c:.2f}' for _w, c in got)} s")
        best = {name: min(w for w, _c in got) for name, got in runs.items()}
        print(f"RATIO htupload / GNU tar -cf, {a.samples} samples ({files} files of 300 B) -> "
              f"{a.shards} shards: {best['GNU tar -cf'] / best['htupload']:.3f} (goal >= 0.4)")
        if a.dask:
            print(f"RATIO htupload, Dask / forked: {best['htupload, Dask'] / best['htupload']:.3f}"
                  f" (GNU tar -cf / htupload on Dask: "
                  f"{best['GNU tar -cf'] / best['htupload, Dask']:.3f})")


if __name__ == "__main__":
    main()
