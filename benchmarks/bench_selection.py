"""--keep with a large list: htmapper with a 4M-key list vs without (time ratio; peak RSS
of the client and the workers), and htshuffle keeping 30% by a list vs htshuffle of the
pre-filtered shards.  Goals: <= 1.15x the time, <= 400 MB peak RSS of every process.

Two htmapper cases:

* "every sample listed" (the goal row), as DataComp uses a list: 4,000,000 samples (64
  shards of 62,500: a ~100-byte ``txt`` and a ``json`` with a 32-hex ``uid``) and a list
  of all 4,000,000 uids (in another order) matched by ``--select-by json:uid``, vs the
  same job without a list: both write the same samples, so the ratio is the list's
  whole cost (its build, every sample's lookup) and nothing is saved by writing less;
* "list 25x the data" (information): 160,000 samples of 1 KiB and a 4M-key list (every
  sample's key plus 3.84 M absent ones), by ``__key__``: the list's fixed cost on a
  short job.

    python benchmarks/bench_selection.py [--keys 4000000] [--shards 8] [--per-shard 20000]
        [--subset-shards 64] [--subset-per-shard 62500] [--repeat 3]
    python benchmarks/bench_selection.py --quick     (toy sizes: checks the harness)

Each case runs in its own process (so ru_maxrss is the case's own peak: the client's, and
the largest embedded worker's once they exited); with ``--repeat N`` the cases with and
without a list alternate and each keeps its fastest run.  ``suite.py`` calls :func:`rows`.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20
CASE = r"""
import json, sys, time
import htools
from htools.runtime.memory import peak_rss
kind, root, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
t = time.time()
if kind == "map":
    s = htools.map_shards(f"{root}/{args.get('prefix', 'in')}-{{0..{args['n']-1}}}.tar",
                          f"{root}/{args['out']}-@{args['n']}.tar",
                          lambda x: x, workers=2, overwrite=True, **args.get("sel", {}))
else:
    s = htools.shuffle(args["inputs"], f"{root}/{args['out']}-@{args['n']}.tar",
                       workers=2, overwrite=True, **args.get("sel", {}))
assert s.ok, str(s)
print(json.dumps({"seconds": time.time() - t, "written": s.samples_written,
                  "client_mb": peak_rss() / 2**20}))
"""


def make(root: str, shards: int, per_shard: int) -> list[str]:
    from htools.tar import TarWriter

    rng = random.Random(0)
    keys = []
    for s in range(shards):
        with open(f"{root}/in-{s}.tar", "wb") as f, TarWriter(f) as w:
            for i in range(per_shard):
                k = f"s{s}-{i:07d}"
                keys.append(k)
                w.write({"__key__": k, "bin": rng.randbytes(1024)})
    return keys


def make_subset(root: str, shards: int, per_shard: int) -> list[str]:
    """``shards`` tars of ``per_shard`` small samples (``txt`` ~100 bytes, ``json`` with a
    32-hex ``uid``) in ``root/sub-S.tar``, written on 2 processes; their uids."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        uids = pool.starmap(_make_subset_shard, [(root, s, per_shard) for s in range(shards)])
    return [u for shard in uids for u in shard]


def _make_subset_shard(root: str, s: int, per_shard: int) -> list[str]:
    from htools.tar import TarWriter

    rng = random.Random(s)
    uids = [f"{rng.getrandbits(128):032x}" for _ in range(per_shard)]
    words = "a photo of the small dog on a red chair near the old window".split()
    with open(f"{root}/sub-{s}.tar", "wb") as f, TarWriter(f) as w:
        for i, uid in enumerate(uids):
            text = " ".join(rng.choices(words, k=24))[:100].encode()
            w.write({"__key__": f"{s:05d}{i:06d}", "txt": text,
                     "json": b'{"uid": "' + uid.encode() + b'", "key": "%05d%06d"}' % (s, i)})
    return uids


def case(kind: str, root: str, **args) -> dict:
    """One case in its own process: its result, the client's peak RSS (its VmHWM) and
    the largest peak RSS of its worker processes (their VmHWM, read every 0.2 s while
    they live: ru_maxrss would count what their parent held when it started them), and
    the CPU seconds of all its processes (``cpu_s``: each one's own, as last read: the
    last 0.2 s of each process may be missed)."""
    cpu: dict[int, float] = {}
    # the last case's outputs (8 GB for the goal row) are still being written back: a case
    # started before they are on disk shares the disk with that writeback (the listed case,
    # run after the plain one, measured 0.70-0.77 of it that way, 0.91 after a sync)
    os.sync()
    with tempfile.TemporaryFile("w+") as out, subprocess.Popen(
            [sys.executable, "-c", CASE, kind, root, json.dumps(args)], stdout=out,
            stderr=subprocess.DEVNULL, text=True) as proc:
        workers = 0
        while proc.poll() is None:
            kids = _descendants(proc.pid)
            workers = max([workers] + [_hwm(pid) for pid in kids])
            for pid in [proc.pid, *kids]:
                cpu[pid] = max(cpu.get(pid, 0.0), _cpu(pid))
            time.sleep(0.2)
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, "bench_selection case")
        out.seek(0)
        result = json.loads(out.read().strip().splitlines()[-1])
    result["cpu_s"] = sum(cpu.values())
    for name in glob.glob(f"{root}/{args['out']}-*.tar"):  # outputs read by no later case
        if args["out"] not in ("pre",):
            os.remove(name)
    return {**result, "workers_mb": workers / MIB}


def _descendants(pid: int) -> list[int]:
    parent = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.split("/")[2])] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        todo += kids
    return found


def _cpu(pid: int) -> float:
    """A process's own CPU seconds so far (user and system), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _hwm(pid: int) -> int:
    """A process's peak RSS so far (VmHWM), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pair(root: str, repeat: int, plain: dict, listed: dict) -> tuple[dict, dict]:
    """The map case without and with the list, alternated ``repeat`` times: each one's
    fastest run, with the largest peak RSS of its runs."""
    runs: dict[str, list[dict]] = {"plain": [], "listed": []}
    for _ in range(repeat):
        runs["plain"].append(case("map", root, **plain))
        runs["listed"].append(case("map", root, **listed))
    best = []
    for rs in runs.values():
        b = dict(min(rs, key=lambda r: r["seconds"]))
        b.update(client_mb=max(r["client_mb"] for r in rs),
                 workers_mb=max(r["workers_mb"] for r in rs), runs=[r["seconds"] for r in rs])
        best.append(b)
    return best[0], best[1]


QUICK = {"keys": 20_000, "shards": 2, "per_shard": 500, "subset_shards": 4,
         "subset_per_shard": 500}
FULL = {"keys": 4_000_000, "shards": 8, "per_shard": 20_000, "subset_shards": 64,
        "subset_per_shard": 62_500}


def measure(root: str, keys: int, shards: int, per_shard: int, subset_shards: int,
            subset_per_shard: int, repeat: int = 1) -> dict:
    """Every case of the benchmark in ``root``: the seconds and peak RSS of each."""
    m = measure_subset(root, subset_shards, subset_per_shard, repeat)
    for name in glob.glob(f"{root}/sub-*.tar"):
        os.remove(name)
    made = make(root, shards, per_shard)
    with open(f"{root}/keep.txt", "w") as f:  # every sample's key, padded to ``keys``
        f.writelines(k + "\n" for k in made)
        f.writelines(f"x{i}\n" for i in range(max(0, keys - len(made))))
    picked = random.Random(1).sample(made, int(0.3 * len(made)))
    with open(f"{root}/keep30.txt", "w") as f:
        f.writelines(k + "\n" for k in picked)
    n = shards
    plain, listed = pair(root, repeat, {"n": n, "out": "plain"},
                         {"n": n, "out": "listed", "sel": {"keep": f"{root}/keep.txt"}})
    case("map", root, n=n, out="pre", sel={"keep": f"{root}/keep30.txt"})
    shuf_list = case("shuffle", root, n=n, out="sl", inputs=f"{root}/in-{{0..{n - 1}}}.tar",
                     sel={"keep": f"{root}/keep30.txt"})
    shuf_pre = case("shuffle", root, n=n, out="sp", inputs=f"{root}/pre-{{0..{n - 1}}}.tar")
    return {**m, "htmapper_ratio": listed["seconds"] / plain["seconds"], "plain": plain,
            "listed": listed, "keys": keys, "mb": shards * per_shard * 1024 / 1e6,
            "htshuffle_keep30_vs_prefiltered": shuf_list["seconds"] / shuf_pre["seconds"],
            "shuffle_list": shuf_list, "shuffle_pre": shuf_pre}


def measure_subset(root: str, shards: int, per_shard: int, repeat: int) -> dict:
    """htmapper keeping every one of ``shards * per_shard`` samples by a list of all
    their ``json:uid`` (shuffled) vs the same job without a list: the same outputs."""
    uids = make_subset(root, shards, per_shard)
    picked = random.Random(2).sample(uids, len(uids))
    with open(f"{root}/uids.txt", "w") as f:
        f.writelines(u + "\n" for u in picked)
    del uids, picked
    size = sum(os.path.getsize(f"{root}/sub-{s}.tar") for s in range(shards))
    base = {"n": shards, "prefix": "sub"}
    plain, listed = pair(root, repeat, {**base, "out": "subplain"},
                         {**base, "out": "sublisted",
                          "sel": {"keep": f"{root}/uids.txt", "select_by": "json:uid"}})
    return {"subset_ratio": listed["seconds"] / plain["seconds"], "subset_plain": plain,
            "subset_listed": listed, "subset_samples": shards * per_shard,
            "subset_mb": size / 1e6}


def _peak(r: dict) -> int:
    return int(max(r["client_mb"], r["workers_mb"]) * MIB)


def rows(work: str, quick: bool, row) -> list[dict]:
    """The suite's rows (``row``: suite.row): htmapper over 4M samples with a list of all
    their uids vs without (the goal; its peak RSS: the largest of the client's
    and the workers'), the same with a list 25x the data (information), htshuffle
    keeping 30% by a list vs htshuffle of the pre-filtered shards."""
    root = os.path.join(work, "selection")
    os.makedirs(root, exist_ok=True)
    try:
        # single runs move 10-20% here: each htmapper case runs twice, alternated
        m = measure(root, **(QUICK if quick else FULL), repeat=1 if quick else 2)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return [
        row(f"htmapper over {m['subset_samples']:,} samples with a --keep list of all "
            "their json:uid vs without (peak RSS of any process <= 400 MiB)",
            m["subset_listed"]["seconds"], m["subset_plain"]["seconds"], ">= 0.87",
            m["subset_mb"], mem=_peak(m["subset_listed"]), base_mem=_peak(m["subset_plain"])),
        row("the same, CPU seconds of every process (fastest runs' own)",
            m["subset_listed"]["cpu_s"], m["subset_plain"]["cpu_s"], "info", m["subset_mb"]),
        row(f"htmapper with a {m['keys']:,}-key --keep list vs without: list 25x the data",
            m["listed"]["seconds"], m["plain"]["seconds"], "info",
            m["mb"], mem=_peak(m["listed"]), base_mem=_peak(m["plain"])),
        row("htshuffle keeping 30% by a --keep list vs htshuffle of the pre-filtered shards",
            m["shuffle_list"]["seconds"], m["shuffle_pre"]["seconds"], "info", m["mb"]),
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    for name, value in FULL.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, default=value)
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of each htmapper case, alternated (the fastest kept)")
    p.add_argument("--quick", action="store_true", help="toy sizes (checks the harness)")
    a = p.parse_args()
    sizes = QUICK if a.quick else {name: getattr(a, name) for name in FULL}
    with tempfile.TemporaryDirectory() as root:
        print(json.dumps(measure(root, **sizes, repeat=a.repeat), indent=1))


if __name__ == "__main__":
    main()
