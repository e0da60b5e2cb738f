"""--maxcount N for htshuffle and htsort: every output but the last holds exactly N
samples, cut inside buckets where needed (many equal sort keys, merge levels, outputs
sharing a bucket, a --resume that writes only some of them); with a reduce the cuts
fall between groups of equal keys instead.  Read back with the webdataset reader."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from helpers import read_wds, write_grouped

import htools


def write_ties(folder: Path, shards: int, per_shard: int, seed: int = 0) -> list[dict]:
    """Samples whose sort field ``grp`` takes only 3 values (few, huge buckets)."""
    return write_grouped(folder, shards, per_shard, seed, groups=3)


def outs(folder: Path) -> list[Path]:
    return sorted(folder.glob("o-*.tar"))


def digests(folder: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in outs(folder)]


@pytest.mark.parametrize("levels", [False, True])
def test_sort_maxcount_is_exact_with_few_distinct_keys(tmp_path, processes_client, levels):
    samples = write_ties(tmp_path / "in", shards=6, per_shard=25)
    kw = {"fan_in": 2, "memory": 8 << 10} if levels else {}
    s = htools.sort(str(tmp_path / "in" / "d-{00..05}.tar"), str(tmp_path / "o" / "o-%03d.tar"),
                    key="grp", maxcount=16, client=processes_client, quiet=True, **kw)
    assert s.ok, s.failures
    if levels:
        assert s.extra["levels"]
    files = outs(tmp_path / "o")
    assert [len(read_wds([p])) for p in files] == [16] * 9 + [6]
    # the outputs in order are the stable sort: equal keys in input order
    assert read_wds(files) == sorted(samples, key=lambda x: x["grp"])


def test_shuffle_maxcount_is_exact_and_seeded_whatever_the_plan(tmp_path, processes_client):
    samples = write_ties(tmp_path / "in", shards=5, per_shard=30, seed=2)
    src = str(tmp_path / "in" / "d-{00..04}.tar")
    for name, kw in (("a", {}), ("b", {"fan_in": 2, "memory": 8 << 10})):
        s = htools.shuffle(src, str(tmp_path / name / "o-%03d.tar"), seed=5, maxcount=40,
                           client=processes_client, quiet=True, **kw)
        assert s.ok, s.failures
    assert [len(read_wds([p])) for p in outs(tmp_path / "a")] == [40, 40, 40, 30]
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    got = read_wds(outs(tmp_path / "a"))
    assert sorted(x["__key__"] for x in got) == sorted(x["__key__"] for x in samples)


def test_resume_rewrites_outputs_that_start_inside_a_bucket(tmp_path, processes_client):
    """Outputs deleted from the middle of a --maxcount sort come back byte-identical: the
    write task skips the records of the outputs that exist, inside shared buckets."""
    write_ties(tmp_path / "in", shards=4, per_shard=25, seed=3)
    src, dst = str(tmp_path / "in" / "d-{00..03}.tar"), str(tmp_path / "o" / "o-%03d.tar")
    assert htools.sort(src, dst, key="grp", maxcount=9, client=processes_client, quiet=True).ok
    before = digests(tmp_path / "o")
    files = outs(tmp_path / "o")
    for p in (files[2], files[3], files[7]):  # each starts inside a bucket
        p.unlink()
    s = htools.sort(src, dst, key="grp", maxcount=9, resume=True, client=processes_client, quiet=True)
    assert s.ok, s.failures
    assert s.shards_skipped == len(files) - 3 and s.shards_done == 3
    assert digests(tmp_path / "o") == before


def test_dedup_sort_maxcount_is_exact(tmp_path, processes_client):
    samples = write_ties(tmp_path / "in", shards=4, per_shard=30, seed=4)
    for x in samples[::3]:  # a third of the samples repeat an earlier one's bytes
        x["dup"] = b"same"
    s = htools.sort(str(tmp_path / "in" / "d-{00..03}.tar"), str(tmp_path / "o" / "o-%03d.tar"),
                    key="grp", dedup="bin", maxcount=25, client=processes_client, quiet=True)
    assert s.ok, s.failures
    kept = s.samples_written
    sizes = [len(read_wds([p])) for p in outs(tmp_path / "o")]
    assert sizes[:-1] == [25] * (len(sizes) - 1) and sum(sizes) == kept


def test_reduce_with_maxcount_cuts_between_groups(tmp_path, processes_client):
    """A reduce must see each key's whole group once: its outputs end between groups."""
    write_ties(tmp_path / "in", shards=3, per_shard=20, seed=6)
    script = tmp_path / "count.py"
    script.write_text("def reduce_samples(key, samples):\n"
                      "    return {'__key__': f'g{key}', 'n': str(len(samples)).encode()}\n")
    s = htools.sort(str(tmp_path / "in" / "d-{00..02}.tar"), str(tmp_path / "o" / "o-%03d.tar"),
                    key="grp", script=str(script), maxcount=25, client=processes_client, quiet=True)
    assert s.ok, s.failures
    got = read_wds(outs(tmp_path / "o"))
    assert sorted(x["__key__"] for x in got) == ["g0", "g1", "g2"]  # one row per key
    assert sum(int(x["n"]) for x in got) == 60


def test_a_failed_read_fails_its_slice_and_the_next_slice_reopens_the_runs(tmp_path):
    """A write task of two --maxcount outputs over one run whose first bucket has a
    damaged record: the first output fails naming the run, the second (in the next
    bucket) is written whole from runs opened again, and no partial file is left."""
    from htools.exchange.runfile import RunWriter, SampleEncoder, pack_key, record
    from htools.exchange.specs import StageTwo
    from htools.exchange.write import write_outputs

    enc = SampleEncoder(str(tmp_path), 0)
    url = str(tmp_path / "run.bin")
    recs = {b: [record(pack_key(f"{b}-{i}"), f"k{b}{i}", enc.encode(
        {"__key__": f"k{b}{i}", "txt": f"sample {b} {i}".encode()})) for i in range(5)]
        for b in (0, 1)}
    with RunWriter(url, 0, 2, {}) as w:
        for b in (0, 1):
            w.write(b, b"".join(recs[b]), 5)
        run = w.close()
    data = bytearray(Path(url).read_bytes())
    at = sum(len(r) for r in recs[0][:2])  # bucket 0's third record: a length too long
    data[at:at + 8] = (1 << 40).to_bytes(8, "little")
    Path(url).write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    outputs = [(str(out / "o-0.tar"), 0, 1, 0, 5, 0), (str(out / "o-1.tar"), 1, 2, 5, 5, 5)]
    first, second = write_outputs(outputs, [run], StageTwo())
    assert first["status"] == "failed" and "run.bin: corrupt run file" in first["error"]
    assert first["samples_failed"] == 5
    assert second["status"] == "ok" and second["samples_written"] == 5, second
    assert [x["__key__"] for x in read_wds([out / "o-1.tar"])] == [f"k1{i}" for i in range(5)]
    assert sorted(p.name for p in out.iterdir()) == ["o-1.tar"]


# -- counted after the reduce, --merge or --dedup (issue 24) ----------------------------

WORDS_SCRIPT = """
def sort_key(sample):
    return sample["txt"].decode()

def reduce_samples(key, samples):
    return {"__key__": key, "count": str(len(samples)).encode()}
"""


def write_words(folder: Path, shards: int = 4, per_shard: int = 200) -> dict[str, int]:
    """800 one-word samples over 43 distinct words, one of them in half the samples (a
    big group that would empty its neighbours if outputs were balanced by records)."""
    wds = pytest.importorskip("webdataset")
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    n = 0
    for s in range(shards):
        with wds.TarWriter(str(folder / f"t-{s}.tar")) as w:
            for i in range(per_shard):
                word = "the" if n % 2 == 0 else f"w{(n // 2) % 42:02d}"
                n += 1
                counts[word] = counts.get(word, 0) + 1
                w.write({"__key__": f"s{s}-{i:03d}", "txt": word.encode()})
    assert len(counts) == 43
    return counts


def test_reduce_maxcount_counts_groups_not_samples(tmp_path, processes_client):
    """htsort t-@4.tar 'o-%04d.tar' -p wc.py --maxcount 10: 800 samples, 43 words ->
    outputs of 10, 10, 10, 10, 3 words (not 80 outputs, 70 of them empty)."""
    counts = write_words(tmp_path / "in")
    script = tmp_path / "wc.py"
    script.write_text(WORDS_SCRIPT)
    s = htools.sort(str(tmp_path / "in" / "t-@4.tar"), str(tmp_path / "o" / "o-%04d.tar"),
                    script=str(script), maxcount=10, client=processes_client, quiet=True)
    assert s.ok, s.failures
    files = outs(tmp_path / "o")
    assert [len(read_wds([p])) for p in files] == [10, 10, 10, 10, 3]
    got = read_wds(files)
    assert [x["__key__"] for x in got] == sorted(counts)
    assert {x["__key__"]: int(x["count"]) for x in got} == counts


def test_reduce_into_m_outputs_balances_groups(tmp_path, processes_client):
    """Without --maxcount, a reduce into @4 balances the outputs by groups (words), not
    by the samples before the reduce (which gave [0, 1, 20, 22])."""
    write_words(tmp_path / "in")
    script = tmp_path / "wc.py"
    script.write_text(WORDS_SCRIPT)
    s = htools.sort(str(tmp_path / "in" / "t-@4.tar"), str(tmp_path / "o" / "o-@4.tar"),
                    script=str(script), client=processes_client, quiet=True)
    assert s.ok, s.failures
    sizes = [len(read_wds([p])) for p in outs(tmp_path / "o")]
    assert sum(sizes) == 43 and max(sizes) - min(sizes) <= 3, sizes


def test_merge_maxcount_counts_joined_samples(tmp_path, processes_client):
    """htsort A B 'o-%04d.tar' --merge --maxcount 100 over 500 joined keys: 5 x 100."""
    wds = pytest.importorskip("webdataset")
    for name, field in (("a", "jpg"), ("b", "cls")):
        (tmp_path / name).mkdir()
        for s in range(2):
            with wds.TarWriter(str(tmp_path / name / f"{name}-{s}.tar")) as w:
                for i in range(s * 250, (s + 1) * 250):
                    w.write({"__key__": f"k{i:04d}", field: f"{field}{i}".encode()})
    s = htools.sort([str(tmp_path / "a" / "a-@2.tar"), str(tmp_path / "b" / "b-@2.tar")],
                    str(tmp_path / "o" / "o-%04d.tar"), merge=True, maxcount=100,
                    client=processes_client, quiet=True)
    assert s.ok, s.failures
    files = outs(tmp_path / "o")
    assert [len(read_wds([p])) for p in files] == [100] * 5
    got = read_wds(files)
    assert all(set(x) == {"__key__", "jpg", "cls"} for x in got)


def test_shuffle_dedup_maxcount_counts_unique_samples(tmp_path, processes_client):
    """htshuffle --dedup jpg --maxcount 100 with 494 unique images: 100 x 4 + 94."""
    wds = pytest.importorskip("webdataset")
    (tmp_path / "in").mkdir()
    n = 0
    for s in range(4):
        with wds.TarWriter(str(tmp_path / "in" / f"d-{s}.tar")) as w:
            for i in range(150):
                w.write({"__key__": f"s{s}-{i:03d}", "jpg": f"img{n % 494}".encode()})
                n += 1
    s = htools.shuffle(str(tmp_path / "in" / "d-@4.tar"), str(tmp_path / "o" / "o-%04d.tar"),
                       dedup="jpg", maxcount=100, seed=3, client=processes_client, quiet=True)
    assert s.ok, s.failures
    files = outs(tmp_path / "o")
    assert [len(read_wds([p])) for p in files] == [100, 100, 100, 100, 94]
    assert len({x["jpg"] for x in read_wds(files)}) == 494
