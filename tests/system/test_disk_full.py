"""Full disks: outputs or scratch on a small tmpfs.  A write that fills the disk fails
for good (not retried) with "no space left on device", the file, the bytes written so
far and the free space; it leaves no partial file; an exchange whose local scratch
has less free space than its input needs is refused before stage 1, with that figure,
and leaves no scratch behind.

The small disks come from tests/fixtures/disks.py: mounting a tmpfs needs root, so
elsewhere these tests are skipped with that reason (one rule for all of them)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from helpers import make_shards, read_wds, run

from htools import storage
from htools.errors import StorageError


def leftovers(folder: Path) -> list[str]:
    """Everything under ``folder`` except completed .tar outputs (and the record of who
    made them that a job that failed part-way leaves)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if not (p.is_file() and not p.name.startswith(".")
                          and (p.suffix == ".tar" or p.name.endswith(".lineage.json"))))


def test_full_disk_write_is_a_clear_permanent_error(small_disk):
    disk = small_disk("tiny", "256k")
    url = str(disk / "sub" / "big.bin")
    with pytest.raises(StorageError) as info:
        with storage.open_write(url) as w:
            for _ in range(8):
                w.write(b"x" * (100 << 10))
    err = info.value
    message = str(err)
    assert err.transient is False  # a full disk is not retried
    assert "no space left on device" in message
    assert url in message  # names the file
    written = int(re.search(r"after (\d+) bytes written so far", message).group(1))
    assert 0 < written <= 256 << 10
    assert re.search(r"\(\d+ bytes free\)", message)
    assert os.listdir(disk / "sub") == []  # the temp file is gone, nothing committed


def test_full_disk_small_writes_fail_at_commit(small_disk):
    """Writes smaller than the buffer fill the disk only when flushed, at commit."""
    disk = small_disk("tiny", "64k")
    url = str(disk / "o.bin")
    with pytest.raises(StorageError) as info:
        with storage.open_write(url) as w:
            w.write(b"y" * (200 << 10))
    assert "no space left on device" in str(info.value) and url in str(info.value)
    assert info.value.transient is False
    assert os.listdir(disk) == []


def test_mapper_outputs_on_a_full_disk(tmp_path, small_disk):
    """htmapper: each failing shard names its output and the disk; the shard is not run
    again (a full disk is not transient); no partial file; complete outputs only."""
    make_shards(tmp_path / "in", shards=3, per_shard=30)
    disk = small_disk("out", "160k")
    (tmp_path / "same.py").write_text("def process_sample(s):\n    return s\n")
    summary = tmp_path / "summary.json"
    p = run("htmapper", "-p", tmp_path / "same.py", tmp_path / "in" / "data-@3.tar",
            disk / "o-@3.tar", "--workers", "1", "--summary", summary)
    assert p.returncode == 1, p.stderr
    assert "no space left on device" in p.stderr
    assert str(disk / "o-") in p.stderr  # names the output being written
    assert "failed of 3" in p.stderr
    s = json.loads(summary.read_text())
    assert s["shards_failed"] >= 1 and s["shards_retried"] == 0, s
    assert leftovers(disk) == []
    done = sorted(disk.glob("o-*.tar"))
    assert len(done) == 3 - s["shards_failed"]
    assert all(len(read_wds([d])) == 30 for d in done)  # the outputs there are whole


def test_exchange_refuses_a_scratch_too_small_for_its_input(tmp_path, small_disk):
    make_shards(tmp_path / "in", shards=4, per_shard=40)
    data = sum(p.stat().st_size for p in (tmp_path / "in").glob("*.tar"))
    scratch = small_disk("scratch", "64k")
    out = tmp_path / "out"
    for tool in ("htshuffle", "htsort"):
        p = run(tool, tmp_path / "in" / "data-@4.tar", out / f"{tool}-@2.tar",
                "--scratch", scratch, "--workers", "1")
        assert p.returncode == 1, p.stderr
        line = [x for x in p.stderr.splitlines() if "scratch" in x and "free" in x]
        assert line, p.stderr
        assert str(scratch) in line[0]
        needed = int(re.search(r"needs about (\d+) bytes", line[0]).group(1))
        assert needed >= 0.9 * data  # the input's size (from a few probes)
        assert "copy" in line[0]  # and why that much
        assert os.listdir(scratch) == []  # refused before stage 1: nothing written
        assert not out.exists() or leftovers(out) == []


def test_exchange_with_enough_scratch_runs(tmp_path, small_disk):
    """The check does not refuse a scratch that is big enough (outputs elsewhere)."""
    data = make_shards(tmp_path / "in", shards=4, per_shard=40)
    scratch = small_disk("scratch", "4m")
    p = run("htshuffle", tmp_path / "in" / "data-@4.tar", tmp_path / "out" / "s-@2.tar",
            "--scratch", scratch, "--workers", "1", "-q")
    assert p.returncode == 0, p.stderr
    assert len(read_wds(sorted((tmp_path / "out").glob("s-*.tar")))) == len(data)
    assert os.listdir(scratch) == []


def test_exchange_outputs_on_a_full_disk(tmp_path, small_disk):
    """Outputs do not fit: the writes fail clearly, no partial output, scratch removed."""
    make_shards(tmp_path / "in", shards=4, per_shard=40)
    disk = small_disk("out", "128k")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    p = run("htsort", tmp_path / "in" / "data-@4.tar", disk / "o-@4.tar",
            "--scratch", scratch, "--workers", "1")
    assert p.returncode == 1, p.stderr
    assert "no space left on device" in p.stderr and str(disk / "o-") in p.stderr
    assert leftovers(disk) == []
    assert os.listdir(scratch) == []


def test_spool_on_a_full_temp_disk_is_a_clear_error_and_leaves_no_output(
        small_disk, nginx_server, monkeypatch):
    """An HTTP upload keeps a replayable copy of its body; when the spool folder is full,
    the write fails for good naming that folder, and no object appears."""
    disk = small_disk("spool", "256k")
    monkeypatch.setenv("HTOOLS_SPOOL_DIR", str(disk))
    monkeypatch.setenv("HTOOLS_SPOOL_MEMORY", "0")
    url = f"{nginx_server.url}/spool-full/big.bin"
    with pytest.raises(StorageError) as info:
        with storage.open_write(url) as w:
            for _ in range(8):
                w.write(b"x" * (100 << 10))
    text = str(info.value)
    assert "replayable copy" in text and str(disk) in text and not info.value.transient
    assert not storage.exists(url)
    assert list(disk.iterdir()) == []
