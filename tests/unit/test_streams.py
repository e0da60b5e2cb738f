"""htools.runtime.streams on its own: distinct_keys refuses two samples in a row with one key
(a tar reader would join them), Counting adds the bytes it moves to a shard's result."""

from __future__ import annotations

import gzip
import io

import pytest

from htools.errors import HtoolsError
from htools.runtime.streams import Counting, distinct_keys
from htools.summary import ShardResult


def samples(*keys: str) -> list[dict]:
    return [{"__key__": k, "n": str(i).encode()} for i, k in enumerate(keys)]


# ---------------------------------------------------------------- distinct_keys --

def test_distinct_keys_passes_samples_through_unchanged():
    given = samples("a", "b", "a", "c")  # a key may come back once another came between
    got = list(distinct_keys(iter(given), "out.tar", "fix it"))
    assert got == given and all(g is s for g, s in zip(got, given))
    assert list(distinct_keys(iter([]), "out.tar", "fix it")) == []


def test_two_in_a_row_with_one_key_is_an_error_naming_where_key_and_remedy():
    stream = distinct_keys(iter(samples("a", "b", "b", "c")), "s3://u:s3cret@bkt/out-3.tar",
                           "give each output its own __key__")
    assert [s["__key__"] for s in (next(stream), next(stream))] == ["a", "b"]  # lazy
    with pytest.raises(HtoolsError) as info:
        next(stream)
    message = str(info.value)
    assert message.startswith("s3://bkt/out-3.tar: two consecutive samples share the key 'b'")
    assert message.endswith(": give each output its own __key__")
    assert "s3cret" not in message and "\n" not in message


def test_distinct_keys_reads_its_input_lazily():
    pulled = []

    def source():
        for s in samples("a", "a", "b"):
            pulled.append(s["__key__"])
            yield s

    stream = distinct_keys(source(), "x.tar", "r")
    assert pulled == []
    next(stream)
    assert pulled == ["a"]
    with pytest.raises(HtoolsError):
        next(stream)
    assert pulled == ["a", "a"]  # it stopped at the repeat


# ------------------------------------------------------------------- Counting --

def test_counting_reads_add_to_the_named_counter():
    result = ShardResult(bytes_in=5)
    data = bytes(range(256)) * 40
    c = Counting(io.BytesIO(data), result, "bytes_in")
    assert c.read(100) == data[:100]
    buf = bytearray(1000)
    assert c.readinto(buf) == 1000 and bytes(buf) == data[100:1100]
    assert c.read() == data[1100:]
    assert c.read(10) == b"" and c.readinto(bytearray(8)) == 0  # the end adds nothing
    assert result.bytes_in == 5 + len(data) and result.bytes_out == 0


def test_counting_writes_add_to_the_named_counter_and_reach_the_stream():
    result = ShardResult()
    raw = io.BytesIO()
    c = Counting(raw, result, "bytes_out")
    assert c.write(b"hello ") == 6
    assert c.write(memoryview(b"world")) == 5
    assert c.write(bytearray(3)) == 3
    assert raw.getvalue() == b"hello world\0\0\0" and result.bytes_out == 14
    assert result.bytes_in == 0


def test_counting_never_closes_the_stream_it_wraps():
    raw = io.BytesIO(b"abc")
    c = Counting(raw, ShardResult(), "bytes_in")
    c.flush()
    c.close()
    assert not c.closed and not raw.closed and c.read() == b"abc"
    assert c.readable() and c.writable()


def test_counting_as_the_file_of_a_real_reader_and_writer():
    """gzip reads and writes through it as through any file object, and the counts are
    the compressed bytes that crossed it."""
    text = b"sample data " * 5000
    out = ShardResult()
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=Counting(raw, out, "bytes_out"), mode="wb", mtime=0) as gz:
        gz.write(text)
    assert out.bytes_out == len(raw.getvalue()) < len(text)
    back = ShardResult()
    with gzip.GzipFile(fileobj=Counting(io.BytesIO(raw.getvalue()), back, "bytes_in")) as gz:
        assert gz.read() == text
    assert back.bytes_in == len(raw.getvalue())


@pytest.mark.parametrize("threaded", [True, False])
def test_gathered_writes_reach_the_stream_in_whole_pieces_hashed_as_written(
        threaded, monkeypatch):
    """``gather=True``: small writes are copied into one buffer, written whole (GATHER
    bytes at a time) and hashed as written, even when the caller reuses its buffer; a
    large ``bytes`` piece goes through as it is; ``flush()`` writes the rest."""
    import hashlib
    import random

    from htools.runtime import hashing, streams

    monkeypatch.setattr(hashing, "spare_core", lambda: threaded)
    rng = random.Random(5)
    writes: list[tuple[object, bytes]] = []

    class Raw:
        def write(self, b) -> int:
            writes.append((b, bytes(b)))
            return memoryview(b).nbytes

    result = ShardResult()
    c = Counting(Raw(), result, "bytes_out", digest=True, gather=True)
    reused = bytearray(100_000)
    big = rng.randbytes(streams.GATHER + 5)
    expected = []
    for i in range(60):
        reused[:] = rng.randbytes(len(reused))
        piece = big if i == 30 else memoryview(reused) if i % 2 else reused
        assert c.write(piece) == len(piece)
        expected.append(bytes(piece))
    c.write(b"tail")
    c.flush()
    data = b"".join(expected) + b"tail"
    assert b"".join(after for _b, after in writes) == data and result.bytes_out == len(data)
    assert any(b is big for b, _after in writes)  # as it was, not copied
    at = next(i for i, (b, _after) in enumerate(writes) if b is big)
    whole = writes[:at - 1] + writes[at + 1:-1]  # not what was gathered before it, or last
    assert len(whole) >= 4 and all(len(after) == streams.GATHER for _b, after in whole)
    assert c.hexdigest() == hashlib.sha256(data).hexdigest()


def test_without_gather_writes_pass_through_one_by_one():
    raw = io.BytesIO()
    c = Counting(raw, ShardResult(), "bytes_out", digest=True)
    c.write(b"abc")
    assert raw.getvalue() == b"abc"
