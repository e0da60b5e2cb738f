"""htmapper --shell against the same command in a plain shell ``for`` loop.

    .venv/bin/python benchmarks/bench_shell.py [--samples 2000] [--shards 4] [--kib 4]
                                               [--workers 1] [--dir DIR]

The baseline is what a user would otherwise do: the samples already extracted, one
folder per sample holding ``sample.FIELD`` files, and one ``sh`` loop running
``cd "$d"; KEY=$d sh -c "$CMD"; cd ..`` for each (extraction not counted).  htmapper
reads the tar shards, runs the command once per sample (one ``sh -c`` each, as the
loop does) and writes tar shards; its embedded cluster (``--workers``, default 1: the
loop is one process too) is started before the clock starts.  Prints samples per
second for both and the ratio htmapper / loop (1 = as fast as the loop), for ``:``
(the shell's no-op: the fixed cost per sample) and for a command that runs a program
(``tr``) and changes fields.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "noop": ":",
    "tr": "tr a-z A-Z < sample.txt > sample.up && rm sample.txt",
}


def make_data(folder: str, samples: int, shards: int, kib: int) -> tuple[list[str], str]:
    """Tar shards (webdataset's writer) and the same samples extracted, one folder each."""
    import webdataset as wds

    tars, extracted = [], os.path.join(folder, "extracted")
    os.makedirs(extracted)
    payload = os.urandom(kib << 10)
    per = samples // shards
    for s in range(shards):
        path = os.path.join(folder, f"in-{s}.tar")
        tars.append(path)
        with wds.TarWriter(path) as w:
            for i in range(per):
                key = f"s{s}k{i:05d}"
                sample = {"__key__": key, "jpg": payload, "cls": str(i % 10).encode(),
                          "txt": f"a caption for sample {key}".encode()}
                w.write(sample)
                d = os.path.join(extracted, key)
                os.mkdir(d)
                for field in ("jpg", "cls", "txt"):
                    with open(os.path.join(d, "sample." + field), "wb") as f:
                        f.write(sample[field])
    return tars, extracted


def loop(extracted: str, command: str) -> float:
    """Seconds of a plain ``for`` loop running ``command`` in every sample's folder."""
    work = extracted + "-work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(extracted, work)  # a fresh copy: the command changes files
    script = 'for d in */; do cd "$d"; KEY="${d%/}" sh -c "$CMD" || exit 1; cd ..; done'
    t0 = time.perf_counter()
    subprocess.run(["sh", "-c", script], cwd=work, env={**os.environ, "CMD": command},
                   check=True)
    seconds = time.perf_counter() - t0
    shutil.rmtree(work)
    return seconds


def htmapper(tars: list[str], out: str, command: str, client) -> float:
    import htools

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    t0 = time.perf_counter()
    summary = htools.map_shards(tars, os.path.join(out, f"out-@{len(tars)}.tar"),
                                shell=command, client=client, quiet=True, index=False)
    seconds = time.perf_counter() - t0
    if not summary.ok:
        sys.exit(f"htmapper failed: {summary.failures[:1]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--kib", type=int, default=4, help="size of each sample's jpg field")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs a side")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    folder = tempfile.mkdtemp(prefix="bench-shell-", dir=args.dir)
    try:
        tars, extracted = make_data(folder, args.samples, args.shards, args.kib)
        n = (args.samples // args.shards) * args.shards
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          dashboard_address="127.0.0.1:0", silence_logs=40) as cluster, \
                Client(cluster) as client:
            htmapper(tars, os.path.join(folder, "warm"), ":", client)  # workers import htools
            print(f"{n} samples of {args.kib} KiB + 2 small fields, {args.shards} shards, "
                  f"htmapper with {args.workers} worker(s); best of {args.repeat}")
            for name, command in COMMANDS.items():
                base = min(loop(extracted, command) for _ in range(args.repeat))
                ours = min(htmapper(tars, os.path.join(folder, "out"), command, client)
                           for _ in range(args.repeat))
                print(f"{name:5} {command!r}: loop {n / base:,.0f} samples/s, "
                      f"htmapper {n / ours:,.0f} samples/s, ratio {base / ours:.2f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
