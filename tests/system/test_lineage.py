"""Lineage in the shard index, and a --resume that checks it: outputs made by another
job (an edited script, another --seed) are refused in one line before anything runs,
unless --resume-any; an index without lineage resumes as before, with a note."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import BIN, child_env, interrupt, make_shards, ok, read_wds, run

from htools import lineage, lineage_record
from htools.errors import HtoolsError
from htools.options import RunOptions
from htools.shards import OutputSet

W1 = ("--workers", "1")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _refused(p, *phrases: str) -> str:
    """The one line a refused resume prints."""
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "made by another job" in lines[0] and "--resume-any" in lines[0], lines[0]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def _mapped(tmp_path: Path, shards: int) -> tuple[Path, tuple]:
    """An htmapper job run once (its script, and its command line for another run)."""
    make_shards(tmp_path / "in", shards=shards, per_shard=4)
    script = tmp_path / "s.py"
    script.write_text("def process_sample(s):\n    return s\n")
    args = ("htmapper", "-p", script, tmp_path / "in" / f"data-@{shards}.tar",
            tmp_path / "out" / f"o-@{shards}.tar", *W1)
    ok(run(*args))
    return script, args


def test_resume_after_editing_the_script_is_refused_and_writes_nothing(tmp_path):
    script, args = _mapped(tmp_path, 3)
    made = json.loads((tmp_path / "out" / "o.index.json").read_text())["lineage"]
    assert made["tool"] == "htmapper" and made["inputs"]["count"] == 3
    (tmp_path / "out" / "o-1.tar").unlink()
    ok(run(*args, "--resume"))  # the same job: resumed, as before
    (tmp_path / "out" / "o-1.tar").unlink()
    before = _snapshot(tmp_path / "out")
    script.write_text("def process_sample(s):\n    s['new'] = b'x'\n    return s\n")
    line = _refused(run(*args, "--resume"), "script digest changed: ")
    old, new = made["script"]["digest"][:4], line.split(" -> ")[1][:4]
    assert f"{old}.. -> " in line and new != old
    assert _snapshot(tmp_path / "out") == before  # nothing written, the index untouched


def test_resume_after_changing_the_seed_is_refused_and_resume_any_keeps_them(tmp_path):
    make_shards(tmp_path / "in", shards=3, per_shard=6)
    out = tmp_path / "out"
    args = ("htshuffle", tmp_path / "in" / "data-@3.tar", out / "x-@3.tar", *W1)
    ok(run(*args, "--seed", "1"))
    seed1 = _snapshot(out)
    (out / "x-0.tar").unlink()
    kept = _snapshot(out)
    _refused(run(*args, "--seed", "2", "--resume"), "--seed changed: 1 -> 2")
    assert _snapshot(out) == kept
    p = ok(run(*args, "--seed", "2", "--resume-any", "--summary", tmp_path / "s.json"))
    notes = json.loads((tmp_path / "s.json").read_text())["notes"]
    assert any("2 output(s) kept by --resume-any were made by another job: --seed "
               "changed: 1 -> 2" in n for n in notes), (notes, p.stderr)
    now = _snapshot(out)
    assert now["x-1.tar"] == seed1["x-1.tar"] and now["x-2.tar"] == seed1["x-2.tar"]
    doc = json.loads(now["x.index.json"])
    assert doc["lineage"]["options"]["seed"] == 2 and "--seed changed" in doc["lineage"]["mixed"]


def test_a_job_that_failed_part_way_records_its_lineage_for_resume(tmp_path):
    """No index vouches for the outputs of a failed job, but o.lineage.json says who
    made them: --resume with another script is refused; the same script resumes, and
    the index that then vouches for the set replaces the record."""
    make_shards(tmp_path / "in", shards=3, per_shard=4)
    out = tmp_path / "out"
    script = tmp_path / "s.py"
    script.write_text("import os\n"
                      "def process_sample(s):\n"
                      "    if s['__key__'].startswith('s1/') and not os.path.exists(%r):\n"
                      "        raise RuntimeError('flaky')\n"
                      "    return s\n" % str(tmp_path / "fixed"))
    args = ("htmapper", "-p", script, tmp_path / "in" / "data-@3.tar", out / "o-@3.tar", *W1)
    p = run(*args)
    assert p.returncode == 1, p.stderr
    assert sorted(x.name for x in out.iterdir()) == ["o-0.tar", "o-2.tar", "o.lineage.json"]
    record = json.loads((out / "o.lineage.json").read_text())
    assert record["complete"] is False and record["lineage"]["script"]["name"] == "s.py"
    before = _snapshot(out)
    edited = script.read_text().replace("return s", "s['v'] = b'2'\n    return s")
    script.write_text(edited)
    _refused(run(*args, "--resume"), "script digest changed: ")
    assert _snapshot(out) == before
    script.write_text(edited.replace("s['v'] = b'2'\n    ", ""))  # the failed job's script
    (tmp_path / "fixed").touch()  # what failed was outside the script
    ok(run(*args, "--resume"))
    assert sorted(x.name for x in out.iterdir()) == ["o-0.tar", "o-1.tar", "o-2.tar",
                                                     "o.index.json"]
    assert json.loads((out / "o.index.json").read_text())["lineage"] == record["lineage"]


def test_an_index_without_lineage_resumes_with_a_note(tmp_path):
    script, args = _mapped(tmp_path, 2)
    index = tmp_path / "out" / "o.index.json"
    doc = json.loads(index.read_text())
    del doc["lineage"]  # as an index made before lineage was recorded
    index.write_text(json.dumps(doc))
    (tmp_path / "out" / "o-1.tar").unlink()
    script.write_text("def process_sample(s):\n    return dict(s)\n")  # not detectable
    p = ok(run(*args, "--resume"))
    assert "1 output(s) kept by --resume have no recorded lineage" in p.stderr
    assert json.loads(index.read_text())["lineage"]["script"]["name"] == "s.py"


def test_what_differs_is_named_once_each():
    base = lineage.make("htsort", inputs=["/d/a-0.tar", "/d/a-1.tar"], outputs="/o/x-@2.tar",
                        options={"key": "cls", "key_type": "str", "reverse": False})
    assert lineage.differences(base, base) == []
    other = lineage.make("htsort", inputs=["/d/a-0.tar"], outputs="/o/x-@2.tgz",
                         options={"key": "cls", "key_type": "int", "reverse": True})
    said = lineage.differences(base, other)
    assert said[:3] == ["compression changed: none -> gzip", "--key-type changed: str -> int",
                        "--reverse changed: unset -> True"]
    assert said[3].startswith("inputs changed: 2 inputs (") and " -> 1 inputs (" in said[3]
    assert lineage.differences(base, {**base, "tool": "htshuffle"}) == \
        ["made by htsort, not htshuffle"]
    # credentials never reach the index; the same inputs under another password agree
    a = lineage.inputs_of(["http://u:secret@h/a.tar"])
    assert "secret" not in json.dumps(a)
    assert a["digest"] == lineage.inputs_of(["http://u:other@h/a.tar"])["digest"]


def test_overwrite_by_another_job_first_deletes_the_index_that_vouched_for_the_set(tmp_path):
    """So that a job that replaces outputs and fails part-way leaves no index whose
    lineage a later --resume of the old job would accept."""
    outset = OutputSet.parse(str(tmp_path / "o-@2.tar"))
    index = tmp_path / "o.index.json"
    old = lineage.counted(lineage.make("htshuffle", inputs=["/d/a.tar"], outputs=outset.pattern,
                                       options={"seed": 1}), outset.count)  # as a job's
    new = {**old, "options": {**old["options"], "seed": 2}}
    index.write_text(json.dumps({"shardlist": [], "lineage": old}))
    lineage_record.check_lineage(outset, old, RunOptions(overwrite=True))  # the same job
    lineage_record.check_lineage(outset, new, RunOptions())  # refused later if outputs exist
    lineage_record.check_lineage(outset, new, RunOptions(resume_any=True))
    lineage_record.check_lineage(outset, new, RunOptions(overwrite=True, dry_run=True))
    assert index.exists()
    with pytest.raises(HtoolsError, match="--seed changed: 1 -> 2; use --overwrite"):
        lineage_record.check_lineage(outset, new, RunOptions(resume=True, dry_run=True))
    lineage_record.check_lineage(outset, new, RunOptions(overwrite=True))
    assert not index.exists()


SLOW = ("import time\n"
        "def process_sample(s):\n"
        "    time.sleep(0.1)\n"
        "    s['v'] = b'%s'\n"
        "    return s\n")


def _interrupted(script: Path, args: tuple, out: Path) -> None:
    """Run ``args`` and Ctrl-C it once its first output exists (and more remain)."""
    cmd = [BIN / str(args[0]), *args[1:]]
    p = interrupt(cmd, lambda: any(out.glob("o-*.tar")), child_env())
    assert p.returncode == 130, p.stderr[-3000:]
    assert (out / "o.lineage.json").exists() and not (out / "o.index.json").exists()


def test_a_job_stopped_by_ctrl_c_leaves_its_lineage_for_resume(tmp_path):
    """The record is written before the first task runs, so a client stopped by Ctrl-C
    (or killed) leaves who made the outputs it wrote: --resume with another script is
    refused, the same script resumes, and the index then replaces the record."""
    make_shards(tmp_path / "in", shards=4, per_shard=10)
    out, script = tmp_path / "out", tmp_path / "s.py"
    script.write_text(SLOW % "1")
    args = ("htmapper", "-p", script, tmp_path / "in" / "data-@4.tar", out / "o-@4.tar", *W1)
    _interrupted(script, args, out)
    record = json.loads((out / "o.lineage.json").read_text())
    assert record["complete"] is False and record["lineage"]["script"]["name"] == "s.py"
    kept = sorted(out.glob("o-*.tar"))
    assert 1 <= len(kept) < 4
    script.write_text(SLOW % "2")
    before = _snapshot(out)
    _refused(run(*args, "--resume"), "script digest changed: ")
    assert _snapshot(out) == before
    script.write_text(SLOW % "1")
    ok(run(*args, "--resume"))
    assert sorted(x.name for x in out.iterdir()) == ["o-0.tar", "o-1.tar", "o-2.tar", "o-3.tar",
                                                     "o.index.json"]
    assert {s["v"] for s in read_wds(sorted(out.glob("o-*.tar")))} == {b"1"}


def test_an_overwrite_stopped_part_way_is_not_resumed_as_one_jobs_set(tmp_path):
    """Job A's set, then job B (another script) --overwrite, stopped after some outputs:
    the others are still A's, so B's --resume is refused (it would mix the two jobs);
    --resume-any keeps them and the index says the set is mixed; --overwrite redoes it."""
    make_shards(tmp_path / "in", shards=4, per_shard=10)
    out, script = tmp_path / "out", tmp_path / "s.py"
    script.write_text(SLOW % "A")
    args = ("htmapper", "-p", script, tmp_path / "in" / "data-@4.tar", out / "o-@4.tar", *W1)
    ok(run(*args))
    script.write_text(SLOW % "B")
    before = {x.name: x.stat().st_mtime_ns for x in out.glob("o-*.tar")}
    cmd = [BIN / "htmapper", *args[1:], "--overwrite"]
    p = interrupt(cmd, lambda: any(x.stat().st_mtime_ns != before[x.name]
                                   for x in out.glob("o-*.tar")), child_env())
    assert p.returncode == 130, p.stderr[-3000:]
    record = json.loads((out / "o.lineage.json").read_text())
    assert "script digest changed" in record["overwriting"]
    values = {s["v"] for s in read_wds(sorted(out.glob("o-*.tar")))}
    assert values == {b"A", b"B"}  # what a silent resume would have called B's
    p = run(*args, "--resume")
    assert p.returncode == 1 and "did not finish: some may still be another job's" in p.stderr
    assert "--resume-any" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = ok(run(*args, "--resume-any"))
    assert "mixed" in json.loads((out / "o.index.json").read_text())["lineage"]
    assert not (out / "o.lineage.json").exists()
    ok(run(*args, "--overwrite"))
    doc = json.loads((out / "o.index.json").read_text())
    assert "mixed" not in doc["lineage"]
    assert {s["v"] for s in read_wds(sorted(out.glob("o-*.tar")))} == {b"B"}


def test_a_record_beside_no_output_does_not_refuse_another_job(tmp_path):
    """Ctrl-C before the first output: the record names no output that exists, so a
    --resume by another script runs (and its index replaces the record)."""
    make_shards(tmp_path / "in", shards=2, per_shard=10)
    out, script = tmp_path / "out", tmp_path / "s.py"
    script.write_text(SLOW.replace("0.1", "2") % "1")
    args = ("htmapper", "-p", script, tmp_path / "in" / "data-@2.tar", out / "o-@2.tar", *W1)
    cmd = [BIN / "htmapper", *args[1:]]
    p = interrupt(cmd, (out / "o.lineage.json").exists, child_env())
    assert p.returncode == 130, p.stderr[-3000:]
    assert sorted(x.name for x in out.iterdir()) == ["o.lineage.json"]
    script.write_text(SLOW % "2")
    ok(run(*args, "--resume"))
    assert sorted(x.name for x in out.iterdir()) == ["o-0.tar", "o-1.tar", "o.index.json"]
