"""The shard index (STEM.index.json) written beside every output set, and htextract
--index: checked against an independent reader (webdataset), the files' own sizes and
sha256, and the wids dataset-description keys."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers import make_shards, ok, read_wds, run

import htools
from htools.shardindex import index_url
from htools.shards import OutputSet

WIDS_KEYS = {"wids_version", "name", "shardlist"}  # the wids JSON description


def check_index(path: Path, shards: list[Path]) -> dict:
    doc = json.loads(path.read_text())
    assert WIDS_KEYS <= set(doc) and doc["wids_version"] == 1
    assert [e["url"] for e in doc["shardlist"]] == [p.name for p in shards]
    for entry, shard in zip(doc["shardlist"], shards):
        assert entry["nsamples"] == len(read_wds([shard]))  # webdataset's own count
        assert entry["filesize"] == shard.stat().st_size
        assert entry["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert doc["totals"]["samples"] == sum(e["nsamples"] for e in doc["shardlist"])
    assert doc["totals"]["bytes"] == sum(p.stat().st_size for p in shards)
    return doc


def test_index_names():
    assert index_url(OutputSet.parse("s3://b/thumbs-@8.tgz")) == "s3://b/thumbs.index.json"
    assert index_url(OutputSet.parse("/d/out-%06d.tar")) == "/d/out.index.json"
    assert index_url(OutputSet.parse("/d/shard-{000..147}.tar.zst")) == "/d/shard.index.json"
    assert index_url(OutputSet.parse("/d/one.tar")) == "/d/one.index.json"


def test_htmapper_writes_an_index_that_readers_agree_with(tmp_path):
    make_shards(tmp_path / "in", shards=3, per_shard=7)
    script = tmp_path / "s.py"
    script.write_text("def process_sample(s):\n"
                      "    if s['__key__'].endswith('3'):\n        return None\n"
                      "    return s\n")
    ok(run("htmapper", "-p", script, tmp_path / "in" / "data-@3.tar",
           tmp_path / "out" / "o-@3.tgz", "--workers", "2"))
    shards = sorted((tmp_path / "out").glob("o-*.tgz"))
    doc = check_index(tmp_path / "out" / "o.index.json", shards)
    assert doc["totals"]["samples"] == 18 and doc["fields"] == {"cls": 18, "jpg": 18, "txt": 18}


def test_exchange_index_equals_htextract_index(tmp_path, processes_client):
    make_shards(tmp_path / "in", shards=4, per_shard=10)
    s = htools.shuffle(str(tmp_path / "in" / "data-@4.tar"), str(tmp_path / "o" / "x-@3.tar.gz"),
                       seed=3, client=processes_client, quiet=True)
    assert s.ok and s.extra["index"].endswith("/x.index.json")
    shards = sorted((tmp_path / "o").glob("x-*.tar.gz"))
    built = check_index(tmp_path / "o" / "x.index.json", shards)
    ok(run("htextract", tmp_path / "o" / "x-@3.tar.gz", "--index", tmp_path / "o" / "again.json",
           "--workers", "1"))
    again = json.loads((tmp_path / "o" / "again.json").read_text())
    assert again["shardlist"] == built["shardlist"] and again["fields"] == built["fields"]


def test_resume_keeps_the_index_whole_and_no_index_writes_none(tmp_path):
    src = tmp_path / "src"
    for i in range(12):
        (src / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 3}" / f"k{i:02d}.txt").write_text(f"sample {i}")
    out = tmp_path / "up"
    ok(run("htupload", src, out / "u-@4.tar", "--workers", "1"))
    first = check_index(out / "u.index.json", sorted(out.glob("u-*.tar")))
    (out / "u-2.tar").unlink()
    ok(run("htupload", src, out / "u-@4.tar", "--workers", "1", "--resume"))
    assert check_index(out / "u.index.json", sorted(out.glob("u-*.tar"))) == first
    ok(run("htupload", src, tmp_path / "n" / "u-@2.tar", "--workers", "1", "--no-index"))
    assert not (tmp_path / "n" / "u.index.json").exists()


def test_a_failed_job_writes_no_index(tmp_path):
    make_shards(tmp_path / "in", shards=2, per_shard=3)
    (tmp_path / "in" / "data-1.tar").write_bytes(b"not a tar" * 100)
    script = tmp_path / "s.py"
    script.write_text("def process_sample(s):\n    return s\n")
    p = run("htmapper", "-p", script, tmp_path / "in" / "data-@2.tar",
            tmp_path / "out" / "o-@2.tar", "--workers", "1")
    assert p.returncode == 1 and (tmp_path / "out" / "o-0.tar").exists()
    assert not (tmp_path / "out" / "o.index.json").exists()


def test_htextract_index_of_a_missing_shard_fails_clearly(tmp_path):
    make_shards(tmp_path / "in", shards=1, per_shard=2)
    p = run("htextract", tmp_path / "in" / "data-@2.tar", "--index", tmp_path / "i.json")
    assert p.returncode == 1 and "data-1.tar does not exist" in p.stderr
    assert not (tmp_path / "i.json").exists()


def test_a_big_index_is_encoded_entry_by_entry_as_dumps_would():
    """write_for_job hands build() a function of the entries: the shard list is made as
    it is encoded, and the file's bytes are those of json.dumps(indent=1) of the list."""
    import json

    from htools.shardindex import build, encode
    from htools.summary import Written

    w = Written({"output": f"/d/out/o-{i:05d}.tar", "nsamples": i % 7,
                 "filesize": 10240 * (i + 1), "sha256": f"{i:064x}",
                 "fields": {"txt": i % 7, "cls": i % 7, "ü": 1}} for i in range(3000))
    w.append({"output": "s3://b/elsewhere.tar", "nsamples": 1, "filesize": 5, "sha256": "x",
              "fields": {}})
    lazy = build(lambda: iter(w), "/d/out/o.index.json", "o")
    eager = build(list(w), "/d/out/o.index.json", "o")
    data = encode(lazy)
    assert data == (json.dumps(eager, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    assert json.loads(data) == eager and eager["totals"]["shards"] == 3001
    assert encode(build([], "/d/o.index.json", "o")) == \
        (json.dumps(build([], "/d/o.index.json", "o"), indent=1) + "\n").encode()


def test_the_lineage_is_read_from_the_index_tail_without_parsing_its_shards(tmp_path,
                                                                             monkeypatch):
    from htools import shardindex
    from htools.summary import Written

    w = Written({"output": str(tmp_path / f"o-{i:05d}.tar"), "nsamples": 1, "filesize": 10,
                 "sha256": f"{i:064x}", "fields": {"txt": 1}} for i in range(3000))
    url = str(tmp_path / "o.index.json")
    doc = shardindex.build(lambda: iter(w), url, "o")
    doc["lineage"] = {"tool": "htshuffle", "options": {"seed": 3, "note": "a \"lineage\": x"}}
    shardindex.write(doc, url, None)
    assert (tmp_path / "o.index.json").stat().st_size > 4 * shardindex.LINEAGE_TAIL
    monkeypatch.setattr(shardindex, "read_index", lambda *a: pytest.fail("parsed it all"))
    assert shardindex.read_lineage(url, None) == doc["lineage"]
    assert shardindex.read_lineage(str(tmp_path / "none.index.json"), None) is None
    (tmp_path / "old.index.json").write_text('{"wids_version": 1, "shardlist": []}\n')
    monkeypatch.undo()
    assert shardindex.read_lineage(str(tmp_path / "old.index.json"), None) is None
