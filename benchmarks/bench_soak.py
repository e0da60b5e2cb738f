"""Soak (issue 25, item 6): 2,000-shard htmapper and htshuffle over nginx behind the chaos
proxy's random-fault model (503 to 20% of GET, HEAD and PUT, seeded; no per-job limit).

nginx is started here through scripts/nginx-start; the proxy is the suite's own
(tests/fixtures/chaos.py, imported, not copied).  Inputs: ``--shards`` tiny shards
(bench_scale.make_tiny, 2 samples of ~200 bytes each) on nginx; htmapper (identity)
writes as many outputs, htshuffle ``--shards // 8`` with its runs on nginx too
(``--scratch``).  Both run on the embedded cluster (2 workers), default ``--retries``,
with quick per-request backoff.  Each job must exit 0 with every input sample exactly
once in its outputs (keys read back from nginx's root dir) and nothing left in scratch.
Prints, per job: seconds, samples lost and duplicated, shard replays (the summary's
``shards_retried``) and request retries (the faults the proxy injected: every one is a
request sent again, a PUT's from the upload's spool, unless its shard was replayed
instead), and writes them as JSON to ``--out`` if given.

    nice .venv/bin/python benchmarks/bench_soak.py [--shards 2000] [--rate 0.2] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import bench_scale as bsc  # noqa: E402
from fixtures.chaos import ChaosProxy  # noqa: E402
from suite import nginx_start, nginx_stop  # noqa: E402

BIN = Path(sys.executable).parent
IDENTITY = "def process_sample(sample):\n    return sample\n"
#: quick per-request retries (the default 0.5 s backoff would make the soak mostly sleep)
HTTP = {"http": {"retries": 6, "backoff": 0.02, "backoff_cap": 0.4}}


def keys(files: list[Path]) -> Counter:
    from htools import tar

    got: Counter = Counter()
    for path in files:
        with open(path, "rb") as f:
            got.update(s["__key__"] for s in tar.read_samples(tar.open_stream_reader(f, path),
                                                                str(path)))
    return got


def job(name: str, argv: list[str], proxy: ChaosProxy, rate: float, work: Path) -> dict:
    summary = work / f"{name}.json"
    proxy.inject("503", rate=rate, seed=25)
    t0 = time.perf_counter()
    p = subprocess.run([str(BIN / argv[0]), *argv[1:], "--workers", "2", "-q", "--summary",
                        str(summary), "--storage-options", json.dumps(HTTP)],
                       capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    stats = dict(proxy.stats)
    proxy.inject(None)
    if p.returncode != 0:
        raise SystemExit(f"{name} failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    js = json.loads(summary.read_text())
    return {"job": name, "seconds": round(seconds, 1), "exit": p.returncode,
            "shards_retried": js.get("shards_retried"),
            "request_retries": stats.get("injected", 0),
            "put_faults": stats.get("injected PUT", 0),
            "get_faults": stats.get("injected GET", 0),
            "head_faults": stats.get("injected HEAD", 0),
            "requests": sum(v for k, v in stats.items() if k.isupper())}


def check(row: dict, want: Counter, folder: Path) -> dict:
    outs = sorted(folder.glob("o-*.tar"))
    got = keys(outs)
    left = [p for p in folder.rglob("*") if p.is_file() and p.parent != folder]
    row.update(outputs=len(outs), samples=sum(want.values()),
               lost=sum((want - got).values()), duplicated=sum((got - want).values()),
               left_in_scratch=len(left))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--out", default="", help="also write the rows as JSON here")
    args = ap.parse_args()
    n = args.shards
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        url, root, prefix = nginx_start(tmp)
        try:
            inputs = bsc.make_tiny(os.path.join(root, "soak", "in"), n, samples=2 * n)
            want = keys([Path(u) for u in inputs])
            (work / "identity.py").write_text(IDENTITY)
            with ChaosProxy(int(url.rsplit(":", 1)[1].strip("/"))) as proxy:
                base = f"{proxy.url}/soak"
                src = f"{base}/in/in-{{000000..{n - 1:06d}}}.tar"
                rows = [
                    job("htmapper", ["htmapper", "-p", str(work / "identity.py"), src,
                                     f"{base}/map/o-@{n:06d}.tar"], proxy, args.rate, work),
                    job("htshuffle", ["htshuffle", src, f"{base}/shuf/o-@{n // 8:04d}.tar",
                                      "--seed", "7", "--scratch", f"{base}/shuf/scratch/"],
                        proxy, args.rate, work),
                ]
            check(rows[0], want, Path(root) / "soak" / "map")
            check(rows[1], want, Path(root) / "soak" / "shuf")
        finally:
            nginx_stop(prefix)
    if args.out:
        Path(args.out).write_text(json.dumps({"shards": n, "rate": args.rate, "rows": rows},
                                             indent=1))
    for r in rows:
        print(json.dumps(r))
    bad = [r["job"] for r in rows if r["lost"] or r["duplicated"] or r["left_in_scratch"]]
    if bad:
        raise SystemExit(f"samples lost, duplicated or left in scratch: {bad}")


if __name__ == "__main__":
    main()
