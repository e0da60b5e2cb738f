"""htextract --format parquet: typed columns, one file or one per shard, read back with
pyarrow and compared with the samples as webdataset wrote them."""

from __future__ import annotations

from pathlib import Path

import pytest

import htools
from helpers import ok, require_module, run
from htools.errors import HtoolsError

pa = require_module("pyarrow")
pq = require_module("pyarrow.parquet")
wds = require_module("webdataset")


def write_shards(folder: Path, shards: int = 3, per_shard: int = 7) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for s in range(shards):
        with wds.TarWriter(str(folder / f"m-{s}.tar")) as w:
            for i in range(per_shard):
                n = s * per_shard + i
                sample = {"__key__": f"s{s}-{i:02d}", "cls": str(n % 4).encode(),
                          "score": (f"{n / 3:.3f}" if n % 2 else str(n)).encode(),
                          "txt": f"caption {n} ü".encode(), "bin": bytes([n, 255, 0, n])}
                if n % 5 != 3:  # some samples lack "tag": nulls
                    sample["tag"] = f"t{n}".encode()
                w.write(sample)
                samples.append(sample)
    return samples


FIELDS = "__key__,cls,score,txt,bin,tag"


def check_table(t, samples: list[dict]) -> None:
    assert t.column_names == FIELDS.split(",")
    types = {f.name: f.type for f in t.schema}
    assert types == {"__key__": pa.string(), "cls": pa.int64(), "score": pa.float64(),
                     "txt": pa.string(), "bin": pa.binary(), "tag": pa.string()}
    rows = t.to_pylist()
    assert [r["__key__"] for r in rows] == [s["__key__"] for s in samples]  # shard order
    for r, s in zip(rows, samples):
        assert r["cls"] == int(s["cls"]) and r["score"] == float(s["score"])
        assert r["txt"] == s["txt"].decode() and r["bin"] == s["bin"]
        assert r["tag"] == (s["tag"].decode() if "tag" in s else None)


def test_one_parquet_file_gathers_every_row_in_shard_order(tmp_path, client):
    samples = write_shards(tmp_path / "in")
    dst = tmp_path / "out" / "meta.parquet"
    s = htools.extract(str(tmp_path / "in" / "m-@3.tar"), fields=FIELDS, format="parquet",
                       out=str(dst), client=client, quiet=True)
    assert s.ok and s.samples_written == len(samples) and s.bytes_out == dst.stat().st_size
    check_table(pq.read_table(dst), samples)
    with pytest.raises(HtoolsError, match="already exist.*--overwrite"):
        htools.extract(str(tmp_path / "in" / "m-@3.tar"), fields=FIELDS, format="parquet",
                       out=str(dst), client=client, quiet=True)
    s = htools.extract(str(tmp_path / "in" / "m-@3.tar"), fields="__key__,cls",
                       format="parquet", out=str(dst), overwrite=True, client=client,
                       quiet=True)
    assert s.ok and pq.read_table(dst).column_names == ["__key__", "cls"]


def test_a_pattern_writes_one_parquet_per_shard_from_the_tasks(tmp_path, client):
    samples = write_shards(tmp_path / "in")
    s = htools.extract(str(tmp_path / "in" / "m-@3.tar"), fields=FIELDS, format="parquet",
                       out=str(tmp_path / "pq" / "meta-@3.parquet"), client=client, quiet=True)
    assert s.ok and s.shards_done == 3
    for n in range(3):
        t = pq.read_table(tmp_path / "pq" / f"meta-{n}.parquet")
        part = samples[7 * n:7 * (n + 1)]
        assert [r["__key__"] for r in t.to_pylist()] == [x["__key__"] for x in part]
    whole = pa.concat_tables([pq.read_table(tmp_path / "pq" / f"meta-{n}.parquet")
                              for n in range(3)], promote_options="permissive")
    assert whole.num_rows == len(samples)
    assert not list((tmp_path / "pq").glob("*.tmp*"))  # atomic writes leave nothing else
    with pytest.raises(HtoolsError, match="already exist"):
        htools.extract(str(tmp_path / "in" / "m-@3.tar"), fields=FIELDS, format="parquet",
                       out=str(tmp_path / "pq" / "meta-@3.parquet"), client=client, quiet=True)


def test_column_types():
    from htools.parquet import column

    assert column("n", [b"1", b" 2\n", None, b"-3"]).type == pa.int64()
    assert column("n", [b"1", b"2.5", b"1e3"]).type == pa.float64()
    assert column("n", [b"1", str(1 << 70).encode()]).type == pa.float64()
    assert column("n", [b"1", b"one"]).type == pa.string()
    assert column("n", [b"1_000"]).type == pa.string()
    assert column("n", [b"\xff"]).type == pa.binary()
    assert column("n", [None, None]).type == pa.string()
    assert column("__key__", ["00001"]).type == pa.string()


def test_parquet_errors(tmp_path):
    write_shards(tmp_path / "in", shards=2)
    src = str(tmp_path / "in" / "m-@2.tar")
    with pytest.raises(HtoolsError, match="needs -o FILE.parquet"):
        htools.extract(src, format="parquet")
    with pytest.raises(HtoolsError, match="names 3 parquet files but there are 2 input"):
        htools.extract(src, format="parquet", out=str(tmp_path / "x-@3.parquet"))
    with pytest.raises(HtoolsError, match="open-ended"):
        htools.extract(src, format="parquet", out=str(tmp_path / "x-%03d.parquet"))
    with pytest.raises(HtoolsError, match="not with -K, --count or --to-dir"):
        htools.extract(src, format="parquet", count=3, out=str(tmp_path / "x.parquet"))


def test_cli_parquet(tmp_path):
    samples = write_shards(tmp_path / "in")
    dst = tmp_path / "meta.parquet"
    ok(run("htextract", str(tmp_path / "in" / "m-@3.tar"), "-f", FIELDS, "--format", "parquet",
           "-o", str(dst), "--workers", "1", "-q"))
    check_table(pq.read_table(dst), samples)
    before = dst.read_bytes()
    p = run("htextract", str(tmp_path / "in" / "m-@3.tar"), "-f", "__key__", "--format",
            "parquet", "-o", str(dst), "--workers", "1")
    assert p.returncode != 0 and "--overwrite" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and dst.read_bytes() == before
    ok(run("htextract", str(tmp_path / "in" / "m-@3.tar"), "-f", FIELDS, "--format", "parquet",
           "-o", str(tmp_path / "p" / "meta-@3.parquet"), "--workers", "1", "-q"))
    assert sorted(x.name for x in (tmp_path / "p").iterdir()) == \
        [f"meta-{n}.parquet" for n in range(3)]
    # tsv still goes to a file given with -o
    ok(run("htextract", str(tmp_path / "in" / "m-@3.tar"), "-f", "__key__,cls",
           "-o", str(tmp_path / "rows.tsv"), "--workers", "1", "-q"))
    assert (tmp_path / "rows.tsv").read_text().splitlines()[0] == "s0-00\t0"
