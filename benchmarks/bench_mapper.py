"""htmapper throughput against a single-process loop over the same shards.

    .venv/bin/python benchmarks/bench_mapper.py [--gb 1.0] [--kib 16] [--tiny N] [--quick]
                                                [--dir DIR] [--no-two] [--index-off] [--threads]

Prints ratios measured in one run (absolute times only beside them):
  * htmapper (identity script, 1 worker) vs a single-process read-write loop with
    htools' own codec and storage (its outputs committed as htmapper's are: fsynced,
    with their disk writes started as they are written), per sample size (``--kib
    1,16,128``) -- goal >= 0.9;
  * with ``--index-off``: the same without the shard index (``index=False``: no sha256
    of the outputs, which the loop does not compute either), and 2 workers vs 1 without
    it -- for information;
  * htmapper with 2 workers vs 1 worker -- goal >= 1.7x;
  * the CPU a MB of those jobs (information; the figure that holds while other work
    shares the machine): the workers' CPU seconds a MB, 1 worker over the loop, and the
    workers' and this process's (client and embedded scheduler) over the 1-worker
    job's, 2 workers over 1 (1.0: the second worker costs no CPU the first did not;
    2 workers reach 2x on 2 cores only near 1.0 and with the 1-worker job using
    one core), and for how many outputs the sha256 went to the hashing thread (the rest
    hashed inline: no core was spare, see ``htools.runtime.hashing.spare_core``);
  * with ``--threads``: the task function in this process (no Dask), its sha256 on the
    hashing thread, vs the loop -- the CPU a MB of the task thread over the loop's, and
    the hashing thread's CPU a MB: the figures that hold while other work shares the
    machine (the job's wall time waits for whichever of the two threads is slower);
  * the fixed cost per shard on empty shards -- goal <= 50 ms;
  * with ``--tiny N``: htmapper (2 workers) over N tiny shards (one ~200-byte sample
    each) -- shards per second after the cluster is up (goal >= 250 at 16,384), and the
    client's memory (RSS of this process, which holds the embedded scheduler too)
    when the first quarter of the shards is done and at the end (flat: about equal).
Clusters are started before the clock starts; their start-up is not counted.  Each
job also pays a fixed 25-60 ms (submitting, the first and last task's round trips, the
index): keep ``--gb`` at 1 or more, so that the ratios measure throughput.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import nullcontext

from exchange_data import copy_shard  # (benchmarks/ is on sys.path: a script, suite.py)

from htools import tar
from htools.mapper import map_shards  # imported before any clock starts, as the loop's modules
from htools.runtime.memory import rss as _rss


def identity(sample):
    return sample


def make_shards(folder: str, gb: float, sample_kib: int = 16, shards: int = 16) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    per_shard = max(1, int(gb * (1 << 30) / (sample_kib << 10) / shards))
    payload = os.urandom(sample_kib << 10)
    urls = []
    for s in range(shards):
        url = os.path.join(folder, f"in-{s:04d}.tar")
        with open(url, "wb") as f, tar.TarWriter(f) as w:
            for i in range(per_shard):
                w.write({"__key__": f"s{s}/{i:07d}", "bin": payload[i % 97:] + payload[:i % 97],
                         "cls": str(i % 10).encode()})
        urls.append(url)
    return urls


def make_tiny(folder: str, n: int) -> list[str]:
    """``n`` shards of one ~200-byte sample each."""
    os.makedirs(folder, exist_ok=True)
    urls = []
    for s in range(n):
        url = os.path.join(folder, f"t-{s:06d}.tar")
        with open(url, "wb") as f, tar.TarWriter(f) as w:
            w.write({"__key__": f"t{s:06d}", "txt": b"x" * 190, "cls": str(s % 10).encode()})
        urls.append(url)
    return urls


def settled(folder: str) -> None:
    """``folder`` removed (an earlier run's outputs) and every write on the machine on
    disk: a timed run then starts with no writeback under way.  Without it a run paid for
    the one before (its outputs' writeback, and replacing or removing files still being
    written back: iowait ~0.3 s a 0.5 GB job, a 2-worker job at 1.4 cores busy, not 1.9)."""
    shutil.rmtree(folder, ignore_errors=True)
    os.sync()


def baseline_loop(inputs: list[str], out_dir: str) -> float:
    """One process: read each shard with htools' codec and write it back out."""
    settled(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    for url in inputs:
        copy_shard(url, os.path.join(out_dir, os.path.basename(url)))
    return time.perf_counter() - t0




class _RssWatch:
    """Samples this process's RSS every 50 ms while a job runs."""

    def __init__(self):
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append((time.perf_counter(), _rss()))

    def __enter__(self) -> _RssWatch:  # noqa: PYI034
        self.t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.t1 = time.perf_counter()

    def at(self, fraction: float) -> int:
        """Peak RSS up to ``fraction`` of the run."""
        until = self.t0 + fraction * (self.t1 - self.t0)
        return max([r for t, r in self.samples if t <= until] or [_rss()])


def _cpu_seconds() -> float:
    """CPU seconds of this process so far, all its threads (run on a worker too)."""
    t = os.times()
    return t.user + t.system


def timed_mapper(inputs: list[str], out_pattern: str, workers: int,
                 watch: _RssWatch | None = None, index: bool = True,
                 cpu: dict | None = None) -> float:
    """Seconds of one htmapper job (identity) on a fresh cluster of ``workers``; ``cpu``
    (a dict) gets the job's CPU seconds: ``client`` (this process: the client and the
    embedded scheduler) and ``workers`` (their sum), the reliable figures when other
    work shares the machine; where the sha256 went (see :func:`_hash_choices`); and
    the seconds its task threads were busy (Dask's task stream) beside its wall time."""
    from distributed import Client, LocalCluster, get_task_stream

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=40,  # as htools' embedded one:
                      preload=["htools.clusters.workerinit"]) as cluster, Client(cluster) as c:
        c.run(lambda: None)  # workers are up
        w0, c0 = c.run(_cpu_seconds), _cpu_seconds()
        h0 = c.run(_hash_choices) if cpu is not None else {}
        tasks = get_task_stream(client=c) if cpu is not None else nullcontext()
        settled(os.path.dirname(out_pattern))
        t0 = time.perf_counter()
        with watch if watch is not None else nullcontext(), tasks as stream:
            summary = map_shards(inputs, out_pattern, identity, client=c, quiet=True,
                                 overwrite=True, index=index)
        elapsed = time.perf_counter() - t0
        if cpu is not None:
            c1, w1 = _cpu_seconds(), c.run(_cpu_seconds)
            cpu.update(client=c1 - c0, workers=sum(w1[w] - w0[w] for w in w0),
                       hashed=[{k: n - h0[w][k] for k, n in h.items()}
                               for w, h in c.run(_hash_choices).items()],
                       wall=elapsed, tasks=sum(s["stop"] - s["start"] for t in stream.data
                                               for s in t["startstops"]
                                               if s["action"] == "compute"))
    if not summary.ok:
        sys.exit(f"htmapper failed: {summary.failures[:1]}")
    return elapsed


def thread_costs(inputs: list[str], out_dir: str) -> tuple[float, float]:
    """CPU seconds of :func:`htools.maptask.map_shard` (identity, index on) over
    ``inputs`` in this process: its task thread's (this thread) and the hashing
    thread's, the sha256 sent to that thread whatever the machine's load."""
    from htools.maptask import map_shard
    from htools.runtime import hashing
    from htools.usercode.script import load_script

    settled(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    script = load_script(identity, one_of=("process_sample",))
    spare, hashing.spare_core = hashing.spare_core, lambda: True
    try:
        task0, hashed0 = time.thread_time(), hashing._hashed[0]
        for i, url in enumerate(inputs):
            r = map_shard(url, os.path.join(out_dir, f"o-{i:04d}.tar"), script, options={})
            if r.get("error"):
                sys.exit(f"map_shard failed: {r['error']}")
        return time.thread_time() - task0, hashing._hashed[0] - hashed0
    finally:
        hashing.spare_core = spare


def _hash_choices() -> dict:
    """Run on a worker: how many of its outputs' sha256 went to the hashing thread and
    how many were hashed inline (:func:`htools.runtime.hashing.spare_core`), and the
    seconds its tasks waited for that thread (``ahead``: with its queue full; ``end``:
    at each output's end), so far."""
    from htools.runtime import hashing

    return {**hashing.CHOSEN, **hashing.WAITED}


def _per_mb(cpu: dict, mb: float) -> str:
    thread, inline, ahead, end = (sum(d.get(k, 0) for d in cpu.get("hashed", ()))
                                  for k in ("thread", "inline", "ahead", "end"))
    return (f"ms of CPU a MB: workers {cpu['workers'] / mb * 1e3:.2f}, "
            f"client+scheduler {cpu['client'] / mb * 1e3:.2f}; sha256 on the hashing thread "
            f"for {thread} of {thread + inline} outputs, the tasks waiting for it "
            f"{ahead:.2f} s (queue full) + {end:.2f} s (outputs' ends); task threads busy "
            f"{cpu.get('tasks', 0.0):.2f} s in the job's {cpu.get('wall', 0.0):.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="GB of samples per sample size")
    ap.add_argument("--kib", default="16", help="sample sizes in KiB, comma-separated")
    ap.add_argument("--tiny", type=int, default=0,
                    help="also run htmapper (2 workers) over this many tiny shards")
    ap.add_argument("--no-two", action="store_true", help="skip the 2-worker runs")
    ap.add_argument("--index-off", action="store_true",
                    help="also run 1 worker without the shard index (no sha256)")
    ap.add_argument("--threads", action="store_true",
                    help="also the CPU a MB of the task and hashing threads, in this process")
    ap.add_argument("--quick", action="store_true", help="a tiny run to check the harness")
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    gb = 0.03 if a.quick else a.gb
    work = a.dir or tempfile.mkdtemp(prefix="bench-mapper-")
    rows = []
    try:
        for kib in [int(k) for k in a.kib.split(",")]:
            inputs = make_shards(os.path.join(work, f"in{kib}"), gb, sample_kib=kib)
            n = len(inputs)
            mb = sum(os.path.getsize(u) for u in inputs) / 1e6
            c0 = _cpu_seconds()
            base = min(baseline_loop(inputs, os.path.join(work, "loop")) for _ in range(2))
            loop_cpu = (_cpu_seconds() - c0) / 2
            cpu1: dict = {}
            one = timed_mapper(inputs, os.path.join(work, "m1", f"out-@{n:04d}.tar"), 1,
                               cpu=cpu1)
            rows.append((f"htmapper {kib} KiB: 1 worker vs single-process loop", base / one,
                         ">= 0.9", f"{mb / one:.0f} vs {mb / base:.0f} MB/s ({mb:.0f} MB)"))
            rows.append((f"htmapper {kib} KiB: CPU a MB, 1 worker / loop", cpu1["workers"]
                         / loop_cpu, "info", _per_mb(cpu1, mb) + f"; loop {loop_cpu / mb * 1e3:.2f}"))
            if a.threads:
                loop0 = time.thread_time()
                baseline_loop(inputs, os.path.join(work, "loop"))
                loop_t = time.thread_time() - loop0
                task, hashing = thread_costs(inputs, os.path.join(work, "m1"))
                rows.append((f"htmapper {kib} KiB: task thread CPU a MB / loop's", task / loop_t,
                             "info", f"ms of CPU a MB: task thread {task / mb * 1e3:.2f}, "
                             f"hashing thread {hashing / mb * 1e3:.2f}, loop "
                             f"{loop_t / mb * 1e3:.2f}"))
            if a.index_off:
                off = timed_mapper(inputs, os.path.join(work, "m1", f"out-@{n:04d}.tar"), 1,
                                   index=False)
                rows.append((f"htmapper {kib} KiB, no index: 1 worker vs loop", base / off,
                             "info", f"{mb / off:.0f} vs {mb / base:.0f} MB/s"))
                if not a.no_two:  # what the second worker gives when no sha256 shares the cores
                    off2 = timed_mapper(inputs, os.path.join(work, "m2", f"out-@{n:04d}.tar"),
                                        2, index=False)
                    rows.append((f"htmapper {kib} KiB, no index: 2 workers vs 1 worker",
                                 off / off2, "info", f"{mb / off2:.0f} vs {mb / off:.0f} MB/s"))
            if not a.no_two:
                cpu2: dict = {}
                two = timed_mapper(inputs, os.path.join(work, "m2", f"out-@{n:04d}.tar"), 2,
                                   cpu=cpu2)
                rows.append((f"htmapper {kib} KiB: 2 workers vs 1 worker", one / two, ">= 1.7",
                             f"{mb / two:.0f} vs {mb / one:.0f} MB/s"))
                rows.append((f"htmapper {kib} KiB: CPU a MB, 2 workers / 1 worker",
                             (cpu2["workers"] + cpu2["client"]) / (cpu1["workers"] + cpu1["client"]),
                             "info", _per_mb(cpu2, mb)))
            for d in (f"in{kib}", "loop", "m1", "m2"):
                shutil.rmtree(os.path.join(work, d), ignore_errors=True)
        empties = [os.path.join(work, "empty", f"e-{i:04d}.tar")
                   for i in range(100 if not a.quick else 20)]
        os.makedirs(os.path.dirname(empties[0]), exist_ok=True)
        for e in empties:
            with open(e, "wb") as f, tar.TarWriter(f):
                pass
        empty = timed_mapper(empties, os.path.join(work, "me", f"o-@{len(empties):04d}.tar"), 2)
        rows.append(("fixed cost per empty shard (ms, 2 workers, per task)",
                     empty * 2 / len(empties) * 1000, "<= 50",
                     f"{len(empties)} shards in {empty:.2f}s"))
        if a.tiny:
            tiny = make_tiny(os.path.join(work, "tiny"), a.tiny)
            watch = _RssWatch()
            t = timed_mapper(tiny, os.path.join(work, "mt", f"o-@{len(tiny):06d}.tar"), 2,
                             watch)
            quarter, end = watch.at(0.25), watch.at(1.0)
            rows.append((f"htmapper {len(tiny)} tiny shards, 2 workers: shards/s", len(tiny) / t,
                         ">= 250", (f"{t:.1f}s; client RSS {quarter / 2**20:.0f} MiB at 1/4, "
                                    f"{end / 2**20:.0f} MiB at the end")))
        print(f"bench_mapper: 16 shards of {gb:g} GB per sample size")
        print(f"{'measure':55} {'ratio':>8}  {'goal':8} detail")
        for name, ratio, goal, detail in rows:
            print(f"{name:55} {ratio:8.2f}  {goal:8} {detail}")
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
