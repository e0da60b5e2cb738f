"""htextract --verify STEM.index.json: every listed shard exists with its size and
sha256 and still parses to its nsamples; one line per mismatch and a count, exit 1 on
any -- on local files and through nginx."""

from __future__ import annotations

from helpers import make_shards, ok, run

W1 = ("--workers", "1")


def test_verify_a_clean_set_then_a_damaged_one(tmp_path, place):
    base, folder = place
    make_shards(tmp_path / "in", shards=4, per_shard=5)
    ok(run("htupload", tmp_path / "in" / "data-@4.tar", base + "v-@4.tar", *W1))
    index = base + "v.index.json"
    p = ok(run("htextract", "--verify", index, *W1))
    assert p.stdout.splitlines() == ["ok: 4 shard(s) match the index"]

    size = (folder / "v-0.tar").stat().st_size
    with open(folder / "v-0.tar", "r+b") as f:  # truncated inside a member
        f.truncate(size // 2 + 100)
    data = bytearray((folder / "v-1.tar").read_bytes())
    data[600] ^= 0x01  # a byte of the first member's data: same size, still parses
    (folder / "v-1.tar").write_bytes(bytes(data))
    (folder / "v-3.tar").unlink()
    p = run("htextract", "--verify", index, *W1)
    assert p.returncode == 1, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 4 and lines[3] == "3 of 4 shard(s) differ from the index", lines
    assert lines[0].startswith(f"{base}v-0.tar: short: {size // 2 + 100} bytes, the index "
                               f"says {size}; unreadable: "), lines[0]
    assert lines[1].startswith(f"{base}v-1.tar: changed: sha256 "), lines[1]
    assert "samples" not in lines[1] and "bytes" not in lines[1]  # size and count still agree
    assert lines[2] == f"{base}v-3.tar: missing"
    last = p.stderr.strip().splitlines()[-1]  # the summary line says it too, not "ok"
    assert last.startswith("htextract: FAILED") and "; 3 differ;" in last, last

    from htools.extract_index import verify  # the Python API: a summary that is not ok
    summary = verify(index, workers=1)
    assert not summary.ok and summary.shards_differ == 3 and summary.as_dict()["ok"] is False


def test_verify_counts_samples_and_refuses_what_is_not_an_index(tmp_path):
    make_shards(tmp_path / "in", shards=2, per_shard=5)
    out = tmp_path / "out"
    ok(run("htupload", tmp_path / "in" / "data-@2.tar", out / "v-@2.tar", *W1))
    # another valid shard of the same size but fewer samples, put in place of v-1.tar
    doc = (out / "v.index.json").read_text().replace('"nsamples": 5', '"nsamples": 6', 1)
    (out / "v.index.json").write_text(doc)
    p = run("htextract", "--verify", out / "v.index.json", *W1)
    assert p.returncode == 1
    assert p.stdout.splitlines() == [f"{out}/v-0.tar: 5 samples, the index says 6",
                                     "1 of 2 shard(s) differ from the index"]
    (tmp_path / "x.json").write_text("[1, 2]")
    p = run("htextract", "--verify", tmp_path / "x.json", *W1)
    assert p.returncode == 1 and "is not a shard index" in p.stderr
    p = run("htextract", "--verify", tmp_path / "none.index.json", *W1)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1
