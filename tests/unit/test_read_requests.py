"""How the tar reader refills: a plain stream, once a few MiB are read, in requests
larger than storage's buffered reader holds (so that it reads straight into the tar
reader's buffer), a decoder in requests of the size it always had."""

from __future__ import annotations

import gzip
import io
import os

from htools import tar
from htools.storage.base import CHUNK as STORAGE_CHUNK
from htools.tar import read as tarread


class Recorder(io.RawIOBase):
    """A raw stream that records the size of every readinto asked of it."""

    def __init__(self, data: bytes):
        self.f, self.asked = io.BytesIO(data), []

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        self.asked.append(len(b))
        return self.f.readinto(b)


def shard(n: int = 200) -> bytes:
    out = io.BytesIO()
    tar.write_samples(out, [{"__key__": f"k{i:03d}", "bin": os.urandom(128 << 10)}
                            for i in range(n)], compress=None)
    return out.getvalue()


def test_a_plain_stream_is_read_past_storage_buffer():
    raw = Recorder(shard())
    stream = io.BufferedReader(raw, buffer_size=STORAGE_CHUNK)  # as storage hands it out
    assert len(list(tar.read_samples(stream, "p.tar"))) == 200
    assert max(raw.asked) > STORAGE_CHUNK  # the buffered reader passed it straight on


def test_a_decoder_is_read_a_mebibyte_at_a_time():
    data = gzip.compress(shard(), compresslevel=1)
    asked: list[int] = []
    stream = tar.open_stream_reader(io.BytesIO(data), "p.tgz")
    readinto = stream.readinto

    def recorded(b) -> int:
        asked.append(len(b))
        return readinto(b)

    stream.readinto = recorded
    assert len(list(tar.read_samples(stream, "p.tgz"))) == 200
    assert max(asked) <= tarread.DECODED
