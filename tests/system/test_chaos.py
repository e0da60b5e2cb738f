"""Chaos: no transient fault fails a job, loses a sample or duplicates one.

Every tool runs over HTTP storage (the tests' nginx, 64 input shards) through a
fault-injecting proxy (tests/fixtures/chaos.py) under fault MODELS with no per-job limit,
each model against each tool once: 503s to 20% of requests at random and to every 4th
(a PUT's at its commit), connections reset mid-body, bodies cut short, slow answers past
the client's timeout, the server away for a second; then a worker SIGKILLed in each
stage of an exchange, and nginx itself stopped and restarted mid-job.  Each job must exit 0
with exactly the samples of a clean run of the same tool (a multiset of sample
hashes, read back with the webdataset package from nginx's root dir) and, where the
tool promises determinism (htmapper, htshuffle with a seed, htsort, htextract's rows in
shard order), the same bytes.  Samples lost and duplicated are counted against the
clean run, asserted 0, and written to ``chaos-counts.json`` in pytest's base temp dir
(printed with ``-s``): README.md's "Reliability" table is copied from it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from fixtures.chaos import ChaosProxy
from fixtures.servers import REPO, free_port
from helpers import BIN, KILL_IN_STAGE_1, KILL_IN_STAGE_2, child_env, make_shards, read_wds, run

#: 64 small shards (the issue's figure): enough requests that every model hits each tool
#: many times, small enough to stay quick
SHARDS, PER_SHARD = 64, 2
INPUTS = f"in/data-{{0..{SHARDS - 1}}}.tar"
#: per-request retries: many and quick (they travel with the job to every worker)
HTTP_OPTS = {"retries": 6, "backoff": 0.02, "backoff_cap": 0.4}
#: the shard-level backoff is the client's (the command's environment)
ENV = child_env(HTOOLS_RETRY_BACKOFF="0.05", HTOOLS_RETRY_CAP="1")
TOOLS = ("htmapper", "htextract", "htupload", "htshuffle", "htsort")
#: tools whose outputs are promised byte-identical run after run
DETERMINISTIC = {"htmapper", "htextract", "htshuffle", "htsort"}

#: fault model -> ChaosProxy.inject() arguments, extra http options, where the jobs run.
#: No per-job limit: a fault at an upload's commit is retried as a request (the body
#: replayed from its spool), a shard replay is the second level, default --retries.
FAULTS = {
    "random-503": ({"kind": "503", "rate": 0.2, "seed": 25}, {}, "scheduler"),
    "every-4th-503": ({"kind": "503", "every": 4}, {}, "embedded"),
    "reset": ({"kind": "reset", "every": 3}, {}, "embedded"),
    "short": ({"kind": "short", "every": 3}, {}, "scheduler"),
    # every 10th answer 0.8 s late: past the 0.3 s socket timeout the test sets
    "slow": ({"kind": "slow", "every": 10, "long_delay": 0.8}, {"timeout": 0.3}, "scheduler"),
    # the server away for 1 s from every 100th request on; retries patient enough to wait
    "down": ({"kind": "down", "every": 100, "long_delay": 1.0},
             {"retries": 8, "backoff": 0.1, "backoff_cap": 1.0}, "embedded"),
}
#: htupload reads a local directory: it makes no GET for reset/short to hit, and some 20
#: requests in all (the probe, 4 outputs, their index), htextract some 130: their outages
#: start sooner
NOT_APPLICABLE = {("htupload", "reset"), ("htupload", "short")}
OVERRIDE = {("htupload", "down"): {"every": 8}, ("htextract", "down"): {"every": 40}}
DESCRIBE = {
    "random-503": "503 Service Unavailable to 20% of GET, HEAD and PUT at random (seeded; a "
                  "PUT's after its whole body, so the commit fails)",
    "every-4th-503": "503 Service Unavailable to every 4th GET, HEAD and PUT (one counter)",
    "reset": "TCP reset mid-body on every 3rd GET",
    "short": "body cut short (half of Content-Length, then close) on every 3rd GET",
    "slow": "every 10th answer 0.8 s late, past the client's 0.3 s timeout (the request "
            "was done)",
    "down": "the server away for 1 s (every connection reset) from every 100th request on",
    "kill-stage1": "dask worker SIGKILLed in exchange stage 1 (partition)",
    "kill-stage2": "dask worker SIGKILLed in exchange stage 2 (merge/write)",
    "nginx-restart": "nginx stopped (nginx-stop) and restarted (nginx-start) mid-job, ~1 s down",
}

IDENTITY = "def process_sample(sample):\n    return sample\n"
SLOW_IDENTITY = "import time\n\ndef process_sample(sample):\n    time.sleep(0.05)\n    return sample\n"

ROWS: list[dict] = []  # one per job run under a fault: what README's table is made of


# ------------------------------------------------------------------------- helpers --

def sample_hash(sample: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(sample):
        v = sample[k]
        h.update(k.encode() + b"\0" + (v if isinstance(v, bytes) else str(v).encode()) + b"\0")
    return h.hexdigest()


@dataclass
class Result:
    files: dict[str, bytes]           # output name -> bytes (htextract: the rows file)
    samples: Counter = field(default_factory=Counter)   # sample hash -> times seen
    summary: dict = field(default_factory=dict)


@dataclass
class World:
    """Input data on nginx (behind the proxy), a local tree for htupload, scripts."""
    nginx: object
    proxy: ChaosProxy
    sub: str                          # this module's folder under nginx's root
    tmp: Path
    tree: Path                        # htupload's source directory

    @property
    def root(self) -> Path:
        return Path(self.nginx.root) / self.sub

    def url(self, base: str, name: str) -> str:
        return f"{base}/{self.sub}/{name}"

    def script(self, name: str, body: str) -> Path:
        p = self.tmp / name
        p.write_text(body)
        return p


def tool_args(w: World, tool: str, base: str, run_name: str, script: Path | None = None) -> list:
    """The command line of ``tool`` reading the inputs at ``base`` (an HTTP URL: nginx or
    the proxy) and writing under ``run_name``; exchanges keep their runs on HTTP too."""
    inputs = w.url(base, INPUTS)
    out = w.url(base, f"{run_name}/o-@4.tar")
    scratch = ["--scratch", w.url(base, f"{run_name}/scratch/")]
    if tool == "htmapper":
        return ["-p", script or w.script("identity.py", IDENTITY), inputs,
                w.url(base, f"{run_name}/o-@{SHARDS}.tar")]
    if tool == "htextract":
        return [inputs, "-f", "__key__,cls,txt", "-o", w.tmp / f"{run_name}.tsv"]
    if tool == "htupload":
        return [w.tree, out]
    # small memory and fan-in: 64 runs to each output, merged in a level first
    exchange = [inputs, out, *scratch, "--memory", "16K", "--fan-in", "8"]
    if tool == "htshuffle":
        return [*exchange, "--seed", "7", *(["-p", script] if script else [])]
    return [*exchange, *(["-p", script] if script else [])]


def where_args(where: str, request: pytest.FixtureRequest) -> list[str]:
    if where == "embedded":
        return ["--workers", "2"]
    return ["-c", request.getfixturevalue("scheduler_cluster").address]


def storage_options(**extra) -> str:
    return json.dumps({"http": {**HTTP_OPTS, **extra}})


def collect(w: World, tool: str, run_name: str, summary: Path) -> Result:
    """What a job wrote, read back from nginx's root dir (htextract: its rows file)."""
    js = json.loads(summary.read_text()) if summary.exists() else {}
    if tool == "htextract":
        rows_file = w.tmp / f"{run_name}.tsv"
        text = rows_file.read_bytes() if rows_file.exists() else b""
        rows = text.splitlines()
        return Result({"rows.tsv": text}, Counter(hashlib.sha256(r).hexdigest() for r in rows), js)
    folder = w.root / run_name
    outs = sorted(folder.glob("o-*.tar"))
    files = {p.name: p.read_bytes() for p in outs}
    samples = Counter(sample_hash(s) for s in read_wds(outs)) if outs else Counter()
    return Result(files, samples, js)


def leftovers(w: World, run_name: str) -> list[str]:
    """Files under the job's folder that are not outputs or their shard index (temp
    files, runs in scratch)."""
    folder = w.root / run_name
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and not (p.parent == folder and (
                      p.name.startswith("o-") or p.name == "o.index.json")))


def run_job(w: World, tool: str, base: str, run_name: str, where: list[str],
            script: Path | None = None,
            opts: str | None = None) -> tuple[subprocess.CompletedProcess, Result]:
    summary = w.tmp / f"{run_name}.json"
    p = run(tool, *tool_args(w, tool, base, run_name, script), *where, "-q",
            "--summary", summary, "--storage-options", opts or storage_options(), env=ENV,
            timeout=240)
    return p, collect(w, tool, run_name, summary)


def compare(tool: str, clean: Result, got: Result) -> tuple[int, int]:
    lost = sum((clean.samples - got.samples).values())
    duplicated = sum((got.samples - clean.samples).values())
    return lost, duplicated


def check(fault: str, tool: str, where: str, p: subprocess.CompletedProcess, clean: Result,
          got: Result, w: World, run_name: str, injected: int, deterministic: bool,
          faults: list | None = None) -> None:
    lost, duplicated = compare(tool, clean, got)
    ROWS.append({"fault": fault, "tool": tool, "where": where, "exit": p.returncode,
                 "samples": sum(clean.samples.values()), "lost": lost, "duplicated": duplicated,
                 "faults_injected": injected,
                 "shards_retried": got.summary.get("shards_retried"),
                 "identical_bytes": got.files == clean.files})
    assert p.returncode == 0, (f"exit {p.returncode}\nstderr:\n{p.stderr[-6000:]}\n"
                               f"faults injected: {faults}")
    assert injected > 0, "no fault was injected: the test proves nothing"
    assert (lost, duplicated) == (0, 0), f"{lost} samples lost, {duplicated} duplicated"
    assert sorted(got.files) == sorted(clean.files)
    if deterministic:
        assert got.files == clean.files, "outputs differ from the clean run's bytes"
    if tool != "htextract":
        assert leftovers(w, run_name) == []


# ------------------------------------------------------------------------ fixtures --

@pytest.fixture(scope="module")
def world(nginx_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chaos")
    sub = f"chaos-{uuid.uuid4().hex[:8]}"
    data = make_shards(Path(nginx_server.root) / sub / "in", shards=SHARDS, per_shard=PER_SHARD)
    make_shards(Path(nginx_server.root) / sub / "in-dedup", shards=DEDUP_SHARDS,
                per_shard=DEDUP_PER_SHARD)
    tree = tmp / "tree"  # htupload's source: one file per field, in per-shard folders
    for key, sample in data.items():
        for ext in ("jpg", "cls", "txt"):
            (tree / key).parent.mkdir(parents=True, exist_ok=True)
            (tree / f"{key}.{ext}").write_bytes(sample[ext])
    with ChaosProxy(nginx_server.port) as proxy:
        yield World(nginx_server, proxy, sub, tmp, tree)


@pytest.fixture(scope="module")
def clean_runs(world):
    """tool -> Result of one clean run (through the proxy, no fault, embedded cluster),
    made on first use and shared by every fault."""
    cache: dict[str, Result] = {}

    def get(tool: str) -> Result:
        if tool not in cache:
            world.proxy.inject(None)
            p, res = run_job(world, tool, world.proxy.url, f"clean-{tool}", ["--workers", "2"])
            assert p.returncode == 0, f"clean {tool} run failed:\n{p.stderr[-4000:]}"
            assert sum(res.samples.values()) == SHARDS * PER_SHARD
            cache[tool] = res
        return cache[tool]

    return get


@pytest.fixture(scope="module", autouse=True)
def chaos_report(tmp_path_factory):
    """Writes every job's counts to chaos-counts.json (pytest's base temp dir) and prints
    them (visible with -s)."""
    yield
    if not ROWS:
        return
    path = tmp_path_factory.getbasetemp() / "chaos-counts.json"
    path.write_text(json.dumps({"rows": ROWS, "describe": DESCRIBE}, indent=1))
    print(f"\nchaos counts ({path.name} in pytest's base temp dir):")
    for r in ROWS:
        print(f"  {r['fault']:14} {r['tool']:10} {r['where']:9} exit {r['exit']} "
              f"samples {r['samples']} lost {r['lost']} duplicated {r['duplicated']} "
              f"faults {r['faults_injected']} shards_retried {r['shards_retried']} "
              f"identical {r['identical_bytes']}")


# --------------------------------------------------------------------------- tests --

@pytest.mark.parametrize("tool,fault", [(t, f) for t in TOOLS for f in FAULTS
                                        if (t, f) not in NOT_APPLICABLE])
def test_chaos_proxy_fault(world, clean_runs, request, tool, fault):
    """Every tool finishes under each proxy fault with the clean run's samples exactly
    (and its bytes, where promised)."""
    clean = clean_runs(tool)
    inject, http_extra, where = FAULTS[fault]
    run_name = f"{fault}-{tool}"
    world.proxy.inject(**{**inject, **OVERRIDE.get((tool, fault), {})})
    try:
        p, got = run_job(world, tool, world.proxy.url, run_name, where_args(where, request),
                         opts=storage_options(**http_extra))
        injected = world.proxy.stats["injected"]
        faults = list(world.proxy.log)
    finally:
        world.proxy.inject(None)
    check(fault, tool, where, p, clean, got, world, run_name, injected,
          deterministic=tool in DETERMINISTIC, faults=faults)


def test_chaos_exchange_commit_fault_is_a_request_retry(world, clean_runs):
    """The 503 at a run file's commit sends the run again as a new PUT from its spool: no
    stage-1 task runs again, and the result is the clean run's."""
    clean = clean_runs("htsort")
    # the 2nd PUT (the 1st is the client's write probe): a stage-1 run file's commit
    world.proxy.inject("503", every=2, methods={"PUT"}, once=True)
    try:
        p, got = run_job(world, "htsort", world.proxy.url, "retried-htsort", ["--workers", "2"])
        faults = list(world.proxy.log)
    finally:
        world.proxy.inject(None)
    assert p.returncode == 0, p.stderr
    assert got.files == clean.files
    assert len(faults) == 1 and faults[0][1] == "PUT" and "/scratch/" in faults[0][2]
    assert got.summary["shards_retried"] == 0, got.summary["retries"]


def test_chaos_503_on_the_write_probe(world, clean_runs, request):
    """One 503, on the job's very first PUT (the pre-flight write probe): the job must
    still run."""
    clean = clean_runs("htmapper")
    world.proxy.inject("503", every=1, methods={"PUT"}, once=True)
    try:
        p, got = run_job(world, "htmapper", world.proxy.url, "probe-htmapper",
                         where_args("scheduler", request))
        faults = list(world.proxy.log)
    finally:
        world.proxy.inject(None)
    assert len(faults) == 1 and ".htools-probe-" in faults[0][2]
    assert p.returncode == 0, p.stderr
    assert got.files == clean.files


@pytest.mark.parametrize("stage,where", [("stage1", "scheduler"), ("stage2", "embedded")])
def test_chaos_worker_killed_in_exchange(world, clean_runs, request, stage, where):
    """A worker SIGKILLed in stage 1 (partition) or stage 2 (write) of an htsort whose
    inputs, runs and outputs are all on HTTP: the result is the clean sort's, byte for
    byte, and no run file is left behind."""
    clean = clean_runs("htsort")
    mark = world.tmp / f"killed-{stage}"
    body = (KILL_IN_STAGE_1 if stage == "stage1" else KILL_IN_STAGE_2).format(mark=str(mark))
    body = body.replace("/k0005", "/k0001").replace("/k0007", "/k0001")  # 2 samples a shard
    run_name = f"kill-{stage}-htsort"
    p, got = run_job(world, "htsort", world.proxy.url, run_name, where_args(where, request),
                     script=world.script(f"kill-{stage}.py", body))
    check(f"kill-{stage}", "htsort", where, p, clean, got, world, run_name,
          injected=int(mark.exists()), deterministic=True)


@pytest.fixture
def own_nginx(tmp_path, world):
    """An nginx of this test's own (it gets stopped and restarted), serving a copy of
    the inputs; (url, root, restart(), port)."""
    root, prefix = tmp_path / "root", tmp_path / "prefix"
    shutil.copytree(world.root / "in", root / world.sub / "in")
    port = free_port()
    start = [str(REPO / "scripts" / "nginx-start"), "--port", str(port), "--root", str(root),
             "--prefix", str(prefix)]
    stop = [str(REPO / "scripts" / "nginx-stop"), "--prefix", str(prefix)]
    subprocess.run(start, check=True, capture_output=True, timeout=60)
    try:
        yield f"http://127.0.0.1:{port}", root, start, stop
    finally:
        subprocess.run(stop, capture_output=True, timeout=60, check=False)


@pytest.mark.parametrize("tool,where", [("htmapper", "scheduler"), ("htsort", "embedded")])
def test_chaos_nginx_restarted_mid_job(world, clean_runs, request, own_nginx, tool, where):
    """nginx stopped (scripts/nginx-stop) once the job has written its first output (or
    run file) and started again a second later on the same port and root: the job goes
    on and its result is the clean run's, byte for byte."""
    clean = clean_runs(tool)
    url, root, start, stop = own_nginx
    w = World(SimpleNamespace(root=root), world.proxy, world.sub, world.tmp, world.tree)
    run_name = f"restart-{tool}"
    summary = w.tmp / f"{run_name}.json"
    args = tool_args(w, tool, url, run_name, w.script("slow.py", SLOW_IDENTITY))
    opts = json.dumps({"http": {"retries": 8, "backoff": 0.1, "backoff_cap": 1.0}})
    proc = subprocess.Popen([str(BIN / tool), *map(str, args), *where_args(where, request), "-q",
                             "--summary", str(summary), "--storage-options", opts],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    restarted = False
    try:
        folder = root / world.sub / run_name
        first = "o-*.tar" if tool == "htmapper" else "scratch/**/*"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.is_file() for p in folder.glob(first)):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the job ended before nginx could be stopped"
        subprocess.run(stop, check=True, capture_output=True, timeout=60)
        time.sleep(1.0)
        still_running = proc.poll() is None
        subprocess.run(start, check=True, capture_output=True, timeout=60)
        restarted = True
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert restarted and still_running, "nginx was not down while the job ran"
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    got = collect(w, tool, run_name, summary)
    check("nginx-restart", tool, where, p, clean, got, w, run_name, injected=1, deterministic=True)


#: inputs of their own, 6 shards of 20 samples: 5 cls values, all but 5 samples are
#: duplicates; 64K of memory and fan-in 4: a few runs a shard, merge levels in both
#: passes, and few enough tasks to keep the test short
DEDUP_SHARDS, DEDUP_PER_SHARD, KEPT = 6, 20, 5
DEDUP = ["--key", "txt", "--dedup", "cls", "--memory", "64K", "--fan-in", "4"]


def run_dedup(w: World, base: str, run_name: str, where: list[str],
              opts: str | None = None) -> tuple[subprocess.CompletedProcess, Result]:
    summary = w.tmp / f"{run_name}.json"
    args = [w.url(base, f"in-dedup/data-{{0..{DEDUP_SHARDS - 1}}}.tar"),
            w.url(base, f"{run_name}/o-@4.tar"), "--scratch", w.url(base, f"{run_name}/scratch/")]
    p = run("htsort", *args, *DEDUP, *where, "-q",
            "--summary", summary, "--storage-options", opts or storage_options(), env=ENV,
            timeout=240)
    return p, collect(w, "htsort", run_name, summary)


@pytest.fixture(scope="module")
def clean_dedup(world) -> Result:
    world.proxy.inject(None)
    p, clean = run_dedup(world, world.proxy.url, "clean-dedup", ["--workers", "2"])
    assert p.returncode == 0, p.stderr[-4000:]
    assert sum(clean.samples.values()) == KEPT
    assert clean.summary["extra"]["duplicates"] == DEDUP_SHARDS * DEDUP_PER_SHARD - KEPT
    levels = {lv["stage"] for lv in clean.summary["extra"]["levels"]}
    assert levels == {"dedup-merge", "merge"}, levels
    return clean


@pytest.mark.parametrize("fault", ["random-503", "reset"])
def test_chaos_htsort_dedup_pass(world, request, clean_dedup, fault):
    """htsort --dedup by another key (stage 1 by content, the dedup pass, merge levels in
    both passes, all on HTTP) under proxy faults: the clean run's bytes, the same
    duplicate count, no run left behind."""
    clean = clean_dedup
    inject, http_extra, where = FAULTS[fault]
    run_name = f"{fault}-htsort-dedup"
    world.proxy.inject(**inject)
    try:
        p, got = run_dedup(world, world.proxy.url, run_name, where_args(where, request),
                           opts=storage_options(**http_extra))
        injected = world.proxy.stats["injected"]
        faults = list(world.proxy.log)
    finally:
        world.proxy.inject(None)
    check(fault, "htsort --dedup", where, p, clean, got, world, run_name, injected,
          deterministic=True, faults=faults)
    assert got.summary["extra"]["duplicates"] == clean.summary["extra"]["duplicates"]
    assert got.summary["samples_dropped"] == DEDUP_SHARDS * DEDUP_PER_SHARD - KEPT
