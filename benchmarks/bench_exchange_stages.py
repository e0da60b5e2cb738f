"""The exchange's own tasks in one process, against copying the same shards once.

    .venv/bin/python benchmarks/bench_exchange_stages.py [--kib 128] [--gb 0.25] [--repeat 3]

CPU seconds a GB (best of ``--repeat``) of: copy once (htools' codec, read and write
every shard once, one process), stage 1 (one partition task an input shard), the write
tasks with the index's sha256 and without it, and the ratios copy / exchange.  No Dask,
no fsync (run files never have one; here the outputs and the copy neither): what the
tasks themselves cost, steadier on a shared machine than a job's wall time.  An A/B of
two trees: run it with each one first on PYTHONPATH (the output digest must agree).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time

from htools.exchange.keys import KeySpec
from htools.exchange.partition import partition
from htools.exchange.runfile import Run
from htools.exchange.specs import InputSpan, StageOne, StageTwo
from htools.exchange.write import write_outputs
from htools.runtime import hashing

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exchange_data import copy_shard, make_dataset  # noqa: E402

NO_FSYNC = {"file": {"fsync": False}}


def copy_once(inputs: list[str], out: str) -> None:
    """Every shard read and written once with htools' codec."""
    for url in inputs:
        copy_shard(url, os.path.join(out, os.path.basename(url)), NO_FSYNC)


def stage_one(inputs: list[str], scratch: str) -> list[Run]:
    """One partition task an input shard, as htshuffle's (one bucket an output)."""
    n = len(inputs)
    spec = StageOne(scratch=scratch, buckets=n, key=KeySpec(mode="random", seed=1),
                    memory=1 << 30, counts=False, options=NO_FSYNC)
    runs = []
    for i, url in enumerate(inputs):
        r = partition(InputSpan([url], i), i, spec)
        if r.get("error"):
            sys.exit(f"stage 1 failed: {r['error']}")
        runs += [Run(u, size, 0, n) for u, size in r["extra"]["runs"]]
    return runs


def write_tasks(runs: list[Run], n: int, out: str, index: bool) -> list[str]:
    """Two write tasks of half the outputs each; the outputs' paths."""
    outs = [(os.path.join(out, f"out-{j:04d}.tar"), j, j + 1) for j in range(n)]
    spec = StageTwo(options=NO_FSYNC, index=index)
    for part in (outs[:n // 2], outs[n // 2:]):
        for r in write_outputs(part, runs, spec):
            if r.get("error"):
                sys.exit(f"a write task failed: {r['error']}")
    return [o[0] for o in outs]


def cpu(fn, *args):
    c0 = time.process_time()
    result = fn(*args)
    return time.process_time() - c0, result


def measure(inputs: list[str], work: str, repeat: int) -> tuple[dict[str, float], str]:
    """Best CPU seconds a GB of each side, and the sha256 of all outputs together."""
    gb = sum(os.path.getsize(u) for u in inputs) / 1e9
    best: dict[str, float] = {}
    digest = ""
    for _ in range(repeat):
        for d in ("copy", "scratch", "out"):
            shutil.rmtree(os.path.join(work, d), ignore_errors=True)
            os.makedirs(os.path.join(work, d))
        times = {"copy once": cpu(copy_once, inputs, os.path.join(work, "copy"))[0]}
        times["stage 1"], runs = cpu(stage_one, inputs, os.path.join(work, "scratch"))
        out = os.path.join(work, "out")
        times["write, no index"] = cpu(write_tasks, runs, len(inputs), out, False)[0]
        times["write, index"], paths = cpu(write_tasks, runs, len(inputs), out, True)
        for k, v in times.items():
            best[k] = min(best.get(k, v / gb), v / gb)
        h = hashlib.sha256()
        for p in paths:
            with open(p, "rb") as f:
                h.update(f.read())
        if digest and h.hexdigest() != digest:
            sys.exit("the outputs differ between repeats")
        digest = h.hexdigest()
    return best, digest


def report(best: dict[str, float]) -> list[str]:
    lines = [f"{k:<16} {v:6.3f} CPU-s a GB" for k, v in best.items()]
    for index in ("index", "no index"):
        ex = best["stage 1"] + best[f"write, {index}"]
        lines.append(f"copy once / exchange ({index}): {best['copy once'] / ex:.2f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kib", type=int, default=128, help="sample size (default 128)")
    ap.add_argument("--gb", type=float, default=0.25, help="GB of data (default 0.25)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    a = ap.parse_args()
    # as a Dask worker's (its nanny sets it; htools' tasks then raise the thresholds)
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "65536")
    work = tempfile.mkdtemp(prefix="htools-stages-", dir=a.dir)
    try:
        inputs = make_dataset(os.path.join(work, "in"), a.gb, a.kib)
        best, digest = measure(inputs, work, a.repeat)
        print("\n".join(report(best)))
        chosen = getattr(hashing, "CHOSEN", None)  # the index's sha256: thread or inline
        if chosen is not None:
            print(f"outputs hashed on the hashing thread {chosen['thread']}, "
                  f"inline {chosen['inline']} (a thread costs more CPU, less wall time)")
        print(f"outputs' sha256 {digest[:16]} (equal for two trees of the same outputs)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
