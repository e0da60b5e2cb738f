"""htshuffle / htsort / htmapper at 10^3 to 10^5 tiny shards, and the 100 TB model.

    .venv/bin/python benchmarks/bench_scale.py [--quick] [--n 1024,4096,16384]
        [--sort-n 1024,4096] [--map-n 16384,65536] [--p2p-n 1024,4096] [--out FILE]

Tiny shards: 20,480 samples of about 200 bytes spread over N shards (at least one
sample a shard), written with htools' TarWriter before any clock starts.  Each job
runs in its own child process (``--child``) on a fresh LocalCluster of 2 worker
processes with 1 thread each, so the child's peak RSS (``VmHWM``) is this job's
client (and embedded scheduler) alone.  Measured per job: wall seconds, seconds per
shard, client peak RSS, and from the exchange's ``summary.extra`` the merge levels,
tasks per level, runs (x2 = range requests) per task, stage-1 and write tasks, and
the scratch objects made (runs of stage 1 + one run per merge task).

Baselines, from the same run: Dask's P2P shuffle of the same rows (a dask DataFrame
of N partitions, ``shuffle(on="key", npartitions=N, shuffle_method="p2p")`` ->
``to_parquet``), and htshuffle at the smallest N.  Printed ratios are
``baseline seconds / htools seconds`` (above 1: htools is faster) or, for
seconds per shard, ``at N / at the smallest N`` (1 = flat).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES = 20_480
SAMPLE_BYTES = 200
MIB = 1 << 20
LEVELS_MEMORY, LEVELS_FAN_IN = 1 << 20, 16  # the "levels" variant: forces a merge level
EXCHANGE = ("shuffle", "sort", "levels")


# ------------------------------------------------------------------ data --

def make_tiny(folder: str, n: int, samples: int = SAMPLES, seed: int = 0) -> list[str]:
    """``n`` shards holding ``max(samples, n)`` samples of ~200 bytes, round robin."""
    from htools import tar

    os.makedirs(folder, exist_ok=True)
    total = max(samples, n)
    rng = random.Random(seed)
    blob = os.urandom(SAMPLE_BYTES + 4096)
    urls = [os.path.join(folder, f"in-{s:06d}.tar") for s in range(n)]
    per = [total // n + (s < total % n) for s in range(n)]
    for s, url in enumerate(urls):
        with open(url, "wb") as f, tar.TarWriter(f) as w:
            for _ in range(per[s]):
                at = rng.randrange(4096)
                w.write({"__key__": f"{rng.getrandbits(64):016x}",
                         "bin": blob[at:at + SAMPLE_BYTES - 24],
                         "score": f"{rng.random():.6f}".encode()})
    return urls


# ------------------------------------------------------------ child side --

def identity(sample):
    return sample


def child(args: dict) -> dict:
    """One job on a fresh 2-worker LocalCluster, in this (fresh) process."""
    from distributed import Client, LocalCluster

    import htools
    from htools import shards
    from htools.runtime.memory import peak_rss

    kind, folder, n = args["kind"], args["folder"], args["n"]
    # the inputs as a user names them, a brace pattern (the job expands it once)
    inputs = os.path.join(folder, f"in-{{000000..{n - 1:06d}}}.tar")
    out = args["out"]
    pattern = os.path.join(out, f"out-@{n:06d}.tar")
    frame = _frame(shards.expand(inputs)) if kind == "p2p" else None
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=40) as c, Client(c) as client:
        client.run(lambda: __import__("htools.exchange") and None)
        rss_before = peak_rss()
        prof = None
        if args.get("profile"):
            from pyinstrument import Profiler

            prof = Profiler(interval=0.005)
            prof.start()
        t0 = time.perf_counter()
        extra: dict = {}
        if kind == "shuffle":
            s = htools.shuffle(inputs, pattern, client=client, quiet=True, overwrite=True)
            extra = s.extra
        elif kind == "levels":  # small budget and fan-in: merge levels at this N
            s = htools.shuffle(inputs, pattern, client=client, quiet=True, overwrite=True,
                               memory=LEVELS_MEMORY, fan_in=LEVELS_FAN_IN)
            extra = s.extra
        elif kind == "sort":
            s = htools.sort(inputs, pattern, key="score", key_type="float", client=client,
                            quiet=True, overwrite=True)
            extra = s.extra
        elif kind == "mapper":
            s = htools.map_shards(inputs, pattern, identity, client=client, quiet=True,
                                  overwrite=True)
        else:
            s = None
            _p2p(frame, out, n)
        seconds = time.perf_counter() - t0
        if prof is not None:
            prof.stop()
            Path(args["profile"]).write_text(prof.output_text(unicode=False, color=False,
                                                              show_all=False))
    if s is not None and not s.ok:
        f = s.failures[0] if s.failures else {"error": "summary not ok, no failure listed"}
        print(json.dumps({"kind": kind, "n": n, "failed": f["error"],
                          "traceback": f.get("traceback", "")}))
        raise SystemExit(1)
    shutil.rmtree(out, ignore_errors=True)
    keep = ("levels", "stage1_tasks", "inputs_per_task", "runs", "write_tasks",
            "outputs_per_task", "max_runs_per_write", "fan_in", "memory_budget",
            "intermediate_merges", "peak_rss")
    return {"kind": kind, "n": n, "seconds": seconds, "client_rss": peak_rss(),
            "client_rss_before_job": rss_before,
            "extra": {k: extra[k] for k in keep if k in extra}}


def _frame(inputs: list[str]):
    """The same rows as a pandas DataFrame (key str, bin and score bytes), untimed."""
    import pandas as pd

    from htools import storage, tar

    rows = []
    for url in inputs:
        with storage.open_read(url) as raw:
            for s in tar.read_samples(tar.open_stream_reader(raw, url), url):
                rows.append((s["__key__"], s["bin"], s["score"]))
    return pd.DataFrame(rows, columns=["key", "bin", "score"])


def _p2p(frame, out: str, n: int) -> None:
    import dask
    import dask.dataframe as dd
    import pyarrow as pa

    dask.config.set({"dataframe.convert-string": False})  # bin and score stay bytes
    df = dd.from_pandas(frame, npartitions=n, sort=False)
    df = df.shuffle(on="key", npartitions=n, shuffle_method="p2p")
    df.to_parquet(out, compression=None, write_index=False,
                  schema=pa.schema([("key", pa.string()), ("bin", pa.binary()),
                                    ("score", pa.binary())]))


# ----------------------------------------------------------- parent side --

def measure(kind: str, folder: str, n: int, work: str, profile: str | None = None) -> dict:
    args = {"kind": kind, "folder": folder, "n": n, "out": os.path.join(work, f"out-{kind}-{n}"),
            "profile": profile}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)],
                          capture_output=True, text=True)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode != 0:  # recorded and reported; the other jobs still run
        try:
            return json.loads(last)
        except ValueError:
            return {"kind": kind, "n": n, "failed": proc.stderr[-2000:]}
    r = json.loads(last)
    r["process_seconds"] = time.perf_counter() - t0
    return derive(r)


def derive(r: dict) -> dict:
    """Per-shard time, tasks, requests and scratch objects from a raw measurement."""
    n, x = r["n"], r.get("extra", {})
    r["s_per_shard"] = r["seconds"] / n
    if r["kind"] in EXCHANGE:
        levels = x.get("levels", [])
        merge_tasks = sum(lv["tasks"] for lv in levels)
        tasks = x.get("stage1_tasks", 0) + merge_tasks + x.get("write_tasks", 0)
        r.update(levels=len(levels), level_tasks=[lv["tasks"] for lv in levels],
                 tasks=tasks,
                 max_requests_per_task=2 * max([x.get("max_runs_per_write", 0)]
                                               + [lv["runs_per_task"] for lv in levels]),
                 scratch_objects=x.get("runs", 0) + merge_tasks)
    else:
        r.update(levels=0, level_tasks=[], tasks=n, max_requests_per_task=None,
                 scratch_objects=0 if r["kind"] == "mapper" else None)
    r["tasks_per_s"] = r["tasks"] / r["seconds"]
    return r


def run(work: str, ns: list[int], sort_ns: list[int], map_ns: list[int], p2p_ns: list[int],
        out: str | None, profile_n: int | None = None, levels_ns: list[int] = ()) -> dict:
    results: list[dict] = []

    def save() -> None:
        if out:
            Path(out).write_text(json.dumps({"scale": results}, indent=1))

    order = []  # (kind, n): the goal comparisons first, so a partial run still answers
    for n in sorted(set(ns) | set(p2p_ns)):
        if n in ns:
            order.append(("shuffle", n))
        if n in p2p_ns:
            order.append(("p2p", n))
    order += [("sort", n) for n in sort_ns] + [("mapper", n) for n in map_ns]
    order += [("levels", n) for n in levels_ns]
    made: dict[int, str] = {}
    for kind, n in order:
        if n not in made:
            for old in list(made):  # one dataset on disk at a time
                shutil.rmtree(made.pop(old), ignore_errors=True)
            step(f"making {n} tiny shards")
            made[n] = os.path.dirname(make_tiny(os.path.join(work, f"in-{n}"), n)[0])
        step(f"{kind} at {n} shards")
        prof = os.path.join(work, f"profile-{kind}-{n}.txt") if profile_n == n else None
        r = measure(kind, made[n], n, work, prof)
        if prof:
            r["profile"] = Path(prof).read_text()
        results.append(r)
        step(f"  {fmt_result(r)}")
        save()
    return {"scale": results}


def ratios(results: list[dict]) -> list[dict]:
    """Goal rows in suite.py's row format, from one run's measurements (jobs with a
    note, e.g. measured under other load, are left out of the ratios)."""
    results = [r for r in ok(results) if not r.get("note")]
    by = {(r["kind"], r["n"]): r for r in results}
    rows = []
    shuf = sorted(n for k, n in by if k == "shuffle")
    if shuf:
        a = by[("shuffle", shuf[0])]
        for n in shuf[1:]:
            b = by[("shuffle", n)]
            # seconds per shard at n vs at the smallest: as a ratio base/ours, with the
            # htools column the per-shard time at n scaled to the smallest n's shard count
            rows.append(_row(f"htshuffle scale: s per shard at {n} vs at {shuf[0]} shards "
                             "(tiny shards, N -> N)", b["s_per_shard"] * a["n"], a["seconds"],
                             f">= {1 / 1.3:.2f}" if n == shuf[-1] else "info",
                             b["client_rss"], a["client_rss"], mem_label="client"))
    for n in sorted(n for k, n in by if k == "p2p"):
        if ("shuffle", n) in by:
            h, p = by[("shuffle", n)], by[("p2p", n)]
            rows.append(_row(f"htshuffle vs dask P2P shuffle, {n} -> {n} tiny shards",
                             h["seconds"], p["seconds"], ">= 1.0", h["client_rss"],
                             p["client_rss"], mem_label="client"))
    for kind, tool in (("sort", "htsort"), ("mapper", "htmapper")):
        ns = sorted(n for k, n in by if k == kind)
        if len(ns) > 1:
            a, b = by[(kind, ns[0])], by[(kind, ns[-1])]
            rows.append(_row(f"{tool} scale: s per shard at {ns[-1]} vs at {ns[0]} shards",
                             b["s_per_shard"] * a["n"], a["seconds"], "info", b["client_rss"],
                             a["client_rss"], mem_label="client"))
    return rows


def ok(results: list[dict]) -> list[dict]:
    """Jobs that ran to the end (not failed, not left unmeasured)."""
    return [r for r in results if "failed" not in r and "missing" not in r]


def _row(name, ours, base, goal, mem, base_mem, mem_label):
    return {"operation": name, "htools_s": ours, "baseline_s": base, "ratio": base / ours,
            "goal": goal, "mem": mem, "base_mem": base_mem, "mb": None, "mem_label": mem_label}


def fmt_result(r: dict) -> str:
    if "failed" in r:
        return f"{r['kind']} {r['n']}: FAILED: {r['failed']}"
    if "missing" in r:
        return f"{r['kind']} {r['n']}: not measured: {r['missing']}"
    s = (f"{r['kind']} {r['n']}: {r['seconds']:.1f} s, {r['s_per_shard'] * 1000:.2f} ms/shard, "
         f"client {r['client_rss'] / MIB:.0f} MiB, {r['tasks']} tasks")
    if r["kind"] in EXCHANGE:
        s += (f", levels {r['level_tasks'] or 0}, max requests/task "
              f"{r['max_requests_per_task']}, scratch objects {r['scratch_objects']}")
    return s


# ------------------------------------------------------- markdown section --

def table(results: list[dict]) -> list[str]:
    lines = ["| job | shards N -> M | seconds | ms per shard | client peak RSS | tasks "
             "(stage 1 / merges / writes) | merge levels (tasks) | max requests per task "
             "| scratch objects | tasks per s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    name = {"shuffle": "htshuffle", "sort": "htsort (float key)", "mapper": "htmapper identity",
            "p2p": "dask P2P shuffle",
            "levels": f"htshuffle, memory {LEVELS_MEMORY >> 20} MiB, F = {LEVELS_FAN_IN}"}
    for r in results:
        if "missing" in r:
            lines.append(f"| {name[r['kind']]} | {r['n']} -> {r['n']} | not measured: "
                         f"{r['missing']} | | | | | | | |")
            continue
        if "failed" in r:
            lines.append(f"| {name[r['kind']]} | {r['n']} -> {r['n']} | failed: "
                         f"{r['failed'][:120].replace('|', '/')} | | | | | | | |")
            continue
        x = r.get("extra", {})
        if r["kind"] in EXCHANGE:
            tasks = (f"{r['tasks']} ({x.get('stage1_tasks')} / {sum(r['level_tasks'])} / "
                     f"{x.get('write_tasks')})")
            lv = f"{r['levels']} ({', '.join(map(str, r['level_tasks'])) or '-'})"
            req, scratch = str(r["max_requests_per_task"]), str(r["scratch_objects"])
        else:
            tasks = str(r["tasks"]) if r["kind"] == "mapper" else "—"
            lv, req, scratch = "—", "—", "—"
        tps = f"{r['tasks_per_s']:.0f}" if r["kind"] != "p2p" else "—"
        star = " (*)" if r.get("note") else ""
        lines.append(f"| {name[r['kind']]}{star} | {r['n']} -> {r['n']} | {r['seconds']:.1f} | "
                     f"{r['s_per_shard'] * 1000:.1f} | {r['client_rss'] / MIB:.0f} MiB | "
                     f"{tasks} | {lv} | {req} | {scratch} | {tps} |")
    notes = sorted({r["note"] for r in results if r.get("note")})
    if notes:
        lines += ["", *[f"(*) {n}" for n in notes]]
    return lines


def goals(results: list[dict]) -> list[str]:
    """The issue's goals at scale, met or missed, from one run's measurements."""
    failed = [r for r in results if "failed" in r]
    results = ok(results)
    by = {(r["kind"], r["n"]): r for r in results}
    shuf = sorted(n for k, n in by if k == "shuffle")
    tool = {"shuffle": "htshuffle", "sort": "htsort", "levels": "htshuffle (1 MiB, F = 16)",
            "mapper": "htmapper", "p2p": "dask P2P"}
    out = []
    tail = [f"* {tool[r['kind']]} {r['n']} -> {r['n']} completes: **missed**, it failed with "
            f"`{r['failed'].split(' (an htools bug')[0][:160]}` (an htools bug: see NOTES below)"
            for r in failed]
    if not shuf:
        return out + tail
    lo, hi = by[("shuffle", shuf[0])], by[("shuffle", shuf[-1])]
    mark = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    out.append(f"* htshuffle {hi['n']} -> {hi['n']} tiny shards completes on this machine: "
               f"met ({hi['seconds']:.1f} s).")
    grow = hi["s_per_shard"] / lo["s_per_shard"]
    out.append(f"* seconds per shard at {hi['n']} at most 1.3x those at {lo['n']}: "
               f"{grow:.2f}x, {mark(grow <= 1.3)}.")
    out.append(f"* client peak RSS at {hi['n']} at most 400 MB: {hi['client_rss'] / 1e6:.0f} MB, "
               f"{mark(hi['client_rss'] <= 400e6)}.")
    p2p = sorted(n for k, n in by if k == "p2p")
    for n in p2p:
        if ("shuffle", n) in by:
            h, p = by[("shuffle", n)], by[("p2p", n)]
            good = h["seconds"] <= p["seconds"] and h["client_rss"] < p["client_rss"]
            out.append(f"* htshuffle at least as fast as Dask P2P at {n} -> {n}, with less client "
                       f"memory: {h['seconds']:.1f} s vs {p['seconds']:.1f} s "
                       f"({p['seconds'] / h['seconds']:.1f}x), client {h['client_rss'] / MIB:.0f} "
                       f"vs {p['client_rss'] / MIB:.0f} MiB, {mark(good)}.")
    if p2p and hi["n"] > p2p[-1]:
        p = by[("p2p", p2p[-1])]
        est = p["s_per_shard"] * hi["n"]
        good = hi["seconds"] <= est and hi["client_rss"] < p["client_rss"]
        out.append(f"* at {hi['n']} -> {hi['n']}: P2P was not run at that size (about "
                   f"{est / 60:.0f} min at its {p['s_per_shard'] * 1000:.0f} ms a partition at "
                   f"{p['n']}, the flat cost the issue reports); htshuffle took "
                   f"{hi['seconds']:.1f} s, {est / hi['seconds']:.0f}x less than that "
                   f"extrapolation, client {hi['client_rss'] / MIB:.0f} MiB vs P2P's "
                   f"{p['client_rss'] / MIB:.0f} MiB at {p['n']}: {mark(good)} (extrapolated).")
    return out + tail


def plan_at(n: int, shard_bytes: int, memory: int, workers: int, fan: int,
            dedup_pass: bool = False):
    """The exchange's plan for n inputs of shard_bytes into n outputs (htsort; no I/O):
    the very plan_exchange the run and --dry-run use."""
    from htools.exchange import plan_exchange

    return plan_exchange(inputs=n, shard_bytes=shard_bytes, outputs=n, memory=memory,
                         workers=workers, shuffle=False, fan=fan, dedup_pass=dedup_pass)


def model(results: list[dict], fans=(256, 1000), workers=(100, 1000), n=100_000,
          shard_bytes=10**9, memory=4 << 30) -> dict:
    """The exchange's plan at 100 TB, from htools.exchange.plan_exchange (no I/O)."""
    results = ok(results)
    total = n * shard_bytes
    client = _client_fit(results)
    tps = _tasks_per_s(results)
    out = []
    for w in workers:
        for f in fans:
            p = plan_at(n, shard_bytes, memory, w, f)
            lvls = [{"tasks": lv.tasks, "runs_per_task": lv.runs_per_task,
                     "requests": 2 * lv.ranges, "bytes_per_request": total / lv.ranges}
                    for lv in p.levels]
            out.append({
                "workers": w, "fan_in": f, "memory": memory, "stage1_tasks": p.stage1_tasks,
                "inputs_per_task": p.inputs_per_task, "runs": p.runs, "levels": lvls,
                "write_tasks": p.write_tasks, "outputs_per_task": p.outputs_per_task,
                "runs_per_write": p.runs_per_write,
                "write_requests": 2 * p.write_ranges,
                "write_bytes_per_request": total / p.write_ranges,
                "passes": p.passes,
                "tasks": p.tasks,
                "client_bytes": client["base"] + client["per_shard"] * (2 * n) + 64 * p.runs,
                "scheduler_s": p.tasks / tps if tps else None,
            })
    return {"n": n, "shard_bytes": shard_bytes, "memory": memory, "client_fit": client,
            "tasks_per_s": tps, "rows": out,
            "dedup": dedup_model(fans, workers, n, shard_bytes, memory),
            "list_join": list_join_model(fans, workers, n, shard_bytes, memory),
            "selection": selection_model(workers, n, memory=memory)}


def dedup_model(fans=(256, 1000), workers=(100, 1000), n=100_000, shard_bytes=10**9,
                memory=4 << 30) -> list[dict]:
    """htsort --dedup F --key K (K not F) at 100 TB as the semi-join on digests, from
    htools.exchange.plan_exchange: stage 1 by K with each sample's digest record (F's
    sha256, place, sort bucket) beside, the decide tasks (one digest range each, writing
    drop runs by sort bucket), the sort's merge levels, the writes applying the drops
    (no I/O).  ``pass_*``: the dedup pass it replaced (still run with a reduce)."""
    out = []
    for w in workers:
        for f in fans:
            p = _semijoin_plan(n, shard_bytes, memory, w, f)
            old = plan_at(n, shard_bytes, memory, w, f, dedup_pass=True)
            plain = plan_at(n, shard_bytes, memory, w, f)
            out.append({"workers": w, "fan_in": f, "stage1_tasks": p.stage1_tasks,
                        "decide_tasks": p.decide_tasks,
                        "digest_bytes": n * shard_bytes // DIGEST_SHARE,
                        "levels": [lv.tasks for lv in p.levels],
                        "write_tasks": p.write_tasks, "passes": p.passes,
                        "plain_passes": plain.passes, "pass_passes": old.passes,
                        "write_requests": 2 * p.write_ranges,
                        "plain_write_requests": 2 * plain.write_ranges, "tasks": p.tasks})
    return out


DIGEST_SHARE = 64  # stage 1's digest records, as the plan estimates them (plan.DIGEST_SHARE)
LIST_ENTRIES = 10**9  # the large --keep list of the model (DataComp-size: 10^9 uids)


def _semijoin_plan(n: int, shard_bytes: int, memory: int, workers: int, fan: int,
                   table: int = 0):
    from htools.exchange import plan_exchange

    return plan_exchange(inputs=n, shard_bytes=shard_bytes, outputs=n, memory=memory,
                         workers=workers, shuffle=False, fan=fan, semijoin=True, table=table)


def list_join_model(fans=(256, 1000), workers=(100, 1000), n=100_000, shard_bytes=10**9,
                    memory=4 << 30, entries=LIST_ENTRIES) -> list[dict]:
    """htsort --keep LIST of ``entries`` values at 100 TB, the list joined through the
    exchange (a 16-byte digest a value: larger than a worker fetches): per decide task,
    its table slice and digest records; requests (a bound pair and one partition's high
    halves for each of the slice's two edges, the two halves of the slice: 6 a decide
    task; each write task reads its buckets of every drop run); passes over the data (no
    I/O)."""
    table = 16 * entries
    out = []
    for w in workers:
        for f in fans:
            p = _semijoin_plan(n, shard_bytes, memory, w, f, table)
            plain = plan_at(n, shard_bytes, memory, w, f)
            digests = n * shard_bytes // DIGEST_SHARE
            out.append({"workers": w, "fan_in": f, "table_bytes": table,
                        "decide_tasks": p.decide_tasks,
                        "table_bytes_per_decide": table // p.decide_tasks,
                        "digest_bytes_per_decide": digests // p.decide_tasks,
                        "decide_requests": p.decide_tasks * 6,
                        "drop_requests": 2 * p.write_tasks * p.decide_tasks,
                        "passes": p.passes, "plain_passes": plain.passes, "tasks": p.tasks})
    return out


def list_join_lines(rows: list[dict] | None = None) -> list[str]:
    """The README lines of :func:`list_join_model`."""
    rows = rows or list_join_model()
    lines = [
        "",
        f"`htsort --keep LIST` with {LIST_ENTRIES:,} listed values at the same size: the "
        f"digest table ({rows[0]['table_bytes'] / 1e9:.0f} GB) is more than a worker fetches "
        "(a quarter of `--memory`), so the list joins through the exchange: stage 1 writes "
        "each sample's value digest and place beside its runs, each decide task reads one "
        "contiguous slice of the table and its digest range, and the write tasks drop what "
        "the drop runs list (`bench_scale.list_join_model`):",
        "",
        "| W workers | F | decide tasks | table bytes per decide task | digest bytes per "
        "decide task | decide requests | drop-run requests of the writes | passes over the "
        "data (plain sort) | tasks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['fan_in']} | {r['decide_tasks']:,} | "
            f"{r['table_bytes_per_decide'] / 1e6:.1f} MB | "
            f"{r['digest_bytes_per_decide'] / 1e6:.0f} MB | {r['decide_requests']:,} | "
            f"{r['drop_requests']:,} | {r['passes']} ({r['plain_passes']}) | {r['tasks']:,} |")
    return lines


def selection_model(workers=(100, 1000), n=100_000, samples_per_shard=10_000,
                    listed=10**9, value_bytes=33, memory=4 << 30) -> dict:
    """htmapper/htextract --keep with a list of ``listed`` values over 100 TB (``n`` shards
    of ``samples_per_shard`` samples), both lookup modes, from the table's own constants
    (htools.selection.table; no I/O).  Whole: every worker process fetches the table once
    (one streamed read) and memory-maps it.  By partition (the default when the table
    exceeds the budget, ``memory``): a worker holds at most ``memory`` bytes of partitions;
    samples' digests are uniform, so a lookup finds its partition held with probability
    budget / table, else fetches it (2 range requests: high and low halves)."""
    from htools.selection import table as tables

    table = 16 * listed
    bits = tables.part_bits(listed)
    part = table / 2 ** bits
    samples = n * samples_per_shard
    held = min(1.0, memory / table)
    out = []
    for w in workers:
        per = samples / w
        fetches = per * (1 - held)
        out.append({"workers": w, "samples_per_worker": per,
                    "whole_bytes": table, "whole_requests": 1,
                    "part_bytes": 8 * (2 ** bits + 1) + fetches * part,
                    "part_requests": 1 + 2 * fetches, "part_held": min(memory, table)})
    return {"listed": listed, "table": table, "list_bytes": listed * value_bytes,
            "partitions": 2 ** bits, "partition_bytes": part, "memory": memory,
            "samples": samples, "rows": out}


def selection_lines(m: dict) -> list[str]:
    lines = [
        f"`htmapper --keep LIST` (or htextract) over the same 100 TB, {m['samples']:,} samples "
        f"(10,000 a 1 GB shard), with a list of {m['listed']:,} values "
        f"(`bench_scale.selection_model`): the client reads the list once "
        f"({m['list_bytes'] / 1e9:.0f} GB of {m['list_bytes'] // m['listed']}-byte values) "
        f"and writes its table once ({m['table'] / 1e9:.0f} GB of 128-bit digests, "
        f"{m['partitions']:,} partitions of {m['partition_bytes'] / 1e3:.0f} KB); the job "
        "itself makes one pass over the data in both modes.",
        "",
        "| W workers | samples a worker | whole table: bytes a worker, requests | by "
        "partition: bytes a worker (held at most), range requests a worker | all workers: "
        "whole vs by partition |",
        "|---|---|---|---|---|",
    ]
    for r in m["rows"]:
        w = r["workers"]
        lines.append(
            f"| {w} | {r['samples_per_worker']:,.0f} | {r['whole_bytes'] / 1e9:.0f} GB, "
            f"{r['whole_requests']} | {r['part_bytes'] / 1e9:,.0f} GB "
            f"({r['part_held'] / 2**30:.0f} GiB), {r['part_requests']:,.0f} | "
            f"{w * r['whole_bytes'] / 1e12:.1f} TB vs {w * r['part_bytes'] / 1e12:.0f} TB |")
    lines += [
        "",
        "By partition bounds each worker's memory; its traffic is about one partition "
        "and 2 range requests a sample (digests are uniform: a lookup finds its partition "
        "held with probability budget / table), against one streamed read of the whole "
        "table: fewer bytes when a worker looks up fewer samples than the table has "
        "partitions (1000 workers here), more otherwise (100 workers), and many more "
        "requests either way.  The whole table needs its 16 GB on each worker (local disk "
        "or memory); htshuffle and htsort route a list that large through the exchange "
        "as a semi-join instead, in the job's own passes.",
    ]
    return lines


def _client_fit(results: list[dict]) -> dict:
    """Client peak RSS as base + per_shard x (N + M), from the smallest and largest N of
    htshuffle and of its many-task variant ("levels"): the steeper of the two slopes."""
    best = {"base": 0, "per_shard": 0, "kind": None}
    for kind in ("shuffle", "levels"):
        pts = sorted((r["n"], r["client_rss"]) for r in results if r["kind"] == kind)
        if len(pts) < 2:
            continue
        (n1, m1), (n2, m2) = pts[0], pts[-1]
        per = max(0.0, (m2 - m1) / (2 * (n2 - n1)))
        if per >= best["per_shard"]:
            best = {"base": m1 - per * 2 * n1, "per_shard": per, "kind": kind}
    return best


def _tasks_per_s(results: list[dict]) -> float | None:
    """Tasks per second of the exchange with merge levels at its largest N (thousands of
    small tasks), else of htmapper at its largest N."""
    for kind in ("levels", "mapper"):
        rs = [r for r in results if r["kind"] == kind]
        if rs:
            return max(rs, key=lambda r: r["n"])["tasks_per_s"]
    return None


def model_lines(m: dict) -> list[str]:
    lines = [
        f"100,000 input shards of 1 GB (100 TB) -> 100,000 outputs, memory budget "
        f"{m['memory'] >> 30} GiB a task (a quarter of a 16 GiB worker), one run per budget "
        f"of input ({m['rows'][0]['runs']:,} runs).  From `htools.exchange.plan_exchange`, "
        "the plan the run and `--dry-run` make:",
        "",
        "| W workers | F | stage 1 tasks (inputs each) | merge levels: tasks x runs read, "
        "requests, MB per request | write tasks (outputs each) x runs read | write requests "
        "| MB per write request | passes over the data | tasks | client memory | scheduler "
        "time at measured rate |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in m["rows"]:
        lv = "; ".join(f"{x['tasks']:,} x {x['runs_per_task']}, {x['requests']:,} req, "
                       f"{x['bytes_per_request'] / 1e6:.1f} MB" for x in r["levels"]) or "none"
        sched = "—" if r["scheduler_s"] is None else f"{r['scheduler_s'] / 60:.0f} min"
        lines.append(
            f"| {r['workers']} | {r['fan_in']} | {r['stage1_tasks']:,} ({r['inputs_per_task']}) "
            f"| {lv} | {r['write_tasks']:,} ({r['outputs_per_task']}) x {r['runs_per_write']} "
            f"| {r['write_requests']:,} | {r['write_bytes_per_request'] / 1e6:.2f} | "
            f"{r['passes']} | {r['tasks']:,} | {r['client_bytes'] / 1e9:.2f} GB | {sched} |")
    lines += [
        "",
        "`htsort --key K --dedup F` (F not K) at the same size, as a semi-join: stage 1 "
        "sorts by K and writes each sample's F digest, place and sort bucket beside its runs "
        "(about 1/64 of the data); decide tasks, one digest range each, keep the first of "
        "each F and write drop runs by sort bucket; the write tasks leave those out "
        "(`bench_scale.dedup_model`):",
        "",
        "| W workers | F | stage 1 tasks | digest bytes | decide tasks | merge tasks per "
        "level | write tasks | write requests (plain sort) | passes over the data (plain "
        "sort; the old dedup pass) | tasks |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in m.get("dedup") or dedup_model():
        lines.append(
            f"| {r['workers']} | {r['fan_in']} | {r['stage1_tasks']:,} | "
            f"{r['digest_bytes'] / 1e12:.1f} TB | {r['decide_tasks']:,} | "
            f"{', '.join(f'{t:,}' for t in r['levels']) or 'none'} | "
            f"{r['write_tasks']:,} | {r['write_requests']:,} ({r['plain_write_requests']:,}) | "
            f"{r['passes']} ({r['plain_passes']}; {r['pass_passes']}) | {r['tasks']:,} |")
    lines += [
        "",
        "The semi-join costs the plain sort's passes over the data plus the digest records "
        "and one range request per write task and decide task; the dedup pass it replaced "
        "(still run with a `reduce_samples()`) cost two passes more.",
        "",
        *selection_lines(m.get("selection") or selection_model()),
    ]
    return lines + list_join_lines(m.get("list_join"))


def section(saved: dict) -> str:
    """The README section: measured table, goal ratios, and the 100 TB model."""
    results = saved.get("scale", [])
    if not results:
        return ""
    m = saved.get("scale_model") or model(results)
    fit = m["client_fit"]
    tps = m["tasks_per_s"]
    lines = [
        "## Scale: 10^3 to 10^5 shards",
        "",
        f"`benchmarks/bench_scale.py`: {SAMPLES:,} samples of ~{SAMPLE_BYTES} bytes spread "
        "over N tiny shards (at least one a shard), N -> N outputs; each job in its own "
        "process on a fresh LocalCluster (2 worker processes, 1 thread each); client peak "
        "RSS is that process's `VmHWM` (the client plus the embedded scheduler).  "
        "Requests per task = 2 x runs read (offsets + data).  Scratch objects = stage-1 "
        "runs + one run per merge task.  Dask P2P: the same rows as a dask DataFrame of N "
        "partitions -> `shuffle(on=\"key\", npartitions=N, shuffle_method=\"p2p\")` -> "
        "`to_parquet`." + (
            "  Measured by `bench_scale.py --out FILE` apart from the rest of this page and "
            "merged with `suite.py --render --scale-from FILE`; its ratios (rows above) "
            "compare jobs of that one run." if saved.get("scale_separate") else ""),
        "",
        *table(results),
        "",
        "Goals (issue: htshuffle and htsort at 100,000 shards), from the run above:",
        "",
        *goals(results),
        "",
        "### 100 TB model",
        "",
        *model_lines(m),
        "",
        f"Client memory = {fit['base'] / MIB:.0f} MiB + {fit['per_shard'] / 1024:.1f} KiB x "
        "(N + M), fitted to the client peak RSS of the steeper of htshuffle and its "
        "1 MiB / F = 16 variant between the smallest and largest N above (it includes the "
        "embedded scheduler's state per task), plus 64 bytes a run for the run table.  "
        "Scheduler time = all tasks / the tasks per second the exchange sustained with a "
        f"merge level at the largest N here ({tps:.0f}/s on 2 workers, 1 thread each; "
        "each task does real I/O, so this is an upper bound on the scheduler's share, "
        "and W workers would divide the I/O part of it)." if tps else
        "Client memory and scheduler time need the htshuffle and htmapper measurements.",
        "",
        MODEL_NOTES,
    ]
    return "\n".join(lines) + "\n"


MODEL_NOTES = """\
Passes over the data: stage 1 reads the inputs and writes runs (1), each merge level
reads and rewrites every byte once (+1 a level), and the writes read the last runs and
write the outputs (+1).  With F = 256, 25,000 runs need one merge level (each of its
tasks reads up to 256 runs' slices of its output part), so the data crosses storage 3
times; with F = 1000 one level still applies (25,000 runs > 1000), with 15x fewer merge
tasks and 4x larger requests.  W changes none of the counts here: the memory budget,
not load balance, sets the inputs and outputs per task (the plan's floor of 2 tasks per
worker is far below these task counts); W sets only the wall time.  Stage 1 makes one
streaming read per 1 GB input and one 4 GB run write per task.  The exchange never holds N x M of anything in one
place: each merge or write task makes about 2 requests per run it reads, so request
counts are R x (parts) at a level and M/G x F at the writes, instead of N x M
(10^10 here) for a one-level exchange.

Side by side (published figures only; none of them measured here):

| system | scale | what is documented |
|---|---|---|
| Exoshuffle (Ray), SIGCOMM 2023, arXiv 2203.05072 | 100 TB sort on 100 nodes | "achieves 82% of theoretical performance on a 100TB sort on 100 nodes"; an application-level shuffle over Ray's distributed futures |
| Exoshuffle-CloudSort, 2022 CloudSort record, arXiv 2301.03734 | 100 TB, 40 i4i.4xlarge workers, input and output on S3 | 5,378 s, $97 total ($0.97 per TB) |
| Dask distributed scheduler (distributed.dask.org) | — | "Each task suffers about 1ms of overhead" |
| Dask P2P shuffle (dask/distributed discussion #7509, Coiled's P2P post) | — | experimental in that post; "significantly reduced task overhead and allowed shuffling much larger datasets" than the task-based shuffle.  A documented maximum partition count or data size for P2P: not found |

The model's last column divides all tasks by the task rate measured here, an upper
bound on the scheduler's share since those tasks also did their I/O on 2 workers.  By
Dask's own figure (about 1 ms of overhead a task) one scheduler process handles about
1,000 tasks a second: 52,500-88,342 tasks are 1-1.5 minutes of scheduling for the whole
job, whatever W, next to moving 100 TB through storage 3 times.  For scale, the
CloudSort record above moved the same 100 TB in 5,378 s on 40 workers; this model says
nothing about htools' own throughput at that size, which was not measured.  Dask P2P
shuffles through the workers' memory and local disks (no object-store passes); its
client memory at 1,024 and 4,096 partitions is in the measured table above, beside
htshuffle's, whose growth projects to the "client memory" column of the model.
"""


# ------------------------------------------------------------------- main --

def step(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 256, 512: checks the harness")
    ap.add_argument("--n", default="1024,4096,16384", help="htshuffle N -> N")
    ap.add_argument("--sort-n", default="1024,4096", help="htsort N -> N")
    ap.add_argument("--map-n", default="16384,65536", help="htmapper over N shards")
    ap.add_argument("--p2p-n", default="1024,4096", help="dask P2P shuffle N -> N")
    ap.add_argument("--levels-n", default="1024,16384",
                    help=f"htshuffle N -> N with --memory {LEVELS_MEMORY >> 20} MiB and "
                         f"fan-in {LEVELS_FAN_IN}, to measure merge levels")
    ap.add_argument("--profile-n", type=int, default=None,
                    help="profile the client (pyinstrument) of the jobs at this N")
    ap.add_argument("--out", default=None, help="write the results JSON here as they come")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    a = ap.parse_args()
    if a.quick:
        ns, sort_ns, map_ns, p2p_ns = [256, 512], [256, 512], [256, 512], [256]
        levels_ns = [512]
    else:
        ns, sort_ns, map_ns, p2p_ns = ints(a.n), ints(a.sort_n), ints(a.map_n), ints(a.p2p_n)
        levels_ns = ints(a.levels_n)
    work = a.dir or tempfile.mkdtemp(prefix="htools-scale-")
    os.makedirs(work, exist_ok=True)
    try:
        saved = run(work, ns, sort_ns, map_ns, p2p_ns, a.out, a.profile_n, levels_ns)
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)
    saved["scale_model"] = model(saved["scale"])
    if a.out:
        Path(a.out).write_text(json.dumps(saved, indent=1))
    for r in saved["scale"]:
        print(fmt_result(r))
    for r in ratios(saved["scale"]):
        print(f"RATIO {r['operation']}: {r['ratio']:.3f} (goal {r['goal']})")


if __name__ == "__main__":
    main()
