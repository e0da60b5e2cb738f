"""Counts that add up (issue 24): for every tool, ``read = written + dropped + failed +
merged + reduced`` -- samples joined by ``--merge`` count as merged, samples a
``reduce_samples()`` folds into others as reduced, duplicates of ``--dedup`` as dropped.
A failed shard's samples, in every tool: those read before the failure count as failed
(those the script dropped stay dropped), and nothing of the shard as written.  Each job
is small; the written count is checked against the samples read back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import webdataset as wds
from helpers import make_shards, read_wds, run

import htools

MAPPER = """
def process_sample(s):
    i = int(s["__key__"][-4:])
    if i % 4 == 0:
        return None                      # dropped: 5 a shard of 20
    if i == 5 or s["__key__"] in ("s2/k0009", "s2/k0010"):
        raise ValueError("bad sample")   # 1 a shard under --max-errors 1; s2 fails at k0009
    return s
"""
REDUCE = """
def process_sample(s):
    return None if s["drop"] == b"1" else s
def sort_key(s):
    return s["grp"].decode()
def reduce_samples(key, samples):
    if key == "3" and FAIL:
        raise ValueError("bad group")
    return {"__key__": key, "n": str(len(samples)).encode()}
"""


def counters(s) -> dict[str, int]:
    return {n: getattr(s, f"samples_{n}") for n in
            ("read", "written", "dropped", "failed", "merged", "reduced")}


def joinable(tmp: Path) -> list[str]:
    """A (120 samples) and B (120), 60 keys in both."""
    for name, keys, field in (("a", range(120), "jpg"), ("b", range(60, 180), "cls")):
        with wds.TarWriter(str(tmp / f"{name}.tar")) as w:
            for i in keys:
                w.write({"__key__": f"k{i:04d}", field: b"%d" % i})
    return [str(tmp / "a.tar"), str(tmp / "b.tar")]


def reducible(tmp: Path, fail: bool) -> str:
    """30 samples: 10 dropped by process_sample, 20 in 13 groups (7 folded by the reduce)."""
    with wds.TarWriter(str(tmp / "r.tar")) as w:
        for i in range(30):
            w.write({"__key__": f"r{i:04d}", "grp": b"%d" % (i % 13),
                     "drop": b"1" if i < 10 else b"0"})
    (tmp / "reduce.py").write_text(f"FAIL = {fail}\n" + REDUCE)
    return str(tmp / "r.tar")


def files(tmp: Path) -> str:
    folder = tmp / "files"
    folder.mkdir()
    for i in range(7):
        (folder / f"f{i}.txt").write_text(f"file {i}")
    return str(folder)


DATA = "in/data-@3.tar"  # make_shards: 3 shards of 20, cls = i % 5 (5 distinct values)

# name -> (job(tmp, client) -> summary, the counts it must report; None: not checked)
JOBS: dict[str, tuple[Callable, dict]] = {
    "htmapper": (lambda t, c: htools.map_shards(str(t / DATA), str(t / "o" / "o-@3.tar"),
                                                str(t / "m.py"), client=c, max_errors=1),
                 # s0, s1: 20 read, 5 dropped, 1 failed, 14 written; s2 fails at its 10th
                 # sample: 10 read, 3 dropped, 7 failed, nothing written
                 {"read": 50, "written": 28, "dropped": 13, "failed": 9}),
    "htextract": (lambda t, c: htools.extract(str(t / DATA), fields=["__key__", "cls"],
                                              out=str(t / "rows.tsv"), client=c),
                  {"read": 60, "written": 60}),
    "htupload files": (lambda t, c: htools.upload(files(t), str(t / "o" / "o-@2.tar"),
                                                  client=c), {"read": 7, "written": 7}),
    "htupload shards": (lambda t, c: htools.upload(str(t / DATA), str(t / "o" / "o-@2.tar"),
                                                   client=c), {"read": 60, "written": 60}),
    "htshuffle": (lambda t, c: htools.shuffle(str(t / DATA), str(t / "o" / "o-@2.tar"),
                                              client=c), {"read": 60, "written": 60}),
    "htshuffle --dedup": (lambda t, c: htools.shuffle(str(t / DATA), str(t / "o" / "o-@2.tar"),
                                                      dedup="cls", client=c),
                          {"read": 60, "written": 5, "dropped": 55}),
    "htsort --merge": (lambda t, c: htools.sort(joinable(t), str(t / "o" / "o-@2.tar"),
                                                merge=True, client=c),
                       {"read": 240, "written": 180, "merged": 60}),
    "htsort reduce": (lambda t, c: htools.sort(reducible(t, False), str(t / "o" / "o-@2.tar"),
                                               script=str(t / "reduce.py"), client=c),
                      {"read": 30, "written": 13, "dropped": 10, "reduced": 7}),
    "htsort reduce, a failed output": (
        lambda t, c: htools.sort(reducible(t, True), str(t / "o" / "o-@2.tar"),
                                 script=str(t / "reduce.py"), client=c),
        {"read": 30, "dropped": 10, "written": None, "failed": None, "reduced": None}),
    "htsort --dedup by another key": (
        lambda t, c: htools.sort(str(t / DATA), str(t / "o" / "o-@2.tar"), key="txt",
                                 dedup="cls", client=c),
        {"read": 60, "written": 5, "dropped": 55}),
}


@pytest.mark.parametrize("job", list(JOBS))
def test_counts_add_up(tmp_path, processes_client, job):
    make_shards(tmp_path / "in", shards=3, per_shard=20)
    (tmp_path / "m.py").write_text(MAPPER)
    fn, expected = JOBS[job]
    s = fn(tmp_path, processes_client)
    s = getattr(s, "summary", s)
    got = counters(s)
    assert got["read"] == got["written"] + got["dropped"] + got["failed"] + got["merged"] \
        + got["reduced"], got
    assert s.samples_mapped == s.samples_written, s.as_dict()  # every sample maps to one
    expected = {"dropped": 0, "failed": 0, "merged": 0, "reduced": 0, **expected}
    expected = {k: v for k, v in expected.items() if v is not None}  # None: depends on the plan
    assert {k: got[k] for k in expected} == expected
    written = sorted((tmp_path / "o").glob("o-*.tar"))
    if written:
        assert len(read_wds(written)) == s.samples_written
    if job in ("htmapper", "htsort reduce, a failed output"):
        assert not s.ok and s.shards_failed == 1 and s.samples_failed > 0
    else:
        assert s.ok, s.as_dict()


def test_merge_counts_in_the_line_json_and_notebook(tmp_path):
    """The CLI's summary line, --summary JSON and the notebook table show the merged."""
    a, b = joinable(tmp_path)
    p = run("htsort", a, b, tmp_path / "o" / "o-@2.tar", "--merge", "--workers", "1",
            "--summary", tmp_path / "s.json")
    assert p.returncode == 0, p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert "samples 240 read, 180 written, 0 dropped, 0 failed, 60 merged;" in line, line
    d = json.loads((tmp_path / "s.json").read_text())
    assert (d["samples_merged"], d["samples_reduced"]) == (60, 0)
    s = htools.JobSummary("htsort", samples_read=240, samples_written=180, samples_merged=60)
    assert "0 failed, 60 merged" in s._repr_html_() and "reduced" not in s._repr_html_()
