"""htupload --maxsize BYTES: every shard, as the file is written (headers, long-name pax
headers, end-of-archive blocks, record padding included), holds at most BYTES, and as
many samples as fit; a size below one tar record is refused in one line."""

from __future__ import annotations

import os
import tarfile

import pytest
from helpers import read_wds, run

from htools import tar


def tree(folder, names_and_sizes):
    for name, size in names_and_sizes:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


@pytest.mark.parametrize("maxsize", [10240, 20480, 30000])
def test_every_shard_is_at_most_maxsize_as_written(tmp_path, maxsize):
    src = tmp_path / "src"
    long_dir = "d" * 60 + "/" + "e" * 60  # names over 100 bytes: a pax header each
    files = [(f"s{i:02d}.txt", 100) for i in range(10)]
    files += [(f"{long_dir}/n{i:02d}.bin", 3000 + 700 * i) for i in range(8)]
    tree(src, files)
    out = tmp_path / "out"
    p = run("htupload", src, out / "o-%04d.tar", "--maxsize", str(maxsize), "--workers", "1")
    assert p.returncode == 0, p.stderr
    shards = sorted(out.glob("o-*.tar"))
    sizes = [s.stat().st_size for s in shards]
    assert all(n <= maxsize for n in sizes), (sizes, maxsize)
    got = read_wds(shards)
    assert len(got) == len(files)
    # as full as possible: the first sample of the next shard would not have fitted
    members = [[m for m in tarfile.open(s).getmembers()] for s in shards]
    for shard, following in zip(members, members[1:]):
        used = sum(tar.member_size(*_key_field(m.name), m.size) for m in shard)
        first = _key_field(following[0].name)[0]
        nxt = sum(tar.member_size(*_key_field(m.name), m.size) for m in following
                  if _key_field(m.name)[0] == first)
        assert tar.archive_size(used + nxt) > maxsize


def _key_field(name: str) -> tuple[str, str]:
    return tar.split_key(name)


def test_maxsize_below_one_tar_record_is_refused(tmp_path):
    tree(tmp_path / "src", [(f"s{i}.txt", 100) for i in range(10)])
    p = run("htupload", tmp_path / "src", tmp_path / "out" / "o-%04d.tar", "--maxsize", "4096")
    assert p.returncode != 0
    assert "--maxsize 4096 is less than 10240 bytes, the least a tar file takes" in p.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("o-*.tar"))
