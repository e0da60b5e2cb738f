"""The semi-join's pieces called directly on hand-made runs: a decide task keeps the first
place of each digest and writes the others by sort bucket; a write task leaves the
listed places out, and an output that fails counts its kept records as failed, not
the ones the decide tasks counted as dropped (read = written + dropped + failed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from htools.exchange.runfile import Run, RunWriter, SampleEncoder, pack_key, record
from htools.exchange.semijoin import keep_firsts
from htools.exchange.specs import StageTwo
from htools.exchange.write import write_outputs

BUCKETS = 4


def digest_run(url: str, entries: list[list]) -> Run:
    """One digest run of one bucket: entries [digest, position, ordinal, sort bucket]."""
    with RunWriter(url, 0, 1, {}) as w:
        for e in sorted(entries):
            w.write(0, record(pack_key(e), "", b""), 1)
        return w.close()


def sample_run(url: str, per_bucket: int) -> Run:
    """Sort buckets 0..3 of ``per_bucket`` samples each, keys [bucket, 0, ordinal]."""
    enc = SampleEncoder(url, 0)
    with RunWriter(url, 0, BUCKETS, {}) as w:
        for b in range(BUCKETS):
            for i in range(per_bucket):
                o = b * per_bucket + i
                rec = record(pack_key([b, 0, o]), f"k{o:03d}", enc.encode(
                    {"__key__": f"k{o:03d}", "txt": f"sample {o}".encode()}))
                w.write(b, rec, 1)
        return w.close()


def test_decide_keeps_the_first_place_of_each_digest(tmp_path):
    d = [hashlib.sha256(bytes([i])).digest() for i in range(3)]
    # two digest runs (two stage-1 tasks): d0 at (1, 5) and (0, 7): (0, 7) is first
    a = digest_run(str(tmp_path / "a.bin"), [[d[0], 1, 5, 2], [d[1], 1, 6, 0], [d[2], 1, 9, 3]])
    b = digest_run(str(tmp_path / "b.bin"), [[d[0], 0, 7, 1], [d[1], 0, 2, 0], [d[1], 0, 3, 3]])
    r = keep_firsts([a, b], 0, 1, str(tmp_path / "drops.bin"), BUCKETS, {})
    assert r["status"] == "ok", r
    assert r["extra"]["duplicates"] == r["samples_dropped"] == 3
    url, size = r["extra"]["run"]
    data = Path(url).read_bytes()
    # bucket 0: d1 at (1, 6); bucket 2: d0 at (1, 5); bucket 3: d1 at (0, 3); d2 alone
    places = [int.from_bytes(data[i:i + 8], "big") for i in range(0, 24, 8)]
    assert places == [1 << 32 | 6, 1 << 32 | 5, 0 << 32 | 3]


def test_a_failed_output_counts_only_its_kept_records_as_failed(tmp_path):
    run = sample_run(str(tmp_path / "run.bin"), per_bucket=10)
    drops = tmp_path / "drops.bin"
    with RunWriter(str(drops), 0, BUCKETS, {}) as w:  # 2 places in bucket 1, 3 in bucket 3
        w.write(1, b"".join(o.to_bytes(8, "big") for o in (11, 14)), 2)
        w.write(3, b"".join(o.to_bytes(8, "big") for o in (30, 35, 39)), 3)
        drop_run = w.close()
    (tmp_path / "file").write_text("")  # o-1.tar cannot be created: its output fails
    outs = [(str(tmp_path / "o-0.tar"), 0, 2), (str(tmp_path / "file" / "o-1.tar"), 2, 4)]
    ok, failed = write_outputs(outs, [run], StageTwo(positions=True), [drop_run])
    assert ok["status"] == "ok" and failed["status"] == "failed", failed
    assert ok["samples_written"] == ok["samples_read"] == 20 - 2
    assert failed["samples_failed"] == 20 - 3 and failed["samples_dropped"] == 0
    assert ok["samples_written"] + failed["samples_failed"] + 5 == 40
