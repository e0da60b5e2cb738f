"""The run-file format on its own: records, bucket offsets, the footer, sample encoding."""

from __future__ import annotations

import io
import tarfile

import pytest

from htools.errors import HtoolsError
from htools.exchange import runfile
from htools.exchange.runfile import Run, RunWriter, SampleEncoder


def write(tmp_path, buckets: dict[int, list[tuple]], lo: int = 0, hi: int = 4) -> Run:
    """A run of ``{bucket: [(sort key, sample key, tar bytes), ...]}``."""
    with RunWriter(str(tmp_path / "r.bin"), lo, hi, {}) as w:
        for b in sorted(buckets):
            data = b"".join(runfile.record(runfile.pack_key(k), s, t) for k, s, t in buckets[b])
            w.write(b, data, len(buckets[b]))
        return w.close()


def test_offsets_slice_each_bucket(tmp_path):
    run = write(tmp_path, {0: [(1, "a", b"A")], 2: [(5, "b", b"BB"), (6, "c", b"C" * 300)]})
    runfile.check_footer(run, {})
    offs = runfile.bucket_offsets(run, 0, 4, {})
    assert len(offs) == 5 and offs[1] == offs[2] == offs[3] - (offs[3] - offs[2])
    with open(run.url, "rb") as f:
        f.seek(int(offs[2]))
        got = list(runfile.RecordReader(f, run.url).records(int(offs[3] - offs[2])))
    assert [(k, s, bytes(rec[start:])) for k, s, rec, start in got] == \
        [(5, "b", b"BB"), (6, "c", b"C" * 300)]
    assert runfile.bucket_offsets(run, 2, 3, {}).tolist() == [int(offs[2]), int(offs[3])]
    with pytest.raises(HtoolsError, match="not in this run"):
        runfile.bucket_offsets(run, 3, 5, {})


def test_bucket_order_is_enforced(tmp_path):
    with pytest.raises(ValueError, match="bucket 1 written after bucket 2"):
        with RunWriter(str(tmp_path / "r.bin"), 0, 4, {}) as w:
            w.write(2, b"", 0)
            w.write(1, b"", 0)
    assert not (tmp_path / "r.bin").exists()  # aborted: nothing left behind


def test_a_run_cut_short_is_named(tmp_path):
    run = write(tmp_path, {1: [("k", "x", b"payload" * 10)]})
    data = (tmp_path / "r.bin").read_bytes()
    offs = runfile.bucket_offsets(run, 1, 2, {})
    with pytest.raises(HtoolsError, match="ends inside a record"):
        list(runfile.RecordReader(io.BytesIO(data[int(offs[0]):int(offs[1]) - 5]),
                                  run.url).records(int(offs[1] - offs[0])))
    bad = Run(run.url, run.size, 0, 3)  # a footer naming other buckets
    with pytest.raises(HtoolsError, match="bad footer"):
        runfile.check_footer(bad, {})


def test_encoded_samples_are_what_the_writer_writes(tmp_path):
    enc = SampleEncoder("x.tar", mtime=0)
    samples = [{"__key__": "a/1", "jpg": b"\xff" * 700, "txt": "héllo"},
               {"__key__": "b", "_private": b"no"}]  # nothing to write
    parts = [enc.encode(s) for s in samples]
    assert parts[1] == b""
    buf = io.BytesIO()
    from htools import tar
    with tar.TarWriter(buf, mtime=0, compress=None) as w:
        w.write_encoded(parts[0])
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        assert tf.getnames() == ["a/1.jpg", "a/1.txt"]
        assert tf.extractfile("a/1.txt").read() == "héllo".encode()
    back = runfile.decode(parts[0], "x.tar")
    assert back["jpg"] == b"\xff" * 700 and back["__key__"] == "a/1"


def test_offsets_of_a_wide_bucket_range(tmp_path):
    """A write task over many outputs walks every bucket of its range: all offsets come back."""
    run = write(tmp_path, {5: [(1, "a", b"A")], 19_000: [(2, "b", b"B")]}, hi=20_000)
    offs = runfile.bucket_offsets(run, 0, 20_000, {})
    assert len(offs) == 20_001 and offs[5] == 0 and offs[6] == offs[19_000] > 0


def test_a_damaged_record_length_is_named_not_allocated():
    """A record header whose lengths run past its bucket (a damaged run) fails with the
    run's name before any buffer of that size is allocated."""
    rec = runfile.record(runfile.pack_key(1), "k", b"x" * 100)
    bad = runfile.HEADER.pack(1 << 40, 1, 1, 0) + rec[runfile.HEADER.size:]
    def records(f, nbytes, url):
        return runfile.RecordReader(f, url).records(nbytes)

    def skip(f, nbytes, url):
        return [runfile.RecordReader(f, url).skip(nbytes)]

    for read in (records, skip):
        with pytest.raises(HtoolsError, match="r.bin: corrupt run file"):
            list(read(io.BytesIO(rec + bad), 2 * len(rec), "r.bin"))


def test_records_as_pieces_big_and_small_read_back_through_the_window(tmp_path):
    """Records given as pieces (small ones joined, pieces larger than the writer's buffer,
    records larger than the reader's window) come back byte for byte: as views, as
    bytes, skipped and copied in chunks."""
    enc = SampleEncoder("x.tar", mtime=0)
    sizes = [10, 1000, 70_000, runfile.BUFFER + 3, runfile.WINDOW * 2 + 7, 1]
    samples = [{"__key__": f"s{i}", "bin": bytes([i]) * n, "cls": b"%d" % i}
               for i, n in enumerate(sizes)]
    recs = [enc.record(runfile.pack_key(i), s) for i, s in enumerate(samples)]
    flat = [runfile.record(runfile.pack_key(i), s["__key__"], enc.encode(s), b"bin/cls/")
            for i, s in enumerate(samples)]
    # a new field set's first sample is joined; then the writer's buffer is the record
    assert [type(r) for r in recs[:3]] == [bytes, bytearray, list]
    url = str(tmp_path / "r.bin")
    with RunWriter(url, 0, 2, {}) as w:
        w.write_records(0, recs[:4])
        w.write_records(1, recs[4:])
        run = w.close()
    offs = runfile.bucket_offsets(run, 0, 2, {})
    with open(url, "rb") as f:
        assert f.read(int(offs[-1])) == b"".join(flat)
    assert w.records == len(samples)
    data = (tmp_path / "r.bin").read_bytes()
    for view, f in ((True, open(url, "rb", buffering=0)), (False, open(url, "rb")),
                    (True, io.BytesIO(data))):  # a small slice is read whole: no window
        with f:
            reader = runfile.RecordReader(f, url, 1000)  # a window smaller than the records
            got = [(k, s, bytes(rec), start) for k, s, rec, start in
                   reader.records(int(offs[-1]), view)]
        assert [(k, s) for k, s, _r, _s in got] == [(i, f"s{i}") for i in range(len(sizes))]
        assert [r for _k, _s, r, _st in got] == flat
        assert runfile.decode(got[4][2][got[4][3]:], url)["bin"] == samples[4]["bin"]
    with open(url, "rb") as f:
        reader = runfile.RecordReader(f, url)
        assert reader.skip(int(offs[1])) == 4
        chunks = [bytes(c) for c in reader.chunks(int(offs[2] - offs[1]))]  # each valid until the next
        assert b"".join(chunks) == b"".join(flat[4:])


def test_an_encoded_value_the_caller_may_change_is_copied():
    """The encoder keeps bytes values uncopied, but not a bytearray its caller could
    change before the record is spilled."""
    enc = SampleEncoder("x.tar", mtime=0)
    value = bytearray(b"a" * 100_000)
    pieces = enc.pieces({"__key__": "k", "bin": value})
    value[:] = b"b" * 100_000
    assert runfile.decode(b"".join(pieces), "x.tar")["bin"] == b"a" * 100_000


def test_records_carry_their_fields_to_the_writer(tmp_path):
    """A record made by the encoder carries its written fields (sorted, none starting with
    ``_``, the empty field too); the output writer counts them as it would have read them
    from the headers; a record without them (``record``'s default) makes it read them."""
    from htools import tar

    enc = SampleEncoder("x.tar", mtime=0)
    samples = [{"__key__": "a", "txt": b"t", "_skip": b"x", "": b"bare", "jpg": b"j"},
               {"__key__": "b", "txt": b"t", "_skip": b"x", "": b"bare", "jpg": b"j" * 70_000},
               {"__key__": "c", "é.json": b"{}"}, {"__key__": "d", "é.json": b"[]"}]
    recs = [enc.record(runfile.pack_key(i), s) for i, s in enumerate(samples)]
    recs.append(runfile.record(runfile.pack_key(9), "e", enc.encode({"__key__": "e", "x": b"1"})))
    url = str(tmp_path / "r.bin")
    with RunWriter(url, 0, 1, {}) as w:
        w.write_records(0, recs)
        run = w.close()
    end = int(runfile.bucket_offsets(run, 0, 1, {})[-1])
    with open(url, "rb") as f:
        got = list(runfile.RecordReader(f, url).records(end))
    fields = [runfile.fields_of(rec, start) for _k, _s, rec, start in got]
    assert fields == [("", "jpg", "txt")] * 2 + [("é.json",)] * 2 + [None]
    counted, parsed = io.BytesIO(), io.BytesIO()
    with tar.TarWriter(counted, compress=None, count_fields=True) as a, \
            tar.TarWriter(parsed, compress=None, count_fields=True) as b:
        for (_k, _s, rec, start), names in zip(got, fields):
            a.write_encoded(rec[start:], names)
            b.write_encoded(rec[start:])
    assert a.fields == b.fields == {"": 2, "jpg": 2, "txt": 2, "é.json": 2, "x": 1}
    assert counted.getvalue() == parsed.getvalue()


def test_a_bucket_of_small_records_larger_than_the_buffer(tmp_path):
    """Small records are joined a buffer's worth at a time (a bucket of several buffers'
    worth comes back whole and in order), and a cursor counts what it read and skipped."""
    from htools.exchange.cursors import Cursor

    recs = [runfile.record(runfile.pack_key(i), f"k{i}", b"%07d" % i * 100) for i in range(6000)]
    assert sum(map(len, recs)) > 2 * runfile.BUFFER
    url = str(tmp_path / "r.bin")
    with RunWriter(url, 0, 2, {}) as w:
        w.write_records(0, recs[:5000])
        w.write_records(1, recs[5000:])
        run = w.close()
    with open(url, "rb") as f:
        assert f.read(sum(map(len, recs))) == b"".join(recs)
    c = Cursor(run, 0, 2, {})
    got = [(k, bytes(rec)) for k, _s, rec, _st in c.records(0)]
    assert got == [(i, r) for i, r in enumerate(recs[:5000])] and c.count == 5000
    assert c.pos == c.start + sum(map(len, recs[:5000])) and c.length(1) == run.size - 24 \
        - runfile.FOOTER.size - c.pos
    c.close()
    c = Cursor(run, 0, 2, {})
    c.skip_to(1)
    assert c.count == 5000 and [k for k, *_ in c.records(1)] == list(range(5000, 6000))
    c.close()
