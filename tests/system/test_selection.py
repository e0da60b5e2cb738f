"""--keep / --drop: the digest table (built in bounded memory, looked up exactly), the
options refused in one line, and the curation loop as a user runs it: score with
htmapper, extract to parquet, pick in pandas, htshuffle --keep picked.parquet
--select-by json:uid, a blocklist with --drop; outputs read back with webdataset."""

from __future__ import annotations

import json
import random
import tempfile
import weakref

import pytest
from helpers import ok, read_wds, require_module, run

from htools.errors import HtoolsError
from htools.selection import parse, table
from htools.selection.spec import Selection
from htools.selection.values import digest, digest_block, list_values, sample_value


def test_table_finds_exactly_the_listed_values(tmp_path, monkeypatch):
    monkeypatch.setattr(table, "CHUNK", 1000)  # 5,000 values: the 256-part external path
    values = [f"v{i}".encode() for i in range(5000)]
    url = str(tmp_path / "t.digests")
    n, dg = table.build((digest(v) for v in values + values[:300]), url, None)
    assert n == 5000 and (tmp_path / "t.digests").stat().st_size == 16 * 5000
    t = table.load(url, dg, None)
    rows = [t.index(digest(v)) for v in values]
    assert sorted(rows) == list(range(5000))
    assert all(t.index(digest(f"w{i}".encode())) == -1 for i in range(5000))
    assert list(t.hi) == sorted(t.hi)


def test_small_and_empty_tables(tmp_path):
    n, dg = table.build(iter([digest(b"a"), digest(b"a")]), str(tmp_path / "a"), None)
    assert n == 1 and table.load(str(tmp_path / "a"), dg, None).index(digest(b"a")) == 0
    n, dg = table.build(iter([]), str(tmp_path / "e"), None)
    assert n == 0 and table.load(str(tmp_path / "e"), dg, None).index(digest(b"a")) == -1


def test_a_table_is_mapped_once_per_process_and_let_go(tmp_path, monkeypatch):
    """A local table is memory-mapped in place (no copy), once per process: a second
    job's load gets the same object; a table pushed out by ``KEPT`` newer ones loads
    again, and answers whoever still holds it."""
    monkeypatch.setattr(table, "_TABLES", {})
    values = [f"k{i}".encode() for i in range(3000)]
    urls = []
    for name in "abc":
        urls.append((str(tmp_path / name), *table.build([digest_block(values)],
                                                        str(tmp_path / name), None)))
    url, n, dg = urls[0]
    first = table.load(url, dg, None)
    assert table.load(url, dg, None) is first and first._map is not None
    assert not first.hi.flags.writeable and first.hi.base is not None  # a view of the map
    assert sorted(first.index(digest(v)) for v in values) == list(range(n))
    for other, _n, other_dg in urls[1:]:
        table.load(other, other_dg, None)
    again = table.load(url, dg, None)  # let go (KEPT = 2), so mapped again
    assert again is not first and again.index(digest(values[7])) >= 0
    assert first.index(digest(values[7])) >= 0  # a task still using it: still mapped
    gone = weakref.ref(first)
    del first
    assert gone() is None  # unmapped once no one holds it


def test_a_remote_table_is_fetched_once_and_mapped(tmp_path, monkeypatch, nginx_server):
    """A table in a remote scratch: fetched once into a local temporary file, mapped,
    found exactly; the file goes when the table is let go."""
    monkeypatch.setattr(table, "_TABLES", {})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    values = [f"r{i}".encode() for i in range(2000)]
    local = str(tmp_path / "built")
    n, dg = table.build([digest_block(values)], local, None)
    url = f"{nginx_server.url}/sel-{dg[:8]}/list.digests"
    table.copy(local, url, {})
    fetched = table.load(url, dg, {})
    assert table.load(url, dg, {}) is fetched
    assert len(list((tmp_path / "tmp").iterdir())) == 1  # one local copy
    assert sorted(fetched.index(digest(v)) for v in values) == list(range(n))
    assert fetched.index(digest(b"absent")) == -1
    table._close_all()  # as at exit, or when load lets it go: the local copy removed
    assert not list((tmp_path / "tmp").iterdir())
    assert fetched.index(digest(values[3])) >= 0  # the mapping outlives the file


def test_list_values_and_sample_values(tmp_path):
    (tmp_path / "l.txt").write_bytes(b"a\n\nb\r\nc")
    sel = parse(keep=str(tmp_path / "l.txt"))
    assert list(list_values(sel, None)) == [b"a", b"b", b"c"]
    uid = Selection("keep", "x", "json", "uid", "uid")
    assert sample_value({"json": b'{"uid": "ab", "n": 1}'}, uid) == b"ab"
    assert sample_value({"json": b'{"n": 1}'}, uid) is None
    assert sample_value({"txt": b"hi\n"}, Selection("keep", "x", "txt")) == b"hi"
    assert sample_value({"__key__": "k1"}, Selection("keep", "x")) == b"k1"
    with pytest.raises(ValueError):
        sample_value({"json": b"not json"}, uid)


def test_options_refused_in_one_line(tmp_path):
    pd = require_module("pandas")
    (tmp_path / "l.txt").write_text("a\n")
    pd.DataFrame({"uid": ["a"]}).to_parquet(tmp_path / "p.parquet")
    cases = [
        ({"keep": str(tmp_path / "l.txt"), "drop": str(tmp_path / "l.txt")}, "not both"),
        ({"keep": str(tmp_path / "missing.txt")}, "no such file"),
        ({"drop": str(tmp_path / "p.parquet")}, "no column '__key__'"),
        ({"keep": str(tmp_path / "l.txt"), "by": "json:"}, "FIELD:MEMBER"),
        ({"by": "json:uid"}, "need --keep"),
    ]
    for kw, words in cases:
        with pytest.raises(HtoolsError, match=words):
            parse(**kw)
    assert parse(keep=str(tmp_path / "p.parquet"), by="json:uid").column == "uid"


SCORE = """
import json
def process_sample(sample):
    meta = json.loads(sample["json"])
    sample["score"] = str(len(sample["jpg"]) % 100).encode()
    return sample
"""


def make_uid_shards(folder, shards=3, per_shard=40) -> dict[str, dict]:
    wds = require_module("webdataset")
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(3)
    samples = {}
    for s in range(shards):
        with wds.TarWriter(str(folder / f"d-{s}.tar")) as w:
            for i in range(per_shard):
                uid = f"{rng.getrandbits(128):032x}"
                sample = {"__key__": f"s{s}-{i:03d}", "jpg": rng.randbytes(rng.randint(1, 500)),
                          "json": json.dumps({"uid": uid, "i": i}).encode()}
                w.write(sample)
                samples[uid] = sample
    return samples


def test_curation_loop(tmp_path):
    pd = require_module("pandas")
    samples = make_uid_shards(tmp_path / "in")
    (tmp_path / "score.py").write_text(SCORE)
    ok(run("htmapper", "-p", tmp_path / "score.py", tmp_path / "in/d-{0..2}.tar",
           tmp_path / "scored-@3.tar", "--workers", "1", "-q"))
    ok(run("htextract", tmp_path / "scored-{0..2}.tar", "-f", "__key__,json,score",
           "-o", tmp_path / "scores.parquet", "--workers", "1", "-q"))
    df = pd.read_parquet(tmp_path / "scores.parquet")
    df["uid"] = [json.loads(j)["uid"] for j in df["json"]]
    picked = df[df["score"] >= 30][["uid"]]
    picked = pd.concat([picked, pd.DataFrame({"uid": ["not-in-the-data"]})])
    picked.to_parquet(tmp_path / "picked.parquet")

    summary = tmp_path / "s.json"
    proc = ok(run("htshuffle", tmp_path / "scored-{0..2}.tar", tmp_path / "train-@2.tar",
                  "--keep", tmp_path / "picked.parquet", "--select-by", "json:uid",
                  "--workers", "1", "--summary", summary))
    out = read_wds(sorted(tmp_path.glob("train-*.tar")))
    want = set(picked["uid"]) - {"not-in-the-data"}
    assert {json.loads(s["json"])["uid"] for s in out} == want
    for s in out:
        assert s["jpg"] == samples[json.loads(s["json"])["uid"]]["jpg"]
    s = json.loads(summary.read_text())
    assert s["extra"]["selection"] == {"listed": len(want) + 1, "matched": len(want),
                                       "unselected": 120 - len(want)}
    assert s["samples_read"] == 120 and s["samples_written"] == len(want)
    assert s["samples_dropped"] == 120 - len(want)
    assert f"{120 - len(want)} samples left out by --keep" in proc.stderr + proc.stdout

    # a blocklist of keys: htmapper --drop
    blocked = sorted(s["__key__"] for s in out)[:5]
    (tmp_path / "block.txt").write_text("\n".join(blocked) + "\n\n")
    ok(run("htmapper", "-p", tmp_path / "score.py", tmp_path / "train-{0..1}.tar",
           tmp_path / "clean-@2.tar", "--drop", tmp_path / "block.txt", "--workers", "1",
           "--summary", summary))
    clean = read_wds(sorted(tmp_path.glob("clean-*.tar")))
    assert sorted(s["__key__"] for s in clean) == sorted(set(s["__key__"] for s in out)
                                                         - set(blocked))
    s = json.loads(summary.read_text())
    assert s["extra"]["selection"] == {"listed": 5, "matched": 5, "unselected": 5}
    assert not list(tmp_path.glob("_htools_tmp*")), "scratch left behind"


def test_missing_list_refused_before_any_shard_is_read(tmp_path):
    proc = run("htshuffle", tmp_path / "nothing-{0..2}.tar", tmp_path / "o-@2.tar",
               "--keep", tmp_path / "nope.txt")
    assert proc.returncode != 0
    assert "--keep" in proc.stderr and "no such file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _uid_lists(tmp_path, samples: dict[str, dict]) -> tuple[set[str], set[str]]:
    """keep.txt (half the uids, and one not in the data) and drop.txt (the same half)."""
    uids = sorted(samples)
    picked = set(random.Random(5).sample(uids, len(uids) // 2))
    (tmp_path / "keep.txt").write_text("\n".join(sorted(picked) + ["absent"]) + "\n")
    return picked, set(uids) - picked


def _check_counts(summary_path, listed: int, kept: int, total: int = 120) -> None:
    s = json.loads(summary_path.read_text())
    assert s["extra"]["selection"] == {"listed": listed, "matched": listed - 1,
                                       "unselected": total - kept}, s["extra"]
    assert s["samples_read"] == total and s["samples_dropped"] == total - kept
    assert s["samples_written"] == kept


def test_htextract_keep_and_drop_in_every_format(tmp_path):
    pd = require_module("pandas")
    samples = make_uid_shards(tmp_path / "in")
    picked, rest = _uid_lists(tmp_path, samples)
    key_of = {uid: s["__key__"] for uid, s in samples.items()}
    inputs = tmp_path / "in/d-{0..2}.tar"
    sel = ["--keep", tmp_path / "keep.txt", "--select-by", "json:uid", "--workers", "1"]
    summary = tmp_path / "s.json"

    proc = ok(run("htextract", inputs, "-f", "__key__", "-o", tmp_path / "rows.tsv", *sel,
                  "--summary", summary))
    rows = (tmp_path / "rows.tsv").read_text().split()
    assert rows == sorted(key_of[u] for u in picked)  # shard order is key order here
    _check_counts(summary, len(picked) + 1, len(picked))
    assert f"{120 - len(picked)} samples left out by --keep" in proc.stderr + proc.stdout

    proc = ok(run("htextract", inputs, "-f", "__key__", "--format", "jsonl", "--drop",
                  tmp_path / "keep.txt", "--select-by", "json:uid", "--workers", "1", "-q"))
    assert sorted(json.loads(r)["__key__"] for r in proc.stdout.split("\n") if r) == \
        sorted(key_of[u] for u in rest)

    for out in ("meta-@3.parquet", "one.parquet"):
        ok(run("htextract", inputs, "-f", "__key__,json", "-o", tmp_path / out, *sel,
               "--summary", summary))
        _check_counts(summary, len(picked) + 1, len(picked))
    df = pd.read_parquet(tmp_path / "one.parquet")
    per_shard = pd.concat(pd.read_parquet(tmp_path / f"meta-{i}.parquet") for i in range(3))
    assert list(df["__key__"]) == list(per_shard["__key__"]) == rows
    assert {json.loads(j)["uid"] for j in df["json"]} == picked

    from htools import extract
    data = extract(str(inputs), fields="__key__,json", keep=str(tmp_path / "keep.txt"),
                   select_by="json:uid", workers=1)
    assert list(data["__key__"]) == rows
    assert data.summary.extra["selection"]["matched"] == len(picked)


def test_htupload_keep_from_tar_shards(tmp_path):
    import gzip
    import shutil

    samples = make_uid_shards(tmp_path / "in")
    picked, rest = _uid_lists(tmp_path, samples)
    key_of = {uid: s["__key__"] for uid, s in samples.items()}
    summary = tmp_path / "s.json"
    proc = ok(run("htupload", tmp_path / "in/d-{0..2}.tar", tmp_path / "up-@2.tar",
                  "--keep", tmp_path / "keep.txt", "--select-by", "json:uid",
                  "--workers", "1", "--summary", summary))
    out = [read_wds([tmp_path / f"up-{i}.tar"]) for i in range(2)]
    assert [s["__key__"] for s in out[0] + out[1]] == sorted(key_of[u] for u in picked)
    assert abs(len(out[0]) - len(out[1])) <= 1  # balanced by the samples kept
    for s in out[0] + out[1]:
        assert s["jpg"] == samples[json.loads(s["json"])["uid"]]["jpg"]
    _check_counts(summary, len(picked) + 1, len(picked))
    assert "left out by --keep" in proc.stderr + proc.stdout

    for i in range(3):  # compressed inputs: the copy skips by count, not by offset
        with open(tmp_path / f"in/d-{i}.tar", "rb") as f, \
                gzip.open(tmp_path / f"in/z-{i}.tgz", "wb") as g:
            shutil.copyfileobj(f, g)
    (tmp_path / "keys.txt").write_text("\n".join(key_of[u] for u in picked) + "\n")
    ok(run("htupload", tmp_path / "in/z-{0..2}.tgz", tmp_path / "dr-%03d.tar", "--maxcount",
           "25", "--drop", tmp_path / "keys.txt", "--workers", "1", "--summary", summary))
    out = read_wds(sorted(tmp_path.glob("dr-*.tar")))
    assert [s["__key__"] for s in out] == sorted(key_of[u] for u in rest)
    assert json.loads(summary.read_text())["extra"]["selection"] == {
        "listed": len(picked), "matched": len(picked), "unselected": len(picked)}

    (tmp_path / "files").mkdir()
    (tmp_path / "files/a.txt").write_text("a")
    proc = run("htupload", tmp_path / "files", tmp_path / "f-@1.tar", "--keep",
               tmp_path / "keep.txt")
    assert proc.returncode != 0 and "not of a directory" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_resume_with_an_edited_list_is_refused(tmp_path):
    from helpers import make_shards

    make_shards(tmp_path / "in", shards=2, per_shard=4)
    (tmp_path / "s.py").write_text("def process_sample(s):\n    return s\n")
    (tmp_path / "keep.txt").write_text("a\nb\n")
    args = ("htmapper", "-p", tmp_path / "s.py", tmp_path / "in" / "data-@2.tar",
            tmp_path / "out" / "o-@2.tar", "--keep", tmp_path / "keep.txt", "--workers", "1")
    ok(run(*args))
    made = json.loads((tmp_path / "out" / "o.index.json").read_text())["lineage"]
    assert len(made["options"]["list_digest"]) == 16
    (tmp_path / "out" / "o-1.tar").unlink()
    ok(run(*args, "--resume"))  # the same list: resumed
    (tmp_path / "out" / "o-1.tar").unlink()
    (tmp_path / "keep.txt").write_text("a\nc\n")  # edited in place, same name
    proc = run(*args, "--resume")
    assert proc.returncode == 1 and "list content changed: " in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "o-1.tar").exists()


def test_a_list_larger_than_the_budget_is_looked_up_by_partition(tmp_path, monkeypatch):
    from htools import extract
    from htools.selection import job

    samples = make_uid_shards(tmp_path / "in")
    picked, _ = _uid_lists(tmp_path, samples)
    args = dict(fields="__key__,json", keep=str(tmp_path / "keep.txt"), select_by="json:uid",
                workers=1)
    whole = extract(str(tmp_path / "in/d-{0..2}.tar"), **args)
    monkeypatch.setattr(job, "BUDGET", 256)  # the table: 16 * 61 bytes
    parts = extract(str(tmp_path / "in/d-{0..2}.tar"), **args)
    assert list(parts["__key__"]) == list(whole["__key__"])
    assert {json.loads(j)["uid"] for j in parts["json"]} == picked
    assert parts.summary.extra["selection"] == whole.summary.extra["selection"]
    assert any("by partition" in n for n in parts.summary.notes), parts.summary.notes


@pytest.mark.timeout(600)
def test_bench_selection_quick_rows(tmp_path):
    """bench_selection.py's rows for the suite, at toy sizes: every case runs and its
    numbers parse (no speed asserted)."""
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        import bench_selection
    finally:
        sys.path.remove(str(bench))

    def row(name, ours, base, goal, mb, mem=None, base_mem=None):
        return {"operation": name, "ratio": base / ours, "goal": goal, "mem": mem}

    rows = bench_selection.rows(str(tmp_path), True, row)
    assert [r["operation"].split(" ")[0] for r in rows] == ["htmapper", "the", "htmapper",
                                                            "htshuffle"]
    assert "over 2,000 samples with a --keep list of all" in rows[0]["operation"]
    assert rows[0]["goal"] == ">= 0.87"
    assert "CPU seconds" in rows[1]["operation"] and rows[1]["goal"] == "info"
    cpu = rows.pop(1)
    assert "20,000-key --keep list" in rows[1]["operation"] and rows[1]["goal"] == "info"
    assert all(r["ratio"] > 0 for r in rows) and rows[0]["mem"] > 0 and rows[1]["mem"] > 0
    assert cpu["ratio"] > 0
