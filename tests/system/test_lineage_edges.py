"""The lineage record's edges, with the tools run as processes and stopped by Ctrl-C: an
htupload of a folder that sizes its files only as its tasks read them, and an exchange
with --maxcount whose --resume keeps outputs and is stopped in its write stage.  What
either leaves must refuse another job's --resume (see also test_lineage.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import BIN, child_env, interrupt, make_shards, ok, read_wds, run

from htools import lineage, lineage_record, storage
from htools.errors import HtoolsError
from htools.options import RunOptions
from htools.shards import OutputSet

W1 = ("--workers", "1")


def _stopped(args: tuple, ready) -> None:
    """Run ``args`` and Ctrl-C it once ``ready()``."""
    p = interrupt([BIN / str(args[0]), *args[1:]], ready, child_env())
    assert p.returncode == 130, p.stderr[-3000:]


def _refused(p, *phrases: str) -> str:
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "--resume: " in lines[0], lines
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def test_an_unsized_folder_upload_stopped_part_way_leaves_its_lineage(tmp_path):
    """No --maxsize: the files are sized by the tasks that read them, and the lineage
    with their sizes is known only at the end; a job stopped before then still leaves
    who made its outputs (the files by their paths), so a --resume by other options is
    refused, and the same job's resumes and records the sizes in its index."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for i in range(3000):
        (src / f"k{i:05d}.txt").write_bytes(b"%d" % i)
    args = ("htupload", src, out / "o-@1000.tar", *W1)
    _stopped(args, lambda: any(out.glob("o-*.tar")))
    record = json.loads((out / "o.lineage.json").read_text())
    assert record["lineage"]["inputs"]["count"] == 3000
    assert "names" in record["lineage"]["inputs"] and "digest" not in record["lineage"]["inputs"]
    kept = len(list(out.glob("o-*.tar")))
    assert 1 <= kept < 1000
    _refused(run(*args, "--resume", "--mtime", "7"), "made by another job",
             "--mtime changed: 0.0 -> 7.0")
    assert len(list(out.glob("o-*.tar"))) == kept
    p = ok(run(*args, "--resume"))
    assert f"{kept} output(s) kept by --resume were checked by their files' paths, not their " \
        "sizes" in p.stderr
    assert not (out / "o.lineage.json").exists()
    inputs = json.loads((out / "o.index.json").read_text())["lineage"]["inputs"]
    assert inputs["names"] == record["lineage"]["inputs"]["names"] and inputs["bytes"] > 0
    assert len(read_wds(sorted(out.glob("o-*.tar")))) == 3000


SLOW_REDUCE = ("import time\n"
               "def sort_key(s):  # groups of two samples\n"
               "    return s['__key__'][:-2] + str(int(s['__key__'][-2:]) // 2)\n"
               "def reduce_samples(key, samples):\n"
               "    time.sleep(0.4)\n"
               "    return {'__key__': key, 'v': b'%s'}\n")


def _in_write_stage(out: Path, more_than: int):
    """Ready once the job has written an output of its own (its write stage runs)."""
    return lambda: len(list(out.glob("o-*.tar"))) > more_than


def test_a_maxcount_resume_that_keeps_outputs_stopped_in_its_writes_still_refuses(tmp_path):
    """Job A (an htsort --maxcount with a slow reduce) stopped in its write stage; job B
    (another script) --resume-any keeps A's outputs and is stopped in its writes too: the
    set holds both jobs' outputs, so neither B's --resume nor A's may keep them silently."""
    make_shards(tmp_path / "in", shards=2, per_shard=20)  # 20 groups, 20 outputs
    out, script = tmp_path / "out", tmp_path / "s.py"
    args = ("htsort", "-p", script, tmp_path / "in" / "data-@2.tar", out / "o-%06d.tar",
            "--maxcount", "1", *W1)
    script.write_text(SLOW_REDUCE % "A")
    _stopped(args, _in_write_stage(out, 0))
    a_kept = len(list(out.glob("o-*.tar")))
    assert 1 <= a_kept < 15, a_kept
    script.write_text(SLOW_REDUCE % "B")
    _stopped((*args, "--resume-any"), _in_write_stage(out, a_kept))
    assert len(list(out.glob("o-*.tar"))) < 20
    assert not (out / "o.index.json").exists()
    values = {s["v"] for s in read_wds(sorted(out.glob("o-*.tar")))}
    assert values == {b"A", b"B"}  # what a silent resume would call one job's
    before = {x.name: x.read_bytes() for x in out.iterdir()}
    _refused(run(*args, "--resume"), "more than one job", "kept by --resume-any: script "
             "digest changed", "--resume-any to keep them")
    script.write_text(SLOW_REDUCE % "A")
    _refused(run(*args, "--resume"), "made by another job: script digest changed")
    assert {x.name: x.read_bytes() for x in out.iterdir()} == before
    ok(run(*args, "--overwrite"))
    assert {s["v"] for s in read_wds(sorted(out.glob("o-*.tar")))} == {b"A"}
    assert "mixed" not in json.loads((out / "o.index.json").read_text())["lineage"]


def test_the_records_checks_on_every_protocol(storage_backend):
    """A record beside no output is removed and one beside a shard of another count
    refuses; an --overwrite of outputs without lineage is recorded as such; on local
    files, nginx, S3 and GCS alike (one listing of the folder, missing or not)."""
    base, options = storage_backend.base, storage_backend.options
    opts = {"storage_options": options}
    outset = OutputSet.parse(base + "o-@2.tar")
    one, two = (lineage.counted(lineage.make("htshuffle", inputs=["/d/a.tar"],
                                             outputs=outset.pattern, options={"seed": s}),
                                outset.count) for s in (1, 2))  # as a job's
    overwrite = RunOptions(overwrite=True, **opts)
    assert lineage_record.check_lineage(outset, one, overwrite) is None  # no folder yet
    lineage_record.start_record(outset, one, RunOptions(**opts))
    assert lineage_record.check_lineage(outset, two, RunOptions(resume=True, **opts)) is None
    assert not storage.exists(lineage_record.lineage_url(outset), options)
    lineage_record.start_record(outset, one, RunOptions(**opts))
    with storage.open_write(base + "o-5.tar", options) as f:
        f.write(b"x")
    with pytest.raises(HtoolsError, match="made by another job: --seed changed: 1 -> 2"):
        lineage_record.check_lineage(outset, two, RunOptions(resume=True, **opts))
    storage.delete(lineage_record.lineage_url(outset), options)
    assert lineage_record.check_lineage(outset, one, overwrite) == lineage_record.UNRECORDED


SLOW_MAP = ("import time\n"
            "def process_sample(s):\n"
            "    time.sleep(0.1)\n"
            "    s['v'] = b'B'\n"
            "    return s\n")


def test_an_overwrite_of_outputs_made_by_hand_stopped_part_way_is_not_one_jobs(tmp_path):
    """Shards copied in by hand (no index, no lineage), then htmapper --overwrite stopped
    after some outputs: the others are not its own, so its --resume is refused."""
    make_shards(tmp_path / "in", shards=4, per_shard=10)
    out, script = tmp_path / "out", tmp_path / "s.py"
    out.mkdir()
    for i in range(4):
        (out / f"o-{i}.tar").write_bytes((tmp_path / "in" / f"data-{i}.tar").read_bytes())
    script.write_text(SLOW_MAP)
    args = ("htmapper", "-p", script, tmp_path / "in" / "data-@4.tar", out / "o-@4.tar", *W1)
    before = {x.name: x.stat().st_mtime_ns for x in out.glob("o-*.tar")}
    _stopped((*args, "--overwrite"), lambda: any(x.stat().st_mtime_ns != before[x.name]
                                                 for x in out.glob("o-*.tar")))
    record = json.loads((out / "o.lineage.json").read_text())
    assert record["overwriting"] == lineage_record.UNRECORDED
    assert {s.get("v") for s in read_wds(sorted(out.glob("o-*.tar")))} == {None, b"B"}
    line = _refused(run(*args, "--resume"), "did not finish: some may still be another job's")
    assert "outputs with no recorded lineage" in line
    ok(run(*args, "--overwrite"))
    assert {s.get("v") for s in read_wds(sorted(out.glob("o-*.tar")))} == {b"B"}
