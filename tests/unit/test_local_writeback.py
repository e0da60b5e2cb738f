"""A local output that will be fsynced has its disk writes started as it is written
(every :data:`htools.storage.local.WRITEBACK` bytes), so the commit's fsync waits for the
last few MiB only; the file's bytes and its atomic commit are unchanged."""

from __future__ import annotations

import os
import sys

import pytest

from htools import storage
from htools.storage import local


@pytest.fixture
def starts(monkeypatch):
    """The offsets the writers start disk writes from, in order."""
    calls: list[int] = []
    monkeypatch.setattr(local, "WRITEBACK", 2 << 20)
    monkeypatch.setattr(local, "_writeback_starter",
                        lambda: lambda fd, offset: calls.append(offset))
    return calls


def test_writes_are_started_every_writeback_bytes_and_the_bytes_are_unchanged(tmp_path, starts):
    path = str(tmp_path / "out.bin")
    mib = 1 << 20
    sizes = [mib // 2, 3 * mib // 2, 5 * mib, 10, 2 * mib, 1000]
    pieces = [os.urandom(n) for n in sizes]
    with storage.open_write(path) as out:
        for piece in pieces:
            out.write(piece)
        assert not os.path.exists(path)  # still atomic: nothing before the commit
    assert open(path, "rb").read() == b"".join(pieces)
    # at 2 MiB written (from 0: the first piece is still in the 1 MiB buffer, the second
    # went out with it), at 7 MiB (from 2 MiB), at 9 MiB + 10 (from 7 MiB + 0)
    assert starts == [0, 2 * mib, 7 * mib]


def test_no_writeback_without_fsync(tmp_path, starts):
    with storage.open_write(str(tmp_path / "out.bin"), {"file": {"fsync": False}}) as out:
        for _ in range(10):
            out.write(bytes(900))
    assert starts == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_the_real_starter_is_found_and_accepted(tmp_path, monkeypatch):
    local._writeback_starter.cache_clear()
    start = local._writeback_starter()
    assert start is not None
    with open(tmp_path / "f", "wb") as f:
        f.write(bytes(1 << 16))
        f.flush()
        assert start(f.fileno(), 0) == 0


def test_pieces_of_a_buffer_or_more_go_to_the_file_as_they_are(tmp_path, monkeypatch):
    """A piece of the writer's buffer size (1 MiB) or more is written to the file as it
    is, after what is buffered (Python's buffered writer would copy one of exactly its
    size): the gathered pieces of a hashed output reach the disk with no second copy."""
    chunk = local.CHUNK
    direct: list[int] = []
    write = os.write

    def spy(fd, data):
        direct.append(memoryview(data).nbytes)
        return write(fd, data)

    monkeypatch.setattr(local.os, "write", spy)
    sizes = [10, chunk, 3, chunk - 1, chunk + 1, 5 * chunk, 7, chunk]
    pieces = [os.urandom(n) for n in sizes]
    path = str(tmp_path / "out.bin")
    with storage.open_write(path) as out:
        for piece in pieces:
            out.write(bytearray(piece))
    assert open(path, "rb").read() == b"".join(pieces)
    assert direct == [chunk, chunk + 1, 5 * chunk, chunk]  # the smaller ones: buffered
