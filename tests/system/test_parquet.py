"""htextract --format parquet: typed columns, one file or one per shard (a pattern or
--to-dir), every per-shard file of a job typed alike; read back with pyarrow and
compared with the samples as webdataset reads them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import ok, read_wds, require_module, run

import htools
from htools.errors import HtoolsError

pa = require_module("pyarrow")
pq = require_module("pyarrow.parquet")
pads = require_module("pyarrow.dataset")
wds = require_module("webdataset")


def write_shards(folder: Path, shards: int = 3, per_shard: int = 7,
                 names: list[str] | None = None) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"m-{s}.tar" for s in range(shards)]
    samples = []
    for s, name in enumerate(names):
        with wds.TarWriter(str(folder / name)) as w:
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


def test_one_parquet_file_gathers_every_row_in_shard_order(tmp_path, processes_client):
    samples = write_shards(tmp_path / "in")
    dst = tmp_path / "out" / "meta.parquet"
    s = htools.extract(str(tmp_path / "in" / "m-@3.tar"), fields=FIELDS, format="parquet",
                       out=str(dst), client=processes_client, quiet=True)
    assert s.ok and s.samples_written == len(samples) and s.bytes_out == dst.stat().st_size
    check_table(pq.read_table(dst), samples)
    with pytest.raises(HtoolsError, match="already exist.*--overwrite"):
        htools.extract(str(tmp_path / "in" / "m-@3.tar"), fields=FIELDS, format="parquet",
                       out=str(dst), client=processes_client, quiet=True)
    s = htools.extract(str(tmp_path / "in" / "m-@3.tar"), fields="__key__,cls",
                       format="parquet", out=str(dst), overwrite=True, client=processes_client,
                       quiet=True)
    assert s.ok and pq.read_table(dst).column_names == ["__key__", "cls"]


def test_a_pattern_writes_one_parquet_per_shard_from_the_tasks(tmp_path, processes_client):
    samples = write_shards(tmp_path / "in")
    s = htools.extract(str(tmp_path / "in" / "m-@3.tar"), fields=FIELDS, format="parquet",
                       out=str(tmp_path / "pq" / "meta-@3.parquet"), client=processes_client, quiet=True)
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
                       out=str(tmp_path / "pq" / "meta-@3.parquet"), client=processes_client, quiet=True)


def test_column_types():
    from htools.parquet_schema import column

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
    with pytest.raises(HtoolsError, match="not with -K or --count"):
        htools.extract(src, format="parquet", count=3, out=str(tmp_path / "x.parquet"))
    with pytest.raises(HtoolsError, match="-o FILE.parquet or --to-dir DIR, not both"):
        htools.extract(src, format="parquet", out=str(tmp_path / "x.parquet"),
                       to_dir=str(tmp_path / "d"))
    # two shards of one name in different folders would write one file: refused up front
    write_shards(tmp_path / "a", shards=1, names=["x.tar"])
    write_shards(tmp_path / "b", shards=1, names=["x.tgz"])
    with pytest.raises(HtoolsError) as e:
        htools.extract([str(tmp_path / "a" / "x.tar"), str(tmp_path / "b" / "x.tgz")],
                       format="parquet", to_dir=str(tmp_path / "d"))
    assert str(e.value) == (f"--to-dir: {tmp_path / 'a' / 'x.tar'} and {tmp_path / 'b' / 'x.tgz'}"
                            " would both write x.parquet: give shards distinct names, or use "
                            "-o NAME-@N.parquet")
    assert not (tmp_path / "d").exists()


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


def test_shard_names():
    from htools.parquet import shard_name

    assert shard_name("/d/train-0003.tgz") == "train-0003"
    for suffix in (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".TAR"):
        assert shard_name(f"s3://b/p/x-1{suffix}") == "x-1"
    assert shard_name("http://h/p/a.tar?sig=1#f") == "a"
    assert shard_name("/d/notes.bin") == "notes.bin"


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_to_dir_writes_one_parquet_per_shard_named_after_it(tmp_path, processes_client, place):
    base, local = place
    names = ["m-0.tar", "m-1.tgz", "m-2.tar.gz"]
    write_shards(tmp_path / "in", names=names)
    inputs = [str(tmp_path / "in" / n) for n in names]
    dst = base + "meta"
    s = htools.extract(inputs, fields=FIELDS, format="parquet", to_dir=dst, client=processes_client,
                       quiet=True)
    assert s.ok and s.shards_done == 3 and not s.notes  # every file typed alike already
    out = local / "meta"
    assert sorted(p.name for p in out.iterdir()) == ["m-0.parquet", "m-1.parquet", "m-2.parquet"]
    assert s.bytes_out == sum(p.stat().st_size for p in out.iterdir())
    for name, path in zip(names, inputs):  # each file against webdataset's reading of its shard
        check_table(pq.read_table(out / (name.split(".")[0] + ".parquet")), read_wds([path]))
    check_table(pads.dataset(str(out)).to_table(), read_wds(inputs))  # read together
    with pytest.raises(HtoolsError, match="3 output.*already exist.*--overwrite"):
        htools.extract(inputs, fields=FIELDS, format="parquet", to_dir=dst, client=processes_client,
                       quiet=True)
    (out / "m-1.parquet").unlink()
    before = mtimes(out)
    s = htools.extract(inputs, fields=FIELDS, format="parquet", to_dir=dst, resume=True,
                       client=processes_client, quiet=True)
    assert s.ok and (s.shards_done, s.shards_skipped) == (1, 2) and not s.notes
    assert {k: v for k, v in mtimes(out).items() if k != "m-1.parquet"} == before
    check_table(pq.read_table(out / "m-1.parquet"), read_wds(inputs[1:2]))
    s = htools.extract(inputs, fields="__key__,cls", format="parquet", to_dir=dst,
                       overwrite=True, client=processes_client, quiet=True)
    assert s.ok and pq.read_table(out / "m-2.parquet").column_names == ["__key__", "cls"]


def write_values(path: Path, values: list[bytes | None]) -> None:
    """A shard whose sample i has field ``v`` = values[i] (none when None)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as w:
        for i, v in enumerate(values):
            w.write({"__key__": f"{path.stem}-{i}", "txt": f"row {i}".encode(),
                     **({"v": v} if v is not None else {})})


INTS = [b"007", b"12", b"-3"]
REWRITTEN = "parquet files rewritten so every file types each column alike: "
# the odd shard of each case, the type of v over the job, and v of the int shards then
CASES = {
    "int": ([b"4", b"5"], pa.int64(), [7, 12, -3]),
    "float": ([b"2.5", b"1e3"], pa.float64(), [7.0, 12.0, -3.0]),
    "text": ([b"n/a", b"5"], pa.string(), ["007", "12", "-3"]),
    "missing": ([None, None], pa.int64(), [7, 12, -3]),
    "binary": ([b"\xff\x00", b"1"], pa.binary(), INTS),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_file_of_a_job_types_each_column_alike(tmp_path, processes_client, case):
    odd, kind, ints = CASES[case]
    write_values(tmp_path / "in" / "a.tar", INTS)
    write_values(tmp_path / "in" / "b.tar", INTS[::-1])
    write_values(tmp_path / "in" / "c.tar", odd)
    out = tmp_path / "out"
    s = htools.extract(str(tmp_path / "in" / "{a,b,c}.tar"), fields="__key__,v,txt",
                       format="parquet", to_dir=str(out), client=processes_client, quiet=True)
    assert s.ok and s.shards_done == 3 and s.samples_written == 8
    for f in out.iterdir():  # -f order and the job's types in every file
        assert pq.read_schema(f).names == ["__key__", "v", "txt"]
        assert pq.read_schema(f).field("v").type == kind
    rows = sorted(pads.dataset(str(out)).to_table().to_pylist(), key=lambda r: r["__key__"])
    assert [r["__key__"] for r in rows] == [f"{n}-{i}" for n in "abc" for i in range(3)][:8]
    assert [r["v"] for r in rows[:6]] == ints + ints[::-1]  # "007" kept as text
    assert [r["txt"] for r in rows] == [f"row {i}" for i in (0, 1, 2, 0, 1, 2, 0, 1)]
    expect_odd = {"int": [4, 5], "float": [2.5, 1000.0], "text": ["n/a", "5"],
                  "missing": [None, None], "binary": odd}[case]
    assert [r["v"] for r in rows[6:]] == expect_odd
    notes = {"int": [],
             "float": [f"2 of 3 {REWRITTEN}v int64 -> double"],
             "text": [f"2 of 3 {REWRITTEN}v int64 -> string"],
             "missing": [f"1 of 3 {REWRITTEN}v null -> int64"],
             "binary": [f"2 of 3 {REWRITTEN}v int64 -> binary"]}
    assert s.notes == notes[case]
    assert s.samples_read == s.samples_written == 8 and s.bytes_out == \
        sum(f.stat().st_size for f in out.iterdir())


def test_resumed_files_count_with_the_types_of_their_footer(tmp_path, processes_client):
    write_values(tmp_path / "in" / "a.tar", INTS)
    write_values(tmp_path / "in" / "b.tar", [None])  # v in no row: a string column of nulls
    out = tmp_path / "out"
    kw = {"fields": "__key__,v", "format": "parquet", "to_dir": str(out), "client": processes_client,
          "quiet": True}
    s = htools.extract(str(tmp_path / "in" / "{a,b}.tar"), **kw)
    assert s.notes == [f"1 of 2 {REWRITTEN}v null -> int64"]
    before = mtimes(out)
    # a new shard typed as the old files: nothing rewritten, the skipped files untouched
    write_values(tmp_path / "in" / "c.tar", [b"1"])
    s = htools.extract(str(tmp_path / "in" / "{a,b,c}.tar"), resume=True, **kw)
    assert s.ok and (s.shards_done, s.shards_skipped) == (1, 2) and not s.notes
    assert {k: mtimes(out)[k] for k in before} == before
    # a new shard of text: the skipped files are written again, from their shards
    write_values(tmp_path / "in" / "d.tar", [b"x"])
    s = htools.extract(str(tmp_path / "in" / "{a,b,c,d}.tar"), resume=True, **kw)
    assert s.ok and (s.shards_done, s.shards_skipped) == (1, 3)
    assert s.notes == [f"3 of 4 {REWRITTEN}v int64 -> string"]  # b.parquet: int64 nulls by now
    table = pads.dataset(str(out)).to_table()
    assert table.schema.field("v").type == pa.string()
    assert sorted(table.column("v").to_pylist(), key=str) == \
        sorted(["007", "12", "-3", None, "1", "x"], key=str)


def test_a_rewrite_that_fails_fails_its_shard(tmp_path, processes_client):
    write_values(tmp_path / "in" / "a.tar", INTS)
    out = tmp_path / "out"
    kw = {"fields": "__key__,v", "format": "parquet", "to_dir": str(out), "client": processes_client,
          "quiet": True}
    assert htools.extract(str(tmp_path / "in" / "a.tar"), **kw).ok
    # a.tar changes after its file was written: it no longer holds numbers, and the job
    # (a skipped int file, a new float one) needs a.parquet as float64
    write_values(tmp_path / "in" / "a.tar", [b"n/a"])
    write_values(tmp_path / "in" / "b.tar", [b"2.5"])
    s = htools.extract(str(tmp_path / "in" / "{a,b}.tar"), resume=True, **kw)
    assert not s.ok and (s.shards_done, s.shards_skipped, s.shards_failed) == (1, 0, 1)
    assert s.failures[0]["input"] == str(tmp_path / "in" / "a.tar")
    assert "rewriting its parquet file with the job's types" in s.failures[0]["error"]
    assert "field 'v'" in s.failures[0]["error"]
    assert s.notes == [f"1 of 2 {REWRITTEN}v int64 -> double, 1 of the rewrites failed"]
    assert s.samples_read == s.samples_mapped + s.samples_dropped + s.samples_failed
    # its file keeps its own types: a later --resume (the input fixed) rewrites it
    assert pq.read_schema(out / "a.parquet").field("v").type == pa.int64()
    write_values(tmp_path / "in" / "a.tar", INTS)
    s = htools.extract(str(tmp_path / "in" / "{a,b}.tar"), resume=True, **kw)
    assert s.ok and pq.read_schema(out / "a.parquet").field("v").type == pa.float64()


def test_cli_parquet_to_dir(tmp_path):
    write_values(tmp_path / "in" / "a.tar", INTS)
    write_values(tmp_path / "in" / "b.tgz", [b"n/a"])
    out = tmp_path / "meta"
    p = ok(run("htextract", str(tmp_path / "in" / "{a.tar,b.tgz}"), "-f", "__key__,v",
               "--format", "parquet", "--to-dir", str(out), "--workers", "1"))
    line = p.stderr.strip().splitlines()[-1]
    assert re.match(r"htextract: ok; shards 2 done, 0 skipped, 0 failed of 2; samples 4 read, "
                    r"4 written, 0 dropped, 0 failed; .*; 1 of 2 parquet files rewritten so "
                    r"every file types each column alike: v int64 -> string; [0-9.]+s$", line)
    assert sorted(x.name for x in out.iterdir()) == ["a.parquet", "b.parquet"]
    assert pq.read_table(out / "a.parquet").column("v").to_pylist() == ["007", "12", "-3"]
    p = run("htextract", str(tmp_path / "in" / "{a.tar,b.tgz}"), "-f", "__key__,v",
            "--format", "parquet", "--to-dir", str(out), "--workers", "1")
    assert p.returncode != 0 and "--overwrite" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    write_values(tmp_path / "other" / "a.tar", [b"1"])
    p = run("htextract", f"{tmp_path}/{{in,other}}/a.tar", "-f", "v", "--format", "parquet",
            "--to-dir", str(tmp_path / "x"), "--workers", "1")
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1
    assert "would both write a.parquet" in p.stderr
