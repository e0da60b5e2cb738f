"""A typo in a host, bucket or path fails in seconds, with one clear line, before any
cluster starts or any input is read (htools.runtime.preflight)."""

from __future__ import annotations

import json
import time

import pytest
from fixtures.servers import free_port
from helpers import make_shards, run

from htools import storage
from htools.errors import StorageError


def quick(tool: str, *args, env: dict | None = None):
    t0 = time.monotonic()
    p = run(tool, *args, "--workers", "1", env=env)
    return p, time.monotonic() - t0


def one_line(p) -> str:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stderr
    assert "workers" not in p.stderr  # no cluster was started
    return lines[0]


def test_unresolvable_host_fails_at_once(tmp_path):
    p, took = quick("htextract", "http://no-such-host.invalid/x-@64.tar", "-f", "__key__")
    line = one_line(p)
    assert took < 5 and "no-such-host.invalid" in line and "does not resolve" in line


def test_unresolvable_host_is_permanent_in_storage_too():
    t0 = time.monotonic()
    with pytest.raises(StorageError) as e:
        storage.size("http://no-such-host.invalid/x.tar")
    assert time.monotonic() - t0 < 2 and not e.value.transient
    assert "does not resolve" in str(e.value)


def test_refused_connection_fails_in_seconds(tmp_path):
    port = free_port()  # nothing listens there
    p, took = quick("htextract", f"http://127.0.0.1:{port}/x-@4.tar", "-f", "__key__")
    line = one_line(p)
    assert took < 5 and f"127.0.0.1:{port}/x-0.tar" in line and "refused" in line.lower()


def test_missing_output_bucket_is_found_before_any_input_is_read(tmp_path, s3_server):
    make_shards(tmp_path / "in", shards=2, per_shard=3)
    opts = json.dumps(s3_server.options)
    p, took = quick("htupload", tmp_path / "in" / "data-@2.tar", "s3://bukcet/x-@2.tar",
                    "--storage-options", opts)
    line = one_line(p)
    assert took < 5 and "cannot write outputs under s3://bukcet/" in line
    assert "NoSuchBucket" in line or "bucket does not exist" in line


def test_output_parent_that_is_a_file_and_dry_run(tmp_path):
    make_shards(tmp_path / "in", shards=2, per_shard=3)
    (tmp_path / "file").write_text("not a folder")
    for extra in ([], ["--dry-run"]):
        p = run("htshuffle", tmp_path / "in" / "data-@2.tar", tmp_path / "file" / "o-@2.tar",
                "--workers", "1", *extra)
        assert f"{tmp_path}/file is a file, not a folder" in one_line(p)


def test_dry_run_reports_a_missing_input(tmp_path):
    make_shards(tmp_path / "in", shards=2, per_shard=3)
    p = run("htsort", tmp_path / "in" / "data-@3.tar", tmp_path / "o" / "o-@2.tar", "--dry-run")
    assert one_line(p) == f"Error: input {tmp_path}/in/data-2.tar does not exist"


def test_relative_output_folder_is_fine(tmp_path):
    make_shards(tmp_path / "in", shards=1, per_shard=3)
    p = run("htextract", tmp_path / "in" / "data-0.tar", "-f", "__key__,cls", "--to-dir",
            "out_a", "--workers", "1", cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert len(list((tmp_path / "out_a").rglob("*.cls"))) == 3
