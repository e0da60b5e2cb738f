"""Ctrl-C at the very end of a job (htools.runtime.interrupts): once the job's summary is
being written the job is done, so a command-line tool ignores a Ctrl-C from there to its
exit (it had reported ``interrupted``, exit 130, over a finished job whose summary said
ok); a library caller still gets its KeyboardInterrupt, after the summary is whole; and
``--summary FILE`` is whole or absent, never half written."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest

from htools.options import RunOptions
from htools.runtime import engine, interrupts
from htools.summary import JobSummary


def test_a_command_ignores_ctrl_c_once_its_job_is_done(tmp_path):
    path = tmp_path / "s.json"
    with interrupts.as_command():
        summary = engine.finish(JobSummary(tool="t", shards_total=1, shards_done=1),
                                RunOptions(summary=str(path)))
        os.kill(os.getpid(), signal.SIGINT)  # after the job: nothing to interrupt
        signal.raise_signal(signal.SIGINT)
    signal.raise_signal(signal.SIGINT)  # nor as the process exits
    assert summary.ok and json.loads(path.read_text())["ok"]
    signal.signal(signal.SIGINT, signal.default_int_handler)  # (pytest's process goes on)


def test_a_command_is_interrupted_before_its_job_is_done():
    with pytest.raises(KeyboardInterrupt), interrupts.as_command():
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_library_caller_gets_its_interrupt_after_the_summary_is_whole(tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    real = JobSummary.as_dict

    def as_dict(self):  # Ctrl-C while the summary is being made
        signal.raise_signal(signal.SIGINT)
        return real(self)
    monkeypatch.setattr(JobSummary, "as_dict", as_dict)
    with pytest.raises(KeyboardInterrupt):
        engine.finish(JobSummary(tool="t"), RunOptions(summary=str(path)))
    assert json.loads(path.read_text())["tool"] == "t"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_summary_file_is_whole_or_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    JobSummary(tool="first").write_json(str(path))

    def full(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", full)  # the write failed: the old summary stands
    with pytest.raises(OSError, match="No space"):
        JobSummary(tool="second").write_json(str(path))
    assert json.loads(path.read_text())["tool"] == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no part file left


def test_a_summary_to_a_pipe_is_written_in_place(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    JobSummary(tool="piped").write_json(str(fifo))
    reader.join(10)
    assert json.loads(got[0])["tool"] == "piped" and fifo.is_fifo()
