"""htmapper --shell 'COMMAND': one `sh -c` per sample in a folder of sample.FIELD files;
outputs read back with webdataset."""

from __future__ import annotations

import gc
import json
import os

import pytest
from helpers import make_shards, ok, read_wds, run

import htools
from htools.errors import HtoolsError, ScriptError, ScriptLoadError
from htools.usercode import shell
from htools.usercode.script import Script

UPPER = ('tr a-z A-Z < sample.txt > sample.up && rm sample.txt && printf %s "$KEY" > sample.k '
         '&& if [ "$(cat sample.cls)" = 0 ]; then rm sample.*; fi; echo scratch > tmp.x')


def expected(samples: dict) -> dict:
    out = {}
    for key, s in samples.items():
        if s["cls"] == b"0":
            continue
        out[key] = {"__key__": key, "jpg": s["jpg"], "cls": s["cls"],
                    "up": s["txt"].decode().translate(
                        str.maketrans("abcdefghijklmnopqrstuvwxyz",
                                      "ABCDEFGHIJKLMNOPQRSTUVWXYZ")).encode(),
                    "k": key.encode()}
    return out


def test_cli_shell_maps_fields(tmp_path):
    samples = make_shards(tmp_path / "in", shards=3, per_shard=10)
    summary = tmp_path / "summary.json"
    ok(run("htmapper", "-s", UPPER, str(tmp_path / "in/data-{0..2}.tar"),
           tmp_path / "out-@3.tar", "--workers", "2", "-q", "--summary", summary))
    got = {s["__key__"]: s for s in read_wds(sorted(tmp_path.glob("out-*.tar")))}
    assert got == expected(samples)
    s = json.loads(summary.read_text())
    assert s["ok"] and s["samples_read"] == 30 and s["samples_dropped"] == 6
    assert s["samples_written"] == 24
    index = json.loads((tmp_path / "out.index.json").read_text())
    assert sum(e["nsamples"] for e in index["shardlist"]) == 24


def test_python_api_shell(tmp_path, processes_client):
    samples = make_shards(tmp_path / "in", shards=2, per_shard=5)
    summary = htools.map_shards(str(tmp_path / "in/data-{0..1}.tar"),
                                str(tmp_path / "api-@2.tar"), shell=UPPER, client=processes_client,
                                quiet=True)
    assert summary.ok, summary.failures
    got = {s["__key__"]: s for s in read_wds(sorted(tmp_path.glob("api-*.tar")))}
    assert got == expected(samples)
    with pytest.raises(HtoolsError, match="not both"):
        htools.map_shards("a.tar", "b.tar", "script.py", shell="true", client=processes_client)
    with pytest.raises(HtoolsError, match="shell command"):
        htools.map_shards("a.tar", "b.tar", client=processes_client)


def test_failing_command_is_a_sample_error(tmp_path):
    make_shards(tmp_path / "in", shards=1, per_shard=10)
    cmd = 'if [ "$(cat sample.cls)" = 3 ]; then echo "cannot do $KEY" >&2; exit 4; fi'
    summary = tmp_path / "s.json"
    ok(run("htmapper", "-s", cmd, tmp_path / "in/data-0.tar", tmp_path / "out-0.tar",
           "--workers", "1", "--max-errors", "2", "-q", "--summary", summary))
    s = json.loads(summary.read_text())
    assert s["sample_errors"] == 2 and s["samples_written"] == 8
    keys = sorted(e["key"] for e in s["errors"])
    assert keys == ["s0/k0003", "s0/k0008"]
    assert all("exited 4" in e["error"] and f"cannot do {e['key']}" in e["error"]
               for e in s["errors"])
    assert len(read_wds([tmp_path / "out-0.tar"])) == 8
    # over the budget: the shard fails and writes nothing; the error names key and stderr
    p = run("htmapper", "-s", cmd, tmp_path / "in/data-0.tar", tmp_path / "out2-0.tar",
            "--workers", "1", "-q")
    assert p.returncode == 1
    assert "key 's0/k0003'" in p.stderr and "cannot do s0/k0003" in p.stderr, p.stderr
    assert not (tmp_path / "out2-0.tar").exists()


def test_missing_program_stops_the_job(tmp_path):
    """The leading program missing on the workers: fatal, one line, the job stops."""
    make_shards(tmp_path / "in", shards=4, per_shard=3)
    summary = tmp_path / "s.json"
    p = run("htmapper", "-s", "no-such-prog-xyz sample.jpg", str(tmp_path / "in/data-{0..3}.tar"),
            tmp_path / "out-@4.tar", "--workers", "1", "-q", "--summary", summary)
    assert p.returncode == 1
    failed = [ln for ln in p.stderr.splitlines() if ln.startswith("htools: FAILED")]
    assert len(failed) == 1 and "no-such-prog-xyz: command not found" in failed[0], p.stderr
    s = json.loads(summary.read_text())
    assert s["shards_failed"] == 4 and s["samples_read"] <= 3  # later shards never ran
    assert not list(tmp_path.glob("out-*"))


def test_program_not_found_later_stops_the_job_too(tmp_path):
    make_shards(tmp_path / "in", shards=3, per_shard=3)
    p = run("htmapper", "-s", "true && no-such-prog-xyz", str(tmp_path / "in/data-{0..2}.tar"),
            tmp_path / "out-@3.tar", "--workers", "1", "-q")
    assert p.returncode == 1
    failed = [ln for ln in p.stderr.splitlines() if ln.startswith("htools: FAILED")]
    assert len(failed) == 1 and "3 shards with the same error" in failed[0], p.stderr
    assert "no-such-prog-xyz: command not found (exit 127" in failed[0], p.stderr


def test_program_missing_on_some_samples_fails_only_those(tmp_path):
    """htmapper -s '... nosuchprog ...' --max-errors 5 (issue 24): a program missing on a
    path that only some samples take (not the first) fails each of them, counted against
    --max-errors, with one line naming it; the other samples are written."""
    make_shards(tmp_path / "in", shards=2, per_shard=10)
    cmd = 'if [ "$(cat sample.cls)" = 3 ]; then no-such-prog-xyz sample.jpg; fi'
    summary = tmp_path / "s.json"
    p = run("htmapper", "-s", cmd, str(tmp_path / "in/data-{0..1}.tar"), tmp_path / "out-@2.tar",
            "--workers", "1", "--max-errors", "5", "-q", "--summary", summary)
    assert p.returncode == 0, p.stderr  # within --max-errors: every shard written
    s = json.loads(summary.read_text())
    assert s["shards_failed"] == 0 and s["shards_done"] == 2, s
    assert s["sample_errors"] == 4 and s["samples_failed"] == 4 and s["samples_written"] == 16
    assert all("no-such-prog-xyz: command not found (exit 127" in e["error"]
               for e in s["errors"])
    assert len(read_wds([tmp_path / "out-0.tar", tmp_path / "out-1.tar"])) == 16
    # over the budget, such a shard fails (and only it): --max-errors 1
    p = run("htmapper", "-s", cmd, str(tmp_path / "in/data-{0..1}.tar"), tmp_path / "o2-@2.tar",
            "--workers", "1", "--max-errors", "1", "-q", "--summary", summary)
    s = json.loads(summary.read_text())
    assert p.returncode == 1 and s["shards_failed"] == 2, s
    assert s["samples_read"] == s["samples_failed"] == 18  # read up to the 2nd error, each


@pytest.mark.parametrize("args, why", [
    (["-s", "true", "-p", "x.py"], "exclude each other"),
    ([], "give -p SCRIPT.py"),
    (["-s", "if then"], "does not parse"),
    (["-s", "  "], "empty"),
    (["-s", "true", "--py-files", "x.py"], "--py-files goes with -p"),
])
def test_cli_refuses(tmp_path, args, why):
    make_shards(tmp_path / "in", shards=1, per_shard=1)
    p = run("htmapper", *args, tmp_path / "in/data-0.tar", tmp_path / "out-0.tar")
    assert p.returncode in (1, 2) and why in p.stderr, p.stderr
    assert not (tmp_path / "out-0.tar").exists()


# ------------------------------------------------------------ the runner --

def test_runner_reuses_and_empties_one_folder():
    runner = Script.from_shell("ls > .ls; mv .ls sample.ls; echo junk > other; mkdir d") \
        .load().process_sample
    a = runner({"__key__": "a", "__url__": "u", "jpg": b"x", "cls": "1"})
    root = runner.root
    assert a == {"__key__": "a", "cls": b"1", "jpg": b"x", "ls": b"sample.cls\nsample.jpg\n"}
    assert os.listdir(runner.dir) == []
    sample = {"__key__": "b", "__url__": "u", "txt": b"t"}
    sample["key"] = sample["__key__"]  # the script's alias: not a field
    b = runner(sample)
    assert runner.root == root and os.listdir(runner.dir) == []
    assert b == {"__key__": "b", "txt": b"t", "ls": b"sample.txt\n"}
    del runner, a, b
    gc.collect()
    assert not os.path.exists(root)


def test_runner_errors():
    runner = shell.ShellRunner("true")
    for name in ["a/b", "..", "x..y"]:
        with pytest.raises(ScriptError, match="cannot be a file name"):
            runner({"__key__": "k", name: b"v"})
    assert runner({"__key__": "k", "a": b"v"}) == {"__key__": "k", "a": b"v"}
    assert shell.ShellRunner("rm sample.*")({"__key__": "k", "a": b"v"}) is None
    with pytest.raises(shell.ShellError, match="was killed by signal 9"):
        shell.ShellRunner("kill -9 $$")({"__key__": "k", "a": b"v"})
    with pytest.raises(ScriptLoadError, match="no-such-prog-xyz: command not found"):
        Script.from_shell("no-such-prog-xyz --help").load()
    assert shell.leading_program("FOO=1 prog") is None
    assert shell.leading_program("convert sample.jpg x") == "convert"
    assert shell.leading_program("if true; then :; fi") is None
    assert shell._not_found("sh: 1: foo: not found\n") == "foo"
    assert shell._not_found("sh: line 1: bar: command not found") == "bar"
    assert Script.from_shell("true") == Script.from_shell("true")
    assert Script.from_shell("true").defines("process_sample")
