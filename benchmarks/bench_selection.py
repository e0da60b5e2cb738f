"""--keep with a large list: htmapper with a 4M-key list vs without (time ratio; peak RSS
of the client and the workers), and htshuffle keeping 30% by a list vs htshuffle of the
pre-filtered shards.  Goals: <= 1.15x the time, <= 400 MB peak RSS of every process.

    python benchmarks/bench_selection.py [--keys 4000000] [--shards 8] [--per-shard 20000]
    python benchmarks/bench_selection.py --quick     (toy sizes: checks the harness)

Each case runs in its own process (so ru_maxrss is the case's own peak: the client's, and
the largest embedded worker's once they exited).  ``suite.py`` calls :func:`rows`.
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

MIB = 1 << 20
CASE = r"""
import json, resource, sys, time
import htools
kind, root, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
t = time.time()
if kind == "map":
    s = htools.map_shards(f"{root}/in-{{0..{args['n']-1}}}.tar", f"{root}/{args['out']}-@{args['n']}.tar",
                          lambda x: x, workers=2, overwrite=True, **args.get("sel", {}))
else:
    s = htools.shuffle(args["inputs"], f"{root}/{args['out']}-@{args['n']}.tar",
                       workers=2, overwrite=True, **args.get("sel", {}))
assert s.ok, str(s)
print(json.dumps({"seconds": time.time() - t, "written": s.samples_written,
                  "client_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
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


def case(kind: str, root: str, **args) -> dict:
    out = subprocess.run([sys.executable, "-c", CASE, kind, root, json.dumps(args)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


QUICK = {"keys": 20_000, "shards": 2, "per_shard": 500}
FULL = {"keys": 4_000_000, "shards": 8, "per_shard": 20_000}


def measure(root: str, keys: int, shards: int, per_shard: int) -> dict:
    """Every case of the benchmark in ``root``: the seconds and peak RSS of each."""
    made = make(root, shards, per_shard)
    with open(f"{root}/keep.txt", "w") as f:  # every sample's key, padded to ``keys``
        f.writelines(k + "\n" for k in made)
        f.writelines(f"x{i}\n" for i in range(max(0, keys - len(made))))
    picked = random.Random(1).sample(made, int(0.3 * len(made)))
    with open(f"{root}/keep30.txt", "w") as f:
        f.writelines(k + "\n" for k in picked)
    n = shards
    plain = case("map", root, n=n, out="plain")
    listed = case("map", root, n=n, out="listed", sel={"keep": f"{root}/keep.txt"})
    case("map", root, n=n, out="pre", sel={"keep": f"{root}/keep30.txt"})
    shuf_list = case("shuffle", root, n=n, out="sl", inputs=f"{root}/in-{{0..{n - 1}}}.tar",
                     sel={"keep": f"{root}/keep30.txt"})
    shuf_pre = case("shuffle", root, n=n, out="sp", inputs=f"{root}/pre-{{0..{n - 1}}}.tar")
    return {"htmapper_ratio": listed["seconds"] / plain["seconds"], "plain": plain,
            "listed": listed, "keys": keys, "mb": shards * per_shard * 1024 / 1e6,
            "htshuffle_keep30_vs_prefiltered": shuf_list["seconds"] / shuf_pre["seconds"],
            "shuffle_list": shuf_list, "shuffle_pre": shuf_pre}


def rows(work: str, quick: bool, row) -> list[dict]:
    """The suite's rows (``row``: suite.row): htmapper with the list vs without (its
    peak RSS: the largest of the client's and the workers'), htshuffle keeping 30% by a
    list vs htshuffle of the pre-filtered shards."""
    root = os.path.join(work, "selection")
    os.makedirs(root, exist_ok=True)
    try:
        m = measure(root, **(QUICK if quick else FULL))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    peak = max(m["listed"]["client_mb"], m["listed"]["workers_mb"]) * MIB
    base_peak = max(m["plain"]["client_mb"], m["plain"]["workers_mb"]) * MIB
    return [
        row(f"htmapper with a {m['keys']:,}-key --keep list vs without (peak RSS of any "
            "process <= 400 MiB)", m["listed"]["seconds"], m["plain"]["seconds"], ">= 0.87",
            m["mb"], mem=int(peak), base_mem=int(base_peak)),
        row("htshuffle keeping 30% by a --keep list vs htshuffle of the pre-filtered shards",
            m["shuffle_list"]["seconds"], m["shuffle_pre"]["seconds"], "info", m["mb"]),
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--keys", type=int, default=FULL["keys"])
    p.add_argument("--shards", type=int, default=FULL["shards"])
    p.add_argument("--per-shard", type=int, default=FULL["per_shard"])
    p.add_argument("--quick", action="store_true", help="toy sizes (checks the harness)")
    a = p.parse_args()
    sizes = QUICK if a.quick else {"keys": a.keys, "shards": a.shards,
                                   "per_shard": a.per_shard}
    with tempfile.TemporaryDirectory() as root:
        print(json.dumps(measure(root, **sizes), indent=1))


if __name__ == "__main__":
    main()
