"""Every htools benchmark in one run (issue #6); ``benchmarks/run`` calls this.

    .venv/bin/python benchmarks/suite.py [--gb 2] [--quick] [--out DIR] [--dir SCRATCH]
    .venv/bin/python benchmarks/suite.py --only mapper,upload     (re-measure some rows)
    .venv/bin/python benchmarks/suite.py --render [--scale-from FILE]

Generates datasets of 1 KiB, 16 KiB and 128 KiB samples, runs each comparison on
the same bytes, and writes ``DIR/README.md`` (a table: operation, htools,
baseline, ratio, goal, peak worker memory) and ``DIR/scaling.png``.  Every ratio
is ``baseline seconds / htools seconds`` from this run: above 1, htools is faster.
``--only GROUPS`` re-measures those groups of rows (:data:`GROUPS`) and merges them into
the saved ``results.json``; the README says which groups were re-measured and when.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_exchange as bx  # noqa: E402
import bench_mapper as bm  # noqa: E402
import bench_scale as bsc  # noqa: E402
import bench_selection as bsel  # noqa: E402
import bench_tario as bt  # noqa: E402
import bench_upload as bu  # noqa: E402
import exchange_data as xd  # noqa: E402
import exchange_jobs as xj  # noqa: E402

REPO = HERE.parent
KIBS = (1, 16, 128)
MIB = 1 << 20
#: --quick's tiny-shard counts (N -> N): two, for the per-shard ratios; the larger one
#: still needs a merge level at the "levels" job's fan-in
QUICK_SCALE_N = [32, 64]


# ------------------------------------------------------------- tar codec --

def gnu_tar(args: list[str], cwd: str | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(["tar", *args], check=True, cwd=cwd, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def best(fn, repeat: int) -> float:
    return min(bt.best_of(fn, 1) for _ in range(repeat))


def tar_rows(work: str, kib: int, total: int, repeat: int) -> list[dict]:
    """htools codec vs tarfile vs GNU tar, reading and writing the same members."""
    samples = bt.make_samples(kib << 10, total)
    data = bt.htools_write(samples)
    path = os.path.join(work, f"codec-{kib}.tar")
    with open(path, "wb") as f:
        f.write(data)
    members = os.path.join(work, f"members-{kib}")
    os.makedirs(members, exist_ok=True)
    subprocess.run(["tar", "-xf", path, "-C", members], check=True)
    mb = len(data) / 1e6
    r_h, r_t = bt.best_of_pair(lambda: bt.htools_read(data), lambda: bt.tarfile_read(data),
                               repeat)
    r_g = best(lambda: gnu_tar(["-tf", path]), repeat)
    out = os.path.join(work, f"w-{kib}.tar")
    w_h, w_t = bt.best_of_pair(lambda: _write_file(bt.htools_write, samples, out),
                               lambda: _write_file(bt.tarfile_write, samples, out), repeat)
    w_g = best(lambda: gnu_tar(["-cf", out, "-C", members, "."]), repeat)
    shutil.rmtree(members, ignore_errors=True)
    for p in (path, out):
        os.remove(p)
    label = f"{kib} KiB members"
    return [
        row(f"tar read, {label}: htools vs Python tarfile", r_h, r_t,
            ">= 12" if kib == 1 else ">= 1", mb),
        row(f"tar read, {label}: htools vs GNU tar -t (headers only)", r_h, r_g, "info", mb),
        row(f"tar write, {label}: htools vs Python tarfile", w_h, w_t, ">= 1", mb),
        row(f"tar write, {label}: htools vs GNU tar -c (from files)", w_h, w_g, "info", mb),
    ]


def _write_file(fn, samples: list[dict], path: str) -> None:
    with open(path, "wb") as f:
        fn(samples, f)


# ---------------------------------------------------------------- mapper --

def mapper_rows(work: str, inputs: list[str], kib: int, repeat: int = 1) -> list[dict]:
    """htmapper identity (index on) vs the own-codec loop; 2 workers vs 1, as the job alone
    (clusters started before the clock) and as whole ``htmapper`` commands, and as the job
    alone without the index (no sha256 of the outputs: on 2 cores, what the second worker
    gives when the first one's hashing thread does not hold the second core).  With
    ``repeat`` > 1 the five runs are made that many times in turn, the fastest of each
    kept (single runs of these second-long jobs move 10-20% on 2 cores)."""
    n = len(inputs)
    mb = xd.total_bytes(inputs) / 1e6
    fastest: dict[str, float] = {}
    for _ in range(repeat):
        times = {"loop": bm.baseline_loop(inputs, os.path.join(work, "loop"))}
        shutil.rmtree(os.path.join(work, "loop"), ignore_errors=True)
        for w, name in ((1, "one"), (2, "two")):
            times[name] = bm.timed_mapper(inputs, os.path.join(work, f"m{w}",
                                                                f"out-@{n:04d}.tar"), w)
            times[f"{name}_off"] = bm.timed_mapper(  # no sha256: what bounds the two above
                inputs, os.path.join(work, f"m{w}", f"out-@{n:04d}.tar"), w, index=False)
        times["cmd_one"], times["cmd_two"] = (whole_mapper(work, inputs, w) for w in (1, 2))
        for d in ("m1", "m2", "mc"):
            shutil.rmtree(os.path.join(work, d), ignore_errors=True)
        fastest = {k: min(v, fastest.get(k, v)) for k, v in times.items()}
    loop, one, two, cmd_one, cmd_two = (fastest[k] for k in ("loop", "one", "two", "cmd_one",
                                                          "cmd_two"))
    return [
        row(f"htmapper identity, {kib} KiB: 1 worker vs single-process loop (index on)", one,
            loop, ">= 0.85", mb),
        row(f"htmapper identity, {kib} KiB: 2 workers vs 1 worker (job only)", two, one,
            ">= 1.8", mb),
        row(f"htmapper identity, {kib} KiB: 2 workers vs 1 worker (whole commands)", cmd_two,
            cmd_one, ">= 1.6", mb),
        row(f"htmapper identity, {kib} KiB, no index: 2 workers vs 1 worker (job only)",
            fastest["two_off"], fastest["one_off"], "info", mb),
    ]


def whole_mapper(work: str, inputs: list[str], workers: int) -> float:
    """Wall time of the ``htmapper`` command itself (imports and cluster start included)."""
    script = os.path.join(work, "identity.py")
    Path(script).write_text("def process_sample(sample):\n    return sample\n")
    folder, n = os.path.dirname(inputs[0]), len(inputs)
    src = os.path.join(folder, f"in-{{0000..{n - 1:04d}}}.tar")
    cmd = [os.path.join(os.path.dirname(sys.executable), "htmapper"), "-p", script, src,
           os.path.join(work, "mc", f"out-@{n:04d}.tar"), "--workers", str(workers), "-q",
           "--overwrite"]
    bm.settled(os.path.join(work, "mc"))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def upload_rows(work: str, quick: bool) -> list[dict]:
    """htupload of a tree of small files vs GNU ``tar -cf`` of it, whole commands
    (:func:`bench_upload.compare`)."""
    samples, shards = (5000, 8) if quick else (100_000, 64)
    src = os.path.join(work, "up-src")
    bu.make_tree(src, samples)
    runs = bu.compare(src, work, shards, 1 if quick else 3)
    mb = sum(e.stat().st_size for d in os.scandir(src) for e in os.scandir(d)) / 1e6
    shutil.rmtree(src, ignore_errors=True)
    best = {name: min(wall for wall, _cpu in got) for name, got in runs.items()}
    return [row(f"htupload {samples} samples ({2 * samples} files of 300 B) -> {shards} "
                "shards vs GNU tar -cf (whole commands)", best["htupload"],
                best["GNU tar -cf"], ">= 0.4", mb)]


# ------------------------------------------------------------------ HTTP --

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_start(work: str) -> tuple[str, str, str]:
    root, prefix = os.path.join(work, "www"), os.path.join(work, "nginx")
    out = subprocess.run([str(REPO / "scripts" / "nginx-start"), "--port", str(free_port()),
                          "--root", root, "--prefix", prefix],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1], root, prefix


def nginx_stop(prefix: str) -> None:
    subprocess.run([str(REPO / "scripts" / "nginx-stop"), "--prefix", prefix],
                   capture_output=True)


def http_rows(work: str, inputs: list[str]) -> list[dict]:
    """htmapper and htshuffle with inputs and outputs on nginx vs on local files."""
    import htools

    url, root, prefix = nginx_start(work)
    try:
        os.makedirs(os.path.join(root, "in"), exist_ok=True)
        for u in inputs:
            shutil.copy(u, os.path.join(root, "in", os.path.basename(u)))
        remote = [f"{url}/in/{os.path.basename(u)}" for u in inputs]
        n, mb = len(inputs), xd.total_bytes(inputs) / 1e6
        local_m = bm.timed_mapper(inputs, os.path.join(work, "hm", f"o-@{n:04d}.tar"), 2)
        http_m = bm.timed_mapper(remote, f"{url}/m/o-@{n:04d}.tar", 2)
        local_s, mem_l = xj.htools_job("shuffle", inputs, os.path.join(work, "hs"))
        http_s, mem_h = _http_shuffle(htools, remote, f"{url}/s/o-@{n:04d}.tar")
        shutil.rmtree(os.path.join(work, "hm"), ignore_errors=True)
    finally:
        nginx_stop(prefix)
    return [
        row("htmapper 2 workers: HTTP (nginx) vs local files", http_m, local_m, ">= 0.8", mb),
        row("htshuffle: HTTP (nginx) vs local files", http_s, local_s, ">= 0.8", mb,
            mem=mem_h, base_mem=mem_l),
    ]


def _http_shuffle(htools, inputs: list[str], pattern: str) -> tuple[float, int]:
    with xj.cluster(2) as client:
        elapsed, growth, summary = xj.measured(client, htools.shuffle, inputs, pattern,
                                               client=client, quiet=True, overwrite=True)
    if not summary.ok:
        sys.exit(f"htshuffle over HTTP failed: {summary.failures[:1]}")
    return elapsed, growth


# ----------------------------------------------------------------- table --

def row(name: str, ours: float, base: float, goal: str, mb: float, mem: int | None = None,
        base_mem: int | None = None) -> dict:
    return {"operation": name, "htools_s": ours, "baseline_s": base, "ratio": base / ours,
            "goal": goal, "mem": mem, "base_mem": base_mem, "mb": mb}


def met(r: dict) -> str:
    goal = r["goal"]
    if not goal.startswith(">="):
        return ""
    return " (met)" if r["ratio"] >= float(goal[2:]) else " (missed)"


def mib(v: int | None) -> str:
    return "—" if v is None else f"{v / MIB:.0f} MiB"


def fmt_row(r: dict) -> str:
    mem = "—" if r["mem"] is None else mib(r["mem"])
    if r.get("mem_label") and r["mem"] is not None:
        mem = f"{r['mem_label']} {mem}"  # e.g. the client's peak RSS, not a worker's
    if r.get("base_mem") is not None:
        mem += f" (baseline {mib(r['base_mem'])})"
    return (f"| {r['operation']} | {r['htools_s']:.2f} s | {r['baseline_s']:.2f} s | "
            f"{r['ratio']:.2f} | {r['goal']}{met(r)} | {mem} |")


def growth_rows(points: list[dict]) -> list[dict]:
    a, b = points[0], points[-1]
    return [
        row(f"htsort growth: seconds per MB at {b['mb']:.0f} MB vs at {a['mb']:.0f} MB "
            "(1 = linear)", b["seconds"] / b["mb"] * a["mb"], a["seconds"], "~1 (linear)",
            b["mb"], mem=b["mem"], base_mem=a["mem"]),
    ]


def plot(points: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mb = [p["mb"] for p in points]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(mb, [p["seconds"] for p in points], "o-")
    ax1.set_xlabel("data (MB)")
    ax1.set_ylabel("htsort seconds")
    ax1.set_title("time (expect ~linear)")
    ax2.plot(mb, [p["mem"] / MIB for p in points], "o-")
    ax2.set_xlabel("data (MB)")
    ax2.set_ylabel("peak worker memory (MiB)")
    ax2.set_ylim(bottom=0)
    ax2.set_title("memory (expect flat)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


METHOD = """\
## What each comparison measures

All times are wall-clock seconds of the operation alone: datasets, parquet copies,
key files and clusters are made before the clock starts.  Dask jobs run on a fresh
`LocalCluster` (2 worker processes, 1 thread each) per measurement, so a worker's
lifetime peak RSS belongs to that job.

* **tar read/write** -- in memory, the same members (`bench_tario.py`): htools'
  reader/writer vs Python's `tarfile`; GNU `tar -tf` of the same file (it lists
  headers and seeks past the data: a floor, not a like-for-like read) and
  `tar -cf` of the same members extracted to files (page cache).  htools and
  tarfile write to a file as GNU tar does.
* **htmapper** -- identity script over the shards vs a single-process read/write
  loop with htools' codec (`bench_mapper.py`; its outputs fsynced as htmapper's are,
  without the index's sha256); and 2 workers vs 1, with the index and (information)
  without it: the sha256 costs ~0.7 ms of CPU a MB, on the one-worker job's second core.
  Each of the seven runs is made three times in turn and the fastest kept; the `--keep`
  list's htmapper cases twice.
* **htshuffle vs copy once** -- two processes read every shard with htools' codec and
  write it back: one pass.  The exchange makes two (runs in scratch, then the
  outputs), so its floor is 0.5.
* **dask P2P** -- the same samples as a pandas DataFrame (`key` str, `cls` and
  `bin` bytes), one uncompressed parquet file per input shard in scratch.  Timed:
  `dd.read_parquet` -> `.shuffle(on="key", shuffle_method="p2p")` or
  `.sort_values("key", shuffle_method="p2p")` -> `.to_parquet` (uncompressed), as
  many output partitions as htools has outputs.  Both sides read every byte from
  files and write every byte to files; P2P spills to worker-local disk as htools
  writes runs to scratch.  Hash partitioning on random keys is dask's random
  shuffle (rows keep their order within a partition; htshuffle also shuffles
  within each output).
* **webdataset loop** -- one process: `wds.WebDataset(urls).shuffle(4096)` ->
  `wds.ShardWriter` (a local buffer of 4096 samples, not a global shuffle).
* **GNU sort** -- `LC_ALL=C sort --parallel=2 -S 512M` of a TSV of the keys alone:
  the key-only floor, no payload moves.  Reported for scale; no goal.
* **HTTP** -- inputs and outputs on nginx (WebDAV PUT) on 127.0.0.1 vs local files;
  htshuffle's scratch stays local in both.
* **selection** -- htmapper (identity, 2 workers) over 4 million samples with a `--keep`
  list of all their `json:uid` (shuffled), by `--select-by json:uid`, vs the same job
  without a list (the same outputs: the ratio is the list's whole cost); the same with a
  list of 4 million keys on 160,000 samples (every sample's key padded with absent ones:
  the list's fixed cost on a short job, information); each job in its own process, after
  an `os.sync()` (the last job's outputs written back first), peak RSS the largest VmHWM
  of the client and the workers, and the CPU seconds of all its processes
  (`bench_selection.py`); htshuffle
  keeping 30% of the samples by a list vs htshuffle of shards that hold only those.
* **upload** -- `htupload` of a tree of 100,000 samples (200,000 files of 300 B, 1,000 a
  folder) into 64 shards vs GNU `tar -cf` of the tree: wall time of each whole command
  (htupload's imports and cluster start included), best of 2.
* **whole commands** -- `htmapper -p identity.py` with `--workers 1` and `2`, timed as a
  user sees them (imports, cluster start and close included).
* **growth** -- htsort with a fixed `memory=` budget at 4 sizes (fresh cluster each).

Peak worker memory: for htools, `peak_rss - rss_start_min` measured inside the
tasks (the job summary's `extra`); for dask baselines, the workers' peak RSS minus
their smallest RSS at start; for the webdataset loop, the process's peak RSS growth.
"""


def write_readme(path: str, rows: list[dict], points: list[dict], info: dict,
                 scale: str = "") -> None:
    lines = [
        "# htools benchmarks",
        "",
        "Generated by `benchmarks/run` (do not edit by hand; rerun it).  "
        f"Machine: {info['machine']}.  {info['sizes']}",
        "",
        "Ratio = baseline seconds / htools seconds, both measured in this run "
        "(above 1: htools is faster).  Every timed run starts after `os.sync()`, its "
        "output folder fresh: no writeback of an earlier run's outputs under way.",
        "",
        *([f"Groups of rows re-measured since by `benchmarks/run --only`: "
           f"{'; '.join(info['reruns'])}.", ""] if info.get("reruns") else []),
        "| operation | htools | baseline | ratio | goal | peak worker memory |",
        "|---|---|---|---|---|---|",
        *[fmt_row(r) for r in rows],
        "",
        f"## htsort growth (memory budget {info['budget'] // MIB} MiB, 16 KiB samples)",
        "",
        "| data | input shards | seconds | s per GB | peak worker memory |",
        "|---|---|---|---|---|",
        *[f"| {p['mb']:.0f} MB | {p['shards']} | {p['seconds']:.2f} | "
          f"{p['seconds'] / p['mb'] * 1000:.1f} | {mib(p['mem'])} |" for p in points],
        "",
        "![htsort time and peak worker memory against data size](scaling.png)",
        "",
        *([scale] if scale else []),
        METHOD,
        notes(),
        f"Total benchmark time: {info['elapsed'] / 60:.1f} min.",
        "",
    ]
    Path(path).write_text("\n".join(lines))


def notes() -> str:
    """benchmarks/NOTES.md (the analysis of the last full run), if present."""
    path = HERE / "NOTES.md"
    return path.read_text() if path.exists() else ""


def sizes_for(gb: float, quick: bool) -> dict:
    if quick:
        return {"tar_mb": 2, "gb": {1: 0.005, 16: 0.02, 128: 0.02}, "growth": [0.01, 0.02],
                "repeat": 1}
    return {"tar_mb": 64, "gb": {1: gb / 4, 16: gb, 128: gb / 2},
            "growth": [gb / 4, gb / 2, gb, gb * 2], "repeat": 3}


#: the groups of rows, in the order a full run measures them (``--only`` picks some)
GROUPS = ("codec", "mapper", "exchange", "copy", "http", "selection", "upload", "growth",
          "scale")
#: datasets each group reads (KiB of their samples)
NEEDS = {"mapper": KIBS, "exchange": (16,), "http": (16,)}


def run_all(work: str, a) -> tuple[list[dict], list[dict], dict]:
    cfg = sizes_for(a.gb, a.quick)
    only = set(a.only or GROUPS)
    rows: list[dict] = []

    def add(group: str, new: list[dict]) -> None:
        rows.extend({**r, "group": group} for r in new)

    if "codec" in only:
        for kib in KIBS:
            step(f"tar codec, {kib} KiB")
            add("codec", tar_rows(work, kib, int(cfg["tar_mb"] * 1e6), cfg["repeat"]))
    data = {}
    for kib in sorted({k for g in only for k in NEEDS.get(g, ())}):
        step(f"dataset of {kib} KiB samples, {cfg['gb'][kib]:.3g} GB")
        data[kib] = xd.make_dataset(os.path.join(work, f"d{kib}"), cfg["gb"][kib], kib)
    if "mapper" in only:
        for kib in KIBS:
            step(f"htmapper, {kib} KiB")
            add("mapper", mapper_rows(work, data[kib], kib, 1 if a.quick else 3))
    if "exchange" in only:
        step("exchange comparisons, 16 KiB")
        add("exchange", bx.compare(work, data[16]))
    if "copy" in only:
        step("htshuffle vs copy once (16, 128 KiB) and vs webdataset's copy (128 KiB)")
        add("copy", bx.rows(work, a.quick, row))
    if "http" in only:
        step("HTTP vs local")
        add("http", http_rows(work, data[16]))
    for kib in data:
        shutil.rmtree(os.path.dirname(data[kib][0]), ignore_errors=True)
    if "selection" in only:
        step("selection: --keep lists (htmapper, htshuffle)")
        add("selection", bsel.rows(work, a.quick, row))
    if "upload" in only:
        step("htupload vs GNU tar")
        add("upload", upload_rows(work, a.quick))
    budget = (16 if a.quick else 64) * MIB
    points: list[dict] = []
    if "growth" in only:
        step(f"htsort growth at {cfg['growth']} GB")
        points = bx.growth(work, cfg["growth"], 16, budget)
        add("growth", growth_rows(points))
    scale: dict = {}
    if "scale" in only:
        step("scale: tiny shards, 10^3 to 10^5")
        scale = scale_run(work, a.quick)
        add("scale", bsc.ratios(scale["scale"]))
    sizes = ("Data: " + ", ".join(f"{cfg['gb'][k] * 1024:.0f} MiB of {k} KiB samples"
                                  for k in KIBS)
             + f" ({xd.SHARD_MB} MiB input shards); tar codec cases {cfg['tar_mb']} MB each.")
    data = ", ".join(f"{cfg['gb'][k] * 1024:.0f} MiB of {k} KiB" for k in KIBS)
    return rows, points, {"sizes": sizes, "data": data, "budget": budget, **scale}


#: rows saved before rows carried their group (every row since has one): the group is
#: told by the name; the scale rows by their client memory (``mem_label``)
_PREFIXES = (("tar ", "codec"), ("htmapper identity", "mapper"),
             ("htmapper 2 workers: HTTP", "http"), ("htshuffle: HTTP", "http"),
             ("htshuffle vs copy once,", "copy"), ("htsort growth", "growth"),
             ("htmapper with", "selection"), ("htshuffle keeping", "selection"))


def group_of(r: dict) -> str:
    if "group" in r:
        return r["group"]
    if r.get("mem_label"):
        return "scale"
    return next((g for prefix, g in _PREFIXES if r["operation"].startswith(prefix)), "exchange")


def merge_rows(out: str, rows: list[dict], points: list[dict], info: dict,
               groups: set[str]) -> dict:
    """OUT/results.json with the rows of ``groups`` replaced by this run's (``--only``):
    every other row, the growth points and the scale runs stay as they were measured."""
    path = Path(out, "results.json")
    saved = json.loads(path.read_text()) if path.exists() else {"rows": [], "points": [],
                                                                   "info": info}
    kept = [r for r in saved["rows"] if group_of(r) not in groups]
    order = {g: i for i, g in enumerate(GROUPS)}
    saved["rows"] = sorted(kept + rows, key=lambda r: order[group_of(r)])
    if "growth" in groups:
        saved["points"] = points
        saved["info"]["budget"] = info["budget"]
    for k in ("scale", "scale_model"):
        if k in info:
            saved[k] = info[k]
    saved["info"].setdefault("reruns", []).append(
        f"{time.strftime('%Y-%m-%d')}: {', '.join(g for g in GROUPS if g in groups)} "
        f"({info['elapsed'] / 60:.1f} min; data {info.get('data', 'as above')})")
    return saved


def scale_run(work: str, quick: bool) -> dict:
    """bench_scale.py's measurements (tiny shards at N -> N) and its 100 TB model."""
    if quick:  # the smallest N that still runs every job and a merge level (F = 16)
        saved = bsc.run(os.path.join(work, "scale"), QUICK_SCALE_N, QUICK_SCALE_N[:1],
                        QUICK_SCALE_N, QUICK_SCALE_N[:1], None, levels_ns=QUICK_SCALE_N[1:])
    else:
        saved = bsc.run(os.path.join(work, "scale"), [1024, 4096, 16384], [1024, 4096],
                        [16384, 65536], [1024, 4096], None, levels_ns=[1024, 16384])
    shutil.rmtree(os.path.join(work, "scale"), ignore_errors=True)
    saved["scale_model"] = bsc.model(saved["scale"])
    return saved


def step(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def default_out(quick: bool, render: bool) -> str:
    """Where a run writes its report: the published benchmarks/ only for a full run (or
    a re-render); a quick run's toy figures go to a new temp dir."""
    return tempfile.mkdtemp(prefix="htools-bench-quick-") if quick and not render \
        else str(HERE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.0,
                    help="size of the 16 KiB dataset (1 KiB: a quarter, 128 KiB: a half)")
    ap.add_argument("--quick", action="store_true", help="a tiny run that checks the harness")
    ap.add_argument("--out", default=None,
                    help="where README.md, results.json and scaling.png go (default: "
                         "benchmarks/ for a full run; a new temp dir, printed, for --quick, "
                         "so toy figures never replace the published ones)")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--only", type=lambda v: v.split(","), default=None,
                    help=f"rerun only these groups of rows ({','.join(GROUPS)}), comma-separated,"
                         " and merge them into OUT/results.json (other rows stay)")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite README.md and scaling.png from OUT/results.json")
    ap.add_argument("--scale-from", default=None,
                    help="with --render: first merge a bench_scale.py --out FILE into "
                         "OUT/results.json (its rows replace the scale rows)")
    a = ap.parse_args()
    if a.only and set(a.only) - set(GROUPS):
        ap.error(f"--only: no group {sorted(set(a.only) - set(GROUPS))}; the groups: "
                 f"{', '.join(GROUPS)}")
    if a.out is None:
        a.out = default_out(a.quick, a.render)
    if a.render:
        if a.scale_from:
            merge_scale(a.out, a.scale_from)
        return render(a.out)
    t0 = time.perf_counter()
    work = a.dir or tempfile.mkdtemp(prefix="htools-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        rows, points, info = run_all(work, a)
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)
    os.makedirs(a.out, exist_ok=True)
    info.update(machine=f"{os.cpu_count()} cores, {_memory_gb()} GB RAM, "
                        f"Python {platform.python_version()}",
                elapsed=time.perf_counter() - t0)
    if a.only:
        saved = merge_rows(a.out, rows, points, info, set(a.only))
    else:
        scale = {k: info.pop(k) for k in ("scale", "scale_model") if k in info}
        saved = {"rows": rows, "points": points, "info": info, **scale}
    Path(a.out, "results.json").write_text(json.dumps(saved, indent=1))
    render(a.out)
    if Path(a.out).resolve() != HERE.resolve():
        print(f"benchmarks: report written to {a.out} (the published figures in "
              f"{HERE.name}/ are unchanged)", file=sys.stderr)
    for r in rows:
        print(fmt_row(r))


def render(out: str) -> None:
    saved = json.loads(Path(out, "results.json").read_text())
    if saved.get("scale"):  # the model is a function of the measurements: always current
        saved["scale_model"] = bsc.model(saved["scale"])
    plot(saved["points"], os.path.join(out, "scaling.png"))
    write_readme(os.path.join(out, "README.md"), saved["rows"], saved["points"], saved["info"],
                 bsc.section(saved))


def merge_scale(out: str, scale_file: str) -> None:
    """Put a separate bench_scale.py run into OUT/results.json: its measurements, its
    model, and its goal rows (replacing earlier scale rows, keeping every other row)."""
    path = Path(out, "results.json")
    saved = json.loads(path.read_text())
    scale = json.loads(Path(scale_file).read_text())
    names = {r["operation"] for r in bsc.ratios(saved.get("scale", []))}
    rows = [r for r in saved["rows"] if r["operation"] not in names and not r.get("mem_label")]
    saved.update(rows=rows + bsc.ratios(scale["scale"]), scale=scale["scale"],
                 scale_model=scale.get("scale_model") or bsc.model(scale["scale"]),
                 scale_separate=True)
    path.write_text(json.dumps(saved, indent=1))


def _memory_gb() -> int:
    import psutil

    return round(psutil.virtual_memory().total / 1e9)


if __name__ == "__main__":
    main()
