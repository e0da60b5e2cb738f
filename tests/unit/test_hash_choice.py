"""The output's sha256 (for the shard index) hashed on the hashing thread only when a core
is free for it (:func:`htools.runtime.hashing.spare_core`), inline otherwise: the same
digest either way, and the choice follows the machine's load."""

from __future__ import annotations

import hashlib
import random

import pytest

from htools.runtime import hashing
from htools.runtime.hashing import Sha256, has_spare, spare_core


@pytest.fixture
def machine(monkeypatch):
    """A machine of 2 cores whose clock and busy time the test sets."""
    state = {"now": 100.0, "busy": 1000.0}
    monkeypatch.setattr(hashing, "_seen", [])
    monkeypatch.setattr(hashing, "_hashed", [0.0])
    monkeypatch.setattr(hashing, "_cores", lambda: 2)
    monkeypatch.setattr(hashing, "machine_busy", lambda: state["busy"])
    monkeypatch.setattr(hashing.time, "monotonic", lambda: state["now"])
    return state


def test_spare_means_half_a_core_left_by_all_other_work():
    assert has_spare(2, 1.1)  # one worker's task thread and the client: the thread pays
    assert not has_spare(2, 1.6)  # two workers' task threads (or other jobs): inline
    assert has_spare(4, 2.0)
    assert not has_spare(1, 0.6)


def test_the_choice_follows_the_load_since_the_last_look(machine):
    assert spare_core()  # nothing to judge yet: the thread, as before
    machine["now"] += 1.0
    machine["busy"] += 1.9  # two busy task threads
    assert not spare_core()
    machine["now"] += 0.1  # too soon to look again: the last answer
    machine["busy"] += 0.0
    assert not spare_core()
    machine["now"] += 1.0
    machine["busy"] += 1.6  # of which the hashing thread's own 0.6: one task thread
    hashing._hashed[0] += 0.6
    assert spare_core()


def test_a_busy_machine_hashes_inline_with_the_same_digest(machine, monkeypatch):
    spare_core()
    machine["now"] += 1.0
    machine["busy"] += 2.0
    submitted = []
    monkeypatch.setattr(hashing, "_hasher", lambda: submitted.append(1))
    rng = random.Random(5)
    data = rng.randbytes(5 << 20)
    h = Sha256()
    for pos in range(0, len(data), 70_000):
        h.update(bytearray(data[pos:pos + 70_000]))
    assert h.threaded is False and not submitted
    assert h.hexdigest() == hashlib.sha256(data).hexdigest() and h.size == len(data)


def test_a_small_stream_never_looks_at_the_machine(monkeypatch):
    def looked() -> bool:
        raise AssertionError("spare_core called for a stream under SYNC")

    monkeypatch.setattr(hashing, "spare_core", looked)
    h = Sha256()
    h.update(bytes(Sha256.SYNC - 1))
    assert h.threaded is None
    assert h.hexdigest() == hashlib.sha256(bytes(Sha256.SYNC - 1)).hexdigest()


@pytest.mark.parametrize("threaded", [True, False])
def test_either_way_every_kind_of_piece_hashes_as_hashlib(threaded):
    rng = random.Random(7)
    data = rng.randbytes(6 << 20)
    h = Sha256(threaded=threaded)
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 511, 70_000, 1 << 20, 3 << 20])
        h.update(rng.choice([bytes, bytearray, memoryview])(data[pos:pos + n]))
        pos += n
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.fixture
def batches(monkeypatch) -> list[list]:
    """The parts of every batch the hashing thread gets, as it gets them."""
    seen: list[list] = []
    hash_parts = hashing._hash_parts

    def spy(hash, parts, bufs):
        seen.append([p if type(p) is tuple else bytes(p) for p in parts])
        hash_parts(hash, parts, bufs)

    monkeypatch.setattr(hashing, "_hash_parts", spy)
    return seen


def test_large_bytes_go_as_they_are_other_pieces_are_copied(batches):
    h = Sha256(threaded=True)
    h.update(bytes(Sha256.SYNC))  # past the inline part
    big = random.Random(3).randbytes(Sha256.BY_REF)
    header = bytearray(b"h" * 512)
    h.update(header)
    h.update(big)
    header[:] = b"x" * 512  # the caller reuses its buffer: what was hashed stays
    h.update(header)
    expected = bytes(Sha256.SYNC) + b"h" * 512 + big + b"x" * 512
    assert h.hexdigest() == hashlib.sha256(expected).hexdigest()
    assert any(part == big for parts in batches for part in parts)  # as it was, not copied


def test_fields_under_a_mib_reach_the_thread_as_one_part_a_batch(batches):
    """128 KiB fields and their headers are copied into the batch's buffer: the thread
    hashes each batch in one call (one GIL hand-back a MiB, not one a field)."""
    rng = random.Random(17)
    h = Sha256(threaded=True)
    h.update(bytes(Sha256.SYNC))
    data = [bytes(Sha256.SYNC)]
    for _ in range(64):
        for piece in (bytearray(rng.randbytes(512)), rng.randbytes(128 << 10)):
            h.update(piece)
            data.append(bytes(piece))
    assert h.hexdigest() == hashlib.sha256(b"".join(data)).hexdigest()
    assert len(batches) >= 8 and all(len(parts) == 1 for parts in batches)


# ------------------------------------------- the tar writer's buffers, uncopied --

class _Recording:
    """A stream that keeps every object written to it and a copy of its bytes then."""

    def __init__(self, handed=None):
        self.handed = handed
        self.writes: list[tuple[object, bytes, bool]] = []

    def write(self, b) -> int:
        self.writes.append((b, bytes(b), bool(self.handed and self.handed(b))))
        return memoryview(b).nbytes

    def flush(self) -> None:
        pass


def test_the_tar_writer_never_changes_a_buffer_it_handed_over():
    """What :func:`handed_over` relies on: a buffer the writer wrote as its own is
    left as it was (the hasher keeps it); a field's value is never taken for one."""
    from htools import tar
    from htools.runtime.shardio import handed_over

    rng = random.Random(11)
    stream = _Recording()
    values = []
    with tar.TarWriter(stream, url="x.tar") as writer:
        stream.handed = handed_over(writer)
        for i in range(400):
            size = rng.choice([1, 1000, 16 << 10, 70_000, 200_000])
            value = rng.choice([bytes, bytearray])(rng.randbytes(size))
            values.append(value)
            writer.write({"__key__": f"k{i:04d}", "bin": value, "cls": b"1"})
    handed = [(b, before) for b, before, h in stream.writes if h]
    assert len(handed) > 10
    assert all(bytes(b) == before for b, before in handed)  # none changed since written
    assert not any(h and any(b is v for v in values) for b, _before, h in stream.writes)


def test_write_shard_hashes_handed_buffers_uncopied_and_user_values_as_they_were(
        tmp_path, monkeypatch):
    """A sample's large ``bytearray`` value that its script changes once written (a
    reused buffer) is hashed as written; the writer's own buffers (or, to a local file,
    the gathered pieces written whole) go uncopied."""
    from htools.runtime.shardio import write_shard
    from htools.summary import ShardResult

    monkeypatch.setattr(hashing, "spare_core", lambda: True)
    kept: list = []
    update, take = Sha256.update, Sha256.take

    def spy(self, data, handed=False):
        if handed:
            kept.append(data)
        update(self, data, handed)

    def spy_take(self, buf, n):
        kept.append(buf)
        take(self, buf, n)

    monkeypatch.setattr(Sha256, "update", spy)
    monkeypatch.setattr(Sha256, "take", spy_take)
    rng = random.Random(13)
    reused = bytearray(100_000)
    result = ShardResult()
    out = str(tmp_path / "o.tar")
    with write_shard(out, {}, result) as writer:
        for i in range(300):
            reused[:] = rng.randbytes(len(reused))
            writer.write({"__key__": f"k{i:04d}", "big": reused, "small": rng.randbytes(3000)})
    assert kept and all(type(b) is bytearray and b is not reused for b in kept)
    data = open(out, "rb").read()
    assert result.sha256 == hashlib.sha256(data).hexdigest() and result.bytes_out == len(data)


def test_the_waits_for_a_slow_hashing_thread_are_counted(monkeypatch):
    """hashing.WAITED: the seconds callers waited with AHEAD bytes queued and at the end
    (bench_mapper shows them); the digest is the same."""
    import time

    hash_parts = hashing._hash_parts

    def slow(hash, parts, bufs):
        time.sleep(0.01)
        hash_parts(hash, parts, bufs)

    monkeypatch.setattr(hashing, "_hash_parts", slow)
    monkeypatch.setattr(hashing, "WAITED", {"ahead": 0.0, "end": 0.0})
    data = random.Random(19).randbytes(Sha256.SYNC + Sha256.AHEAD + (3 << 20))
    h = Sha256(threaded=True)
    for pos in range(0, len(data), 1 << 20):
        h.update(data[pos:pos + (1 << 20)])
    assert hashing.WAITED["ahead"] > 0.0 and hashing.WAITED["end"] == 0.0
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert hashing.WAITED["end"] > 0.0
