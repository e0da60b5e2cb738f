"""The record beside an output set and the check of a --resume or --overwrite against it,
without a cluster: a set written by another htools output format, a folder's upload
recorded before its files are sized, a record beside no output of any count, an
--overwrite of outputs no lineage vouches for, and a --resume-any that keeps another
job's outputs -- none may let a later --resume mix two jobs' outputs silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from htools import lineage, lineage_record
from htools.errors import HtoolsError
from htools.options import RunOptions
from htools.shards import OutputSet

RESUME, RESUME_ANY = RunOptions(resume=True), RunOptions(resume_any=True)


def _made(outset: OutputSet, seed: int = 1) -> dict:
    return lineage.make("htshuffle", inputs=["/d/a-0.tar", "/d/a-1.tar"],
                        outputs=outset.pattern, options={"seed": seed})


def _job(outset: OutputSet, seed: int = 1) -> dict:
    """The lineage a job writing ``outset`` hands the record functions: counted."""
    return lineage.counted(_made(outset, seed), outset.count)


def _record(folder: Path) -> dict:
    return json.loads((folder / "o.lineage.json").read_text())


def test_a_set_of_another_output_format_is_refused_and_an_unversioned_one_is_todays(tmp_path):
    outset = OutputSet.parse(str(tmp_path / "o-@2.tar"))
    made = _job(outset)
    assert made["format"] == lineage.FORMAT
    unversioned = {k: v for k, v in made.items() if k != "format"}
    assert lineage.differences(unversioned, made) == []  # read as today's
    other = {**made, "format": lineage.FORMAT + 1}
    said = lineage.differences(other, made)
    assert said == [f"output format changed: version {lineage.FORMAT + 1} -> {lineage.FORMAT} "
                    "(another htools wrote them)"]
    (tmp_path / "o.index.json").write_text(json.dumps({"shardlist": [], "lineage": other}))
    with pytest.raises(HtoolsError, match=r"^--resume: the outputs beside .*o\.index\.json "
                       r"were made by another job: output format changed: version 2 -> 1"):
        lineage_record.check_lineage(outset, made, RESUME)
    assert lineage_record.check_lineage(outset, made, RESUME_ANY)  # kept, the set mixed
    (tmp_path / "o.index.json").write_text(json.dumps({"shardlist": [],
                                                       "lineage": unversioned}))
    assert lineage_record.check_lineage(outset, made, RESUME) is None


def test_a_folder_recorded_before_its_files_are_sized_is_checked_by_their_paths():
    paths = ["/src/a.jpg\t/src/a.txt", "/src/b.jpg"]
    sized = lineage.make("htupload", inputs=paths, outputs="/o/x-@2.tar", sizes=[2048, 1536])
    start = lineage.sized_later(lineage.make("htupload", inputs=[], outputs="/o/x-@2.tar"),
                                paths)
    assert "digest" not in start["inputs"] and "bytes" not in start["inputs"]
    assert start["inputs"]["names"] == sized["inputs"]["names"]
    assert lineage.differences(start, sized) == []
    other = lineage.make("htupload", inputs=paths[:1], outputs="/o/x-@2.tar", sizes=[2048])
    assert lineage.differences(start, other)[0].startswith("inputs changed: 2 inputs (")
    assert lineage.differences(start, {**sized, "options": {"mtime": 5}})  # still checked
    before = {**sized, "inputs": {k: v for k, v in sized["inputs"].items() if k != "names"}}
    assert lineage.differences(start, before)  # sized before names were recorded: differs


@pytest.mark.parametrize("pattern, outputs, other", [
    ("o-%06d.tar", None, "o-000004.tar"),  # an open-ended set (htupload, --maxcount)
    ("o-@2.tar", None, "o-1.tar"),  # htupload: no outputs given
    ("o-@2.tar", ["o-0.tar", "o-1.tar"], "o-7.tar"),  # one of another count's
])
def test_a_record_beside_no_output_is_removed_and_one_beside_any_refuses(
        tmp_path, pattern, outputs, other):
    """A job stopped before its first output leaves a record that vouches for nothing:
    another job's --resume removes it, whatever it knows of its outputs; a shard of the
    set's name that exists (of any count or numbering) keeps it, and the resume is refused."""
    outset = OutputSet.parse(str(tmp_path / pattern))
    urls = [str(tmp_path / o) for o in outputs] if outputs else None
    lineage_record.start_record(outset, _job(outset, 1), RunOptions())
    (tmp_path / "o.txt").write_bytes(b"")  # not a shard of the set
    assert lineage_record.check_lineage(outset, _job(outset, 2), RESUME, urls) is None
    assert not (tmp_path / "o.lineage.json").exists()
    lineage_record.start_record(outset, _job(outset, 1), RunOptions())
    (tmp_path / other).write_bytes(b"x")
    with pytest.raises(HtoolsError, match="made by another job: --seed changed: 1 -> 2"):
        lineage_record.check_lineage(outset, _job(outset, 2), RESUME, urls)
    assert (tmp_path / "o.lineage.json").exists()


def test_an_overwrite_of_outputs_without_lineage_is_recorded_as_overwriting(tmp_path):
    """Outputs made by hand or an older htools: an --overwrite that stops part-way must
    not leave a set that looks like its own alone."""
    outset = OutputSet.parse(str(tmp_path / "o-@2.tar"))
    made, overwrite = _job(outset), RunOptions(overwrite=True)
    assert lineage_record.check_lineage(outset, made, overwrite) is None  # nothing there
    (tmp_path / "o-1.tar").write_bytes(b"x")
    (tmp_path / "o.index.json").write_text(json.dumps({"shardlist": []}))  # no lineage
    replacing = lineage_record.check_lineage(outset, made, overwrite)
    assert replacing == lineage_record.UNRECORDED
    assert not (tmp_path / "o.index.json").exists()  # it vouched for the old outputs
    lineage_record.start_record(outset, made, overwrite, replacing)
    assert _record(tmp_path)["overwriting"] == lineage_record.UNRECORDED
    with pytest.raises(HtoolsError, match="did not finish: some may still be another job's "
                       r"\(outputs with no recorded lineage"):
        lineage_record.check_lineage(outset, made, RESUME)
    assert lineage_record.check_lineage(outset, made, RESUME_ANY)


def test_a_resume_any_keeping_another_jobs_outputs_marks_its_record_mixed(tmp_path):
    """Job 1 stopped part-way; job 2 --resume-any keeps its outputs and stops too: the
    set is both jobs', so neither job's --resume may keep it silently."""
    outset = OutputSet.parse(str(tmp_path / "o-%06d.tar"))
    one, two = _job(outset, 1), _job(outset, 2)
    lineage_record.start_record(outset, one, RunOptions())
    (tmp_path / "o-000000.tar").write_bytes(b"x")
    mixing = lineage_record.check_lineage(outset, two, RESUME_ANY)
    assert mixing == "kept by --resume-any: --seed changed: 1 -> 2"
    lineage_record.start_record(outset, two, RESUME_ANY, mixing, kept=1)
    record = _record(tmp_path)
    assert record["lineage"] == two and record["mixed"] == mixing
    with pytest.raises(HtoolsError, match="made by another job: --seed changed: 2 -> 1"):
        lineage_record.check_lineage(outset, one, RESUME)
    with pytest.raises(HtoolsError, match=r"are of more than one job \(kept by --resume-any: "):
        lineage_record.check_lineage(outset, two, RESUME)
    assert lineage_record.check_lineage(outset, two, RESUME_ANY) == mixing
    lineage_record.start_record(outset, two, RESUME, None, kept=1)  # a plain resume keeps it
    assert _record(tmp_path)["mixed"] == mixing


def test_a_resume_to_another_count_of_outputs_is_refused(tmp_path):
    """x-@3 then x-@4 by the same shuffle: x-0..x-2 hold three buckets' samples, not four's
    (kept, they would repeat samples); a lineage without the count is not held to one."""
    three, four = (OutputSet.parse(str(tmp_path / f"o-@{n}.tar")) for n in (3, 4))
    made = _job(three)
    (tmp_path / "o-0.tar").write_bytes(b"x")
    lineage_record.start_record(three, made, RunOptions())
    assert _record(tmp_path)["lineage"]["outputs"] == {"count": 3}
    assert lineage_record.check_lineage(three, made, RESUME) is None
    with pytest.raises(HtoolsError, match="made by another job: output count changed: 3 -> 4"):
        lineage_record.check_lineage(four, _job(four), RESUME)
    (tmp_path / "o.lineage.json").write_text(json.dumps({"complete": False,
                                                         "lineage": _made(three)}))
    assert lineage_record.check_lineage(four, _job(four), RESUME) is None  # recorded before counts
