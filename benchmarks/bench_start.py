"""What a command costs before and after its job: a whole tiny htmapper (2 one-sample
shards, identity script, 2 workers: imports, the embedded cluster's start and close, the
job) against ``python -c pass`` and against the same job on a cluster already running.

    .venv/bin/python benchmarks/bench_start.py [--repeat 5] [--workers 2] [--no-spawn]

Prints each time (best of ``--repeat``, all runs in brackets) and, measured in this run:
  * ``RATIO whole command / python -c pass``: what a command costs in interpreter starts;
  * ``RATIO whole command / job alone``: the command against its job on a running
    cluster (1.0 would be no start-up at all);
  * ``RATIO whole command, spawn / forkserver``: Dask's own way of starting worker
    processes (``HTOOLS_START_METHOD=spawn``) against htools' fork server (> 1: the fork
    server is faster).
Beside them, for the breakdown: ``import htools.cli.mapper`` in a new interpreter, and
the embedded cluster's start and close in this process (its fork server already up).
Asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from htools import tar

SCRIPT = "def process_sample(sample):\n    return sample\n"


def make_inputs(folder: str) -> tuple[str, str]:
    """Two one-sample shards and the identity script; their pattern and the script's path."""
    os.makedirs(folder, exist_ok=True)
    for s in range(2):
        with open(os.path.join(folder, f"in-{s}.tar"), "wb") as f, tar.TarWriter(f) as w:
            w.write({"__key__": f"s{s}", "txt": b"hello"})
    script = os.path.join(folder, "identity.py")
    with open(script, "w", encoding="utf-8") as f:
        f.write(SCRIPT)
    return os.path.join(folder, "in-{0..1}.tar"), script


def timed(cmd: list[str], env: dict | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   env=env)
    return time.perf_counter() - t


def best(times: list[float]) -> str:
    return f"{min(times):.3f} s ({', '.join(f'{t:.2f}' for t in times)})"


def in_process(inputs: str, script: str, out: str, workers: int, repeat: int
               ) -> tuple[list[float], list[float], list[float]]:
    """The job alone on a running embedded cluster; the cluster's start and close."""
    import htools
    from htools.clusters.connection import connect
    from htools.options import RunOptions

    opts = RunOptions(workers=workers, quiet=True)
    job, start, close = [], [], []
    for _ in range(repeat):
        t = time.perf_counter()
        cm = connect(opts)
        client = cm.__enter__()
        start.append(time.perf_counter() - t)
        try:
            t = time.perf_counter()
            summary = htools.map_shards(inputs, out, script, client=client, overwrite=True,
                                        quiet=True)
            job.append(time.perf_counter() - t)
            assert summary.ok, summary
        finally:
            t = time.perf_counter()
            cm.__exit__(None, None, None)
            close.append(time.perf_counter() - t)
    return job, start, close


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=5, help="runs of each measure (best shown)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-spawn", action="store_true",
                   help="skip the whole command with Dask's spawn start method")
    p.add_argument("--dir", default=None, help="where the shards go (a temporary folder)")
    a = p.parse_args()
    bindir = os.path.dirname(sys.executable)
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        inputs, script = make_inputs(os.path.join(tmp, "in"))
        out = os.path.join(tmp, "out", "o-{0..1}.tar")
        cmd = [os.path.join(bindir, "htmapper"), "-p", script, inputs, out, "-q",
               "--workers", str(a.workers), "--overwrite"]
        spawn_env = {**os.environ, "HTOOLS_START_METHOD": "spawn"}
        t_pass, t_import, t_whole, t_spawn = [], [], [], []
        for _ in range(a.repeat):  # alternated, so that load changes touch all alike
            t_pass.append(timed([sys.executable, "-c", "pass"]))
            t_import.append(timed([sys.executable, "-c", "import htools.cli.mapper"]))
            t_whole.append(timed(cmd))
            if not a.no_spawn:
                t_spawn.append(timed(cmd, spawn_env))
        shutil.rmtree(os.path.join(tmp, "out"), ignore_errors=True)
        t_job, t_start, t_close = in_process(inputs, script, out, a.workers, a.repeat)
    print(f"python -c pass: {best(t_pass)}")
    print(f"import htools.cli.mapper: {best(t_import)}")
    print(f"whole htmapper, {a.workers} workers, 2 one-sample shards: {best(t_whole)}")
    if t_spawn:
        print(f"  the same with Dask's spawn start method: {best(t_spawn)}")
    print(f"job alone, cluster running: {best(t_job)}")
    print(f"embedded cluster start (in this process): {best(t_start)}")
    print(f"embedded cluster close (in this process): {best(t_close)}")
    print(f"RATIO whole command / python -c pass: {min(t_whole) / min(t_pass):.1f}")
    print(f"RATIO whole command / job alone: {min(t_whole) / min(t_job):.1f}")
    if t_spawn:
        print(f"RATIO whole command, spawn / forkserver: {min(t_spawn) / min(t_whole):.2f}")


if __name__ == "__main__":  # the cluster's worker processes import this module again
    main()
