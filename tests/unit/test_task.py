"""The task frame every task function runs in (htools.runtime.task.shard_task)."""

from __future__ import annotations

import io
import json

import pytest

from htools.cli.common import report
from htools.errors import StorageError
from htools.options import RunOptions
from htools.runtime.task import BUG_HINT, shard_task
from htools.summary import JobSummary


def test_user_error_fails_the_shard_in_one_line():
    with shard_task("in.tar", "out.tar") as r:
        r.samples_read = 3
        raise StorageError("http://u:pw@h/in.tar", "no such object", 404)
    assert r.status == "failed" and r.traceback == ""
    assert r.error == "http://h/in.tar: no such object (HTTP 404)"
    assert r.samples_failed == 3 and r.seconds >= 0


def test_a_bug_keeps_its_traceback_for_the_summary(tmp_path):
    def buggy():
        return {}["missing"]

    with shard_task("in.tar", "out.tar") as r:
        buggy()
    assert r.status == "failed" and r.error.startswith("KeyError: 'missing'")
    assert BUG_HINT in r.error
    assert "buggy" in r.traceback and "KeyError" in r.traceback
    summary = JobSummary("htmapper", shards_total=1)
    summary.add(r.as_dict())
    path = tmp_path / "s.json"
    summary.write_json(str(path))
    failure = json.loads(path.read_text())["failures"][0]
    assert "buggy" in failure["traceback"] and failure["output"] == "out.tar"
    err = io.StringIO()
    report(summary.finish(), RunOptions(), err=err)
    assert f"FAILED in.tar -> out.tar: KeyError: 'missing' ({BUG_HINT})" in err.getvalue()


def test_the_error_budget_is_checked_once_and_names_the_key():
    with shard_task("in.tar", max_errors=1) as r:
        for key in ("a", "b"):
            r.samples_read += 1
            try:
                raise ValueError(f"bad {key}")
            except ValueError as e:
                r.sample_error("in.tar", key, "process_sample raised", e)
    assert r.status == "failed" and r.sample_errors == 2
    assert r.error == "in.tar: process_sample raised on key 'b': ValueError: bad b"


def test_a_clean_task_is_ok():
    with shard_task(["a.tar", "b.tar"]) as r:
        r.samples_read = r.samples_mapped = r.samples_written = 2
    d = r.as_dict()
    assert d["status"] == "ok" and d["input"] == ["a.tar", "b.tar"] and "max_errors" not in d


def test_keyboard_interrupt_is_not_swallowed():
    with pytest.raises(KeyboardInterrupt):
        with shard_task("in.tar"):
            raise KeyboardInterrupt
