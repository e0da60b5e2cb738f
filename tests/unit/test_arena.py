"""Stage 1's arena: large records copied into reused chunks while they wait for their
spill, and the runs a :class:`~htools.exchange.partition.Spiller` writes from them."""

from __future__ import annotations

from htools.exchange import partition, runfile
from htools.exchange.keys import KeySpec
from htools.exchange.partition import Arena, Spiller
from htools.exchange.specs import StageOne


def test_records_are_copied_back_to_back_and_chunks_are_reused(monkeypatch):
    monkeypatch.setattr(partition, "_CHUNKS", [])
    arena = Arena(100)
    piece = bytearray(b"x" * 30)
    a = arena.copy([b"head", piece, b"tail"], 38)
    piece[:] = b"y" * 30  # the caller's pieces may change or go: the record was copied
    b = arena.copy(b"B" * 60, 60)
    c = arena.copy(b"C" * 50, 50)  # does not fit after a and b: a second chunk
    assert bytes(a) == b"head" + b"x" * 30 + b"tail" and bytes(b) == b"B" * 60
    assert bytes(c) == b"C" * 50
    assert a.obj is b.obj and c.obj is not a.obj and len(arena.chunks) == 2
    first, second = arena.chunks
    del a, b, c
    arena.release(keep=100)  # room for one chunk only
    assert partition._CHUNKS == [first] and not arena.chunks
    again = Arena(100)
    assert again.copy(b"D", 1).obj is first  # the kept chunk serves the next records
    del second


def test_a_chunk_of_another_budget_is_not_reused(monkeypatch):
    monkeypatch.setattr(partition, "_CHUNKS", [])
    small = Arena(64)
    small.copy(b"s", 1)
    kept = small.chunks[0]
    small.release(keep=1 << 20)
    big = Arena(128)
    view = big.copy(b"b" * 100, 100)
    assert view.obj is not kept and len(view.obj) == 128


def test_spilled_runs_hold_every_record_large_and_small(tmp_path, monkeypatch):
    """Records under, inside and over the arena's chunk size, over several spills (a
    chunk reused after each), read back in key order, byte for byte."""
    monkeypatch.setattr(partition, "_CHUNKS", [])
    spec = StageOne(scratch=str(tmp_path), buckets=2, key=KeySpec(), counts=False,
                    memory=1 << 20)
    out = Spiller(spec, 0, None)
    assert out.arena.chunk == 64 << 10
    enc = runfile.SampleEncoder("x.tar", mtime=0)
    sizes = [10, 5000, 40_000, 70_000, 3, 20_000] * 8
    want: dict[int, list] = {0: [], 1: []}
    for i, n in enumerate(sizes):
        sample = {"__key__": f"s{i:03d}", "bin": bytes([i % 251]) * n}
        rec = runfile.record_pieces(runfile.pack_key(-i), sample["__key__"], enc.pieces(sample))
        want[i % 2].append((-i, runfile.record(runfile.pack_key(-i), sample["__key__"],
                                               enc.encode(sample))))
        out.add(i % 2, -i, rec)
    out.close()
    assert len(out.runs) >= 2 and not out.arena.chunks and partition._CHUNKS
    got: dict[int, list] = {0: [], 1: []}
    for run in out.runs:
        offs = runfile.bucket_offsets(run, 0, 2, {})
        with open(run.url, "rb") as f:
            f.seek(int(offs[0]))
            reader = runfile.RecordReader(f, run.url)
            for b in (0, 1):
                got[b] += [(k, bytes(r)) for k, _s, r, _st in
                           reader.records(int(offs[b + 1] - offs[b]))]
    for b in (0, 1):
        assert sorted(got[b]) == sorted(want[b])
