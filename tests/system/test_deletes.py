"""Every DELETE htools sends is of something its job made (issue 25, item 4).

Every tool runs over the tests' nginx through the chaos proxy (no fault: it records each
request), htshuffle and htsort with their runs on HTTP (``--scratch``), plus an
``--overwrite`` run over existing outputs and two failed jobs (a script that raises).
Each DELETE path must be one of the job's outputs (or its shard index), a temporary
name of an output (``.tmp-``) or the write probe (``.htools-probe-``) beside them, or
lie under the scratch prefix the job made for itself (``SCRATCH/TOOL-HEX/``): never the
``--scratch`` folder itself, a folder above the outputs, ``/`` or a top-level folder.
"""

from __future__ import annotations

import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from fixtures.chaos import ChaosProxy
from helpers import child_env, make_shards, run

from htools.shards import expand

SHARDS, PER_SHARD = 8, 4
ENV = child_env(HTOOLS_RETRY_BACKOFF="0.01", HTOOLS_RETRY_CAP="0.05")
IDENTITY = "def process_sample(sample):\n    return sample\n"
FAILING = ("def process_sample(sample):\n    if sample['__key__'] == 's3/k0002':\n"
           "        raise ValueError('this sample fails')\n    return sample\n")
FAILING_REDUCE = ("def reduce_samples(key, samples):\n    if key == 's5/k0001':\n"
                  "        raise ValueError('this key fails')\n    return samples\n")


@dataclass
class Job:
    name: str
    tool: str
    output: str                  # the output pattern, a path under the store's root
    scratch: str | None = None   # the --scratch folder given
    extra: tuple = ()
    ok: bool = True


def path(url_or_path: str) -> str:
    return unquote(urlsplit(url_or_path).path)


def why_not(p: str, job: Job) -> str | None:
    """None when a DELETE of path ``p`` is one the job may send, else why not."""
    if p.strip("/").count("/") < 1:
        return "the root or a top-level folder"
    outputs = {path(u) for u in expand(job.output)}
    folder = posixpath.dirname(path(job.output))
    stem = posixpath.basename(path(job.output)).split("@")[0].rstrip("-_.")
    outputs.add(f"{folder}/{stem}.index.json")
    outputs.add(f"{folder}/{stem}.lineage.json")  # the record of who makes them, replaced
    name = posixpath.basename(p)
    if p in outputs:
        return None
    if posixpath.dirname(p) == folder and (name.startswith(".htools-probe-")
                                           or ".tmp-" in name):
        return None
    if job.scratch is not None:
        root = path(job.scratch).rstrip("/") + "/"
        if posixpath.dirname(p) + "/" == root and name.startswith(".htools-probe-"):
            return None  # the pre-flight write probe of the --scratch folder
        mine = p[len(root):].split("/")[0] if p.startswith(root) else ""
        if mine.startswith(f"{job.tool}-") and len(mine) > len(job.tool) + 1:
            return None
        if p.startswith(root) or root.startswith(p.rstrip("/") + "/"):
            return "the --scratch folder (or above it), not the job's own prefix in it"
    return "neither an output, its temporary name, the probe nor the job's scratch"


@pytest.fixture(scope="module")
def world(nginx_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deletes")
    sub = f"del-{uuid.uuid4().hex[:8]}"
    data = make_shards(Path(nginx_server.root) / sub / "in", shards=SHARDS, per_shard=PER_SHARD)
    tree = tmp / "tree"
    for key, sample in data.items():
        (tree / key).parent.mkdir(parents=True, exist_ok=True)
        (tree / f"{key}.txt").write_bytes(sample["txt"])
    for name, body in (("identity.py", IDENTITY), ("failing.py", FAILING),
                       ("failing_reduce.py", FAILING_REDUCE)):
        (tmp / name).write_text(body)
    with ChaosProxy(nginx_server.port) as proxy:
        yield proxy, sub, tmp, tree


def jobs(sub: str) -> list[Job]:
    s = f"/{sub}"
    return [
        Job("htmapper", "htmapper", f"{s}/map/o-@{SHARDS}.tar", extra=("-p", "identity.py")),
        Job("htmapper --overwrite", "htmapper", f"{s}/map/o-@{SHARDS}.tar",
            extra=("-p", "identity.py", "--overwrite")),
        Job("htupload", "htupload", f"{s}/up/u-@4.tar"),
        Job("htshuffle", "htshuffle", f"{s}/shuf/o-@4.tar", f"{s}/shuf/scratch/",
            ("--seed", "3", "--memory", "16K")),
        Job("htsort", "htsort", f"{s}/sort/o-@4.tar", f"{s}/sort/scratch/", ("--memory", "16K")),
        Job("htmapper failing", "htmapper", f"{s}/fail/o-@{SHARDS}.tar",
            extra=("-p", "failing.py"), ok=False),
        Job("htsort failing", "htsort", f"{s}/sortfail/o-@4.tar", f"{s}/sortfail/scratch/",
            ("-p", "failing_reduce.py", "--memory", "16K"), ok=False),
    ]


def command(job: Job, base: str, sub: str, tmp: Path, tree: Path) -> list:
    inputs = f"{base}/{sub}/in/data-{{0..{SHARDS - 1}}}.tar"
    extra = [str(tmp / a) if a.endswith(".py") else a for a in job.extra]
    scratch = ["--scratch", base + job.scratch] if job.scratch else []
    source = tree if job.tool == "htupload" else inputs
    return [source, base + job.output, *scratch, *extra]


def test_every_delete_is_of_something_the_job_made(world):
    proxy, sub, tmp, tree = world
    deletes: dict[str, list[str]] = {}
    for job in [*jobs(sub), None]:
        if job is None:  # htextract writes locally: only what it may probe on HTTP
            job = Job("htextract", "htextract", f"/{sub}/ext/rows-@1.tsv")
            args = [f"{proxy.url}/{sub}/in/data-{{0..{SHARDS - 1}}}.tar", "-f", "__key__,txt",
                    "-o", tmp / "rows.tsv"]
        else:
            args = command(job, proxy.url, sub, tmp, tree)
        proxy.inject(None)
        p = run(job.tool, *args, "--workers", "2", "-q", env=ENV, timeout=240)
        assert (p.returncode == 0) == job.ok, f"{job.name}: exit {p.returncode}\n{p.stderr[-3000:]}"
        deletes[job.name] = [path(q) for m, q in proxy.requests if m == "DELETE"]
        wrong = {q: why_not(q, job) for q in deletes[job.name] if why_not(q, job)}
        assert not wrong, f"{job.name} sent DELETEs it must not: {wrong}"
    # the record saw the DELETEs it is about: scratch runs, a failed job's, the probes
    assert any("/scratch/htsort-" in q for q in deletes["htsort"]), deletes["htsort"]
    assert any("/scratch/htsort-" in q for q in deletes["htsort failing"])
    assert any(".htools-probe-" in q for q in deletes["htmapper"]), deletes["htmapper"]


@pytest.mark.parametrize("p,bad", [
    ("/", True), ("/data/", True), ("/d/s/", True), ("/d/s/scratch/", True),
    ("/d/s/scratch/htsort-0123456789ab/", False), ("/d/s/scratch/htsort-0123/r-1", False),
    ("/d/s/o-0.tar", False), ("/d/s/.o-0.tar.tmp-1f", False), ("/d/s/.htools-probe-9", False),
    ("/d/s/o.index.json", False), ("/d/s/other.tar", True), ("/d/o-0.tar", True),
    ("/d/s/scratch/.htools-probe-9", False), ("/d/s/scratch/other", True),
])
def test_the_rule_itself(p, bad):
    """The rule above tells a job's own objects from anything else."""
    job = Job("t", "htsort", "/d/s/o-@2.tar", "/d/s/scratch/")
    assert (why_not(p, job) is not None) == bad
