"""htsort / htshuffle --dedup FIELD: the first sample (in input order) of each distinct
FIELD value is kept, the rest are counted as dropped; through merge levels and memory
bounds; results read back with the webdataset reader."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from helpers import firsts, ok, read_wds, run, write_duplicates

import htools
from htools.errors import HtoolsError


def write_shards(folder: Path, shards: int, per_shard: int, seed: int = 0,
                 distinct: int = 40) -> list[dict]:
    """Shards whose ``img`` takes one of ``distinct`` values, named by ``name``."""
    return write_duplicates(folder, shards, per_shard, seed=seed, distinct=distinct,
                            longest=700, extra=lambda rng, v: {"name": f"v{v:03d}".encode()})


def outputs(folder: Path) -> list[Path]:
    return sorted(folder.glob("o-*.tar"))


def as_set(samples) -> Counter:
    return Counter(tuple(sorted(x.items())) for x in samples)


def adds_up(s, read: int) -> None:
    assert s.samples_read == read
    assert s.samples_read == s.samples_written + s.samples_dropped + s.samples_failed
    assert s.samples_read == s.samples_mapped + s.samples_dropped + s.samples_failed


@pytest.mark.parametrize("levels", [False, True])
def test_shuffle_dedup_keeps_the_first_of_each_value(tmp_path, processes_client, levels):
    samples = write_shards(tmp_path / "in", shards=12, per_shard=20)
    kw = {"fan_in": 2, "memory": 4 << 10} if levels else {}
    s = htools.shuffle(str(tmp_path / "in" / "d-@12.tar"), str(tmp_path / "o" / "o-@3.tar"),
                       seed=4, dedup="img", client=processes_client, quiet=True, **kw)
    assert s.ok, s.failures
    if levels:
        assert len(s.extra["levels"]) >= 2 and s.extra["max_runs_per_write"] <= 2
    keep = firsts(samples, "img")
    got = read_wds(outputs(tmp_path / "o"))
    assert as_set(got) == as_set(keep)  # exactly the first of each, in input order
    adds_up(s, len(samples))
    assert s.samples_written == len(keep) == 40
    assert s.samples_dropped == s.extra["duplicates"] == len(samples) - len(keep)
    assert [x["__key__"] for x in got] != sorted(x["__key__"] for x in got)  # shuffled


def test_shuffle_dedup_is_byte_identical_for_a_seed_and_whatever_the_fan_in(tmp_path, processes_client):
    write_shards(tmp_path / "in", shards=10, per_shard=15, seed=2)
    digests = {}
    for name, seed, fan in (("a", 7, 2), ("b", 7, 256), ("c", 8, 256)):
        s = htools.shuffle(str(tmp_path / "in" / "d-@10.tar"), str(tmp_path / name / "o-@3.tar"),
                           seed=seed, dedup="name", fan_in=fan, memory=4 << 10, client=processes_client,
                           quiet=True)
        assert s.ok, s.failures
        digests[name] = [hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in outputs(tmp_path / name)]
    assert digests["a"] == digests["b"] != digests["c"]


@pytest.mark.parametrize("levels", [False, True])
def test_sort_dedup_by_its_key_keeps_the_first_in_input_order(tmp_path, processes_client, levels):
    samples = write_shards(tmp_path / "in", shards=12, per_shard=20, seed=1)
    kw = {"fan_in": 2, "memory": 4 << 10} if levels else {}
    s = htools.sort(str(tmp_path / "in" / "d-@12.tar"), str(tmp_path / "o" / "o-@4.tar"),
                    key="name", dedup="name", client=processes_client, quiet=True, **kw)
    assert s.ok, s.failures
    if levels:
        assert len(s.extra["levels"]) >= 2
    keep = firsts(samples, "name")
    got = read_wds(outputs(tmp_path / "o"))
    assert got == sorted(keep, key=lambda x: x["name"])  # sorted, each value's first kept
    adds_up(s, len(samples))
    assert s.samples_dropped == s.extra["duplicates"] == len(samples) - len(keep)


def test_sort_dedup_numeric_key_compares_bytes(tmp_path, processes_client):
    """Equal numbers written differently ("7", "07") are different bytes: both stay."""
    folder = tmp_path / "in"
    folder.mkdir()
    rows = [("a", b"7"), ("b", b"07"), ("c", b"7"), ("d", b"3"), ("e", b"07"), ("f", b"3")]
    for n, part in enumerate((rows[:3], rows[3:])):
        with wds.TarWriter(str(folder / f"d-{n}.tar")) as w:
            for k, v in part:
                w.write({"__key__": k, "n": v})
    s = htools.sort(str(folder / "d-@2.tar"), str(tmp_path / "o" / "o-@1.tar"), key="n",
                    key_type="int", dedup="n", client=processes_client, quiet=True)
    assert s.ok, s.failures
    got = read_wds(outputs(tmp_path / "o"))
    assert [(x["__key__"], x["n"]) for x in got] == [("d", b"3"), ("a", b"7"), ("b", b"07")]
    assert s.samples_dropped == s.extra["duplicates"] == 3


def test_dedup_by_key(tmp_path, processes_client):
    folder = tmp_path / "in"
    folder.mkdir()
    for n in range(3):  # every shard has the same keys: two of every three are duplicates
        with wds.TarWriter(str(folder / f"d-{n}.tar")) as w:
            for i in range(10):
                w.write({"__key__": f"k{i}", "src": str(n).encode()})
    s = htools.shuffle(str(folder / "d-@3.tar"), str(tmp_path / "o" / "o-@2.tar"),
                       dedup="__key__", client=processes_client, quiet=True)
    assert s.ok, s.failures
    got = read_wds(outputs(tmp_path / "o"))
    assert sorted(x["__key__"] for x in got) == [f"k{i}" for i in range(10)]
    assert {x["src"] for x in got} == {b"0"}  # the first shard's
    assert s.samples_dropped == 20


def test_a_missing_field_is_a_sample_error(tmp_path, processes_client):
    samples = write_shards(tmp_path / "in", shards=3, per_shard=10, seed=5)
    with wds.TarWriter(str(tmp_path / "in" / "d-03.tar")) as w:
        w.write({"__key__": "lonely", "name": b"x"})  # no img
        w.write({"__key__": "dup", "img": samples[0]["img"], "name": b"y"})
    src = str(tmp_path / "in" / "d-{00..03}.tar")
    s = htools.shuffle(src, str(tmp_path / "a" / "o-@2.tar"), dedup="img", client=processes_client,
                       quiet=True)
    assert not s.ok and s.shards_failed  # --max-errors 0: the shard fails
    assert "no field 'img' to deduplicate by" in json.dumps(s.failures)
    s = htools.shuffle(src, str(tmp_path / "b" / "o-@2.tar"), dedup="img", max_errors=1,
                       client=processes_client, quiet=True)
    assert s.ok, s.failures
    adds_up(s, len(samples) + 2)
    assert s.samples_failed == s.sample_errors == 1
    assert s.errors[0]["key"] == "lonely" and "deduplicate" in s.errors[0]["error"]
    keep = firsts(samples, "img")
    assert s.samples_written == len(keep) and s.extra["duplicates"] == len(samples) + 1 - len(keep)


def write_ties(folder: Path, shards: int, per_shard: int, seed: int = 0) -> list[dict]:
    """Shards whose ``img`` repeats (duplicates within and across shards) and whose sort
    field ``grp`` takes 3 values regardless of ``img``: after the dedup, many samples
    share a sort key (their input order must hold), and duplicates of one ``img`` have
    different ``grp`` (they land in different sort buckets)."""
    rng = random.Random(seed)
    values = [rng.randbytes(rng.randrange(1, 600)) for _ in range(30)]
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for s in range(shards):
        with wds.TarWriter(str(folder / f"d-{s:02d}.tar")) as w:
            for i in range(per_shard):
                sample = {"__key__": f"s{s:02d}-{i:03d}", "img": values[rng.randrange(30)],
                          "grp": str(rng.randrange(3)).encode(),
                          "pos": f"{s:02d}-{i:03d}".encode()}
                w.write(sample)
                samples.append(sample)
    return samples


@pytest.mark.parametrize("reverse,levels", [(False, False), (False, True), (True, True)])
def test_sort_dedup_by_another_field(tmp_path, processes_client, reverse, levels):
    """htsort --key grp --dedup img: the first sample of each img (in input order), sorted
    by grp with equal grp in input order -- the same as htsort --key grp without the
    duplicates; through merge levels in both passes and a small memory budget."""
    samples = write_ties(tmp_path / "in", shards=12, per_shard=20)
    kw = {"fan_in": 2, "memory": 32 << 10} if levels else {}
    s = htools.sort(str(tmp_path / "in" / "d-@12.tar"), str(tmp_path / "o" / "o-@4.tar"),
                    key="grp", key_type="int", reverse=reverse, dedup="img",
                    scratch=str(tmp_path / "scratch"), client=processes_client, quiet=True, **kw)
    assert s.ok, s.failures
    keep = firsts(samples, "img")
    expect = sorted(keep, key=lambda x: int(x["grp"]), reverse=reverse)  # stable
    assert read_wds(outputs(tmp_path / "o")) == expect
    adds_up(s, len(samples))
    assert s.samples_written == len(keep) == 30
    assert s.samples_dropped == s.extra["duplicates"] == len(samples) - 30
    assert s.extra["dedup_tasks"] >= 1
    if levels:
        stages = [lv["stage"] for lv in s.extra["levels"]]
        assert "dedup-merge" in stages and "merge" in stages  # levels in both passes
    assert not any((tmp_path / "scratch").rglob("*.bin"))  # every run cleaned up
    index = json.loads((tmp_path / "o" / "o.index.json").read_text())
    assert sum(e["nsamples"] for e in index["shardlist"]) == 30


def test_sort_dedup_by_another_field_is_byte_identical_whatever_the_plan(tmp_path, processes_client):
    write_ties(tmp_path / "in", shards=8, per_shard=15, seed=3)
    digests = []
    for name, kw in (("a", {}), ("b", {"fan_in": 3, "memory": 16 << 10}),
                     ("c", {"fan_in": 2, "memory": 64 << 10})):
        s = htools.sort(str(tmp_path / "in" / "d-{00..07}.tar"), str(tmp_path / name / "o-@3.tar"),
                        key="grp", dedup="img", client=processes_client, quiet=True, **kw)
        assert s.ok, s.failures
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in outputs(tmp_path / name)])
    assert digests[0] == digests[1] == digests[2]


def test_sort_dedup_with_a_script_sort_key_and_reduce(tmp_path, processes_client):
    """A script's sort_key() and reduce_samples() see only the first of each img; the
    reduce groups by the sort key."""
    samples = write_ties(tmp_path / "in", shards=6, per_shard=20, seed=4)
    script = tmp_path / "by_grp.py"
    script.write_text(
        "def sort_key(sample):\n"
        "    return int(sample['grp'])\n"
        "def reduce_samples(key, samples):\n"
        "    return {'__key__': f'g{key}', 'n': str(len(samples)).encode(),\n"
        "            'pos': b','.join(s['pos'] for s in samples)}\n")
    s = htools.sort(str(tmp_path / "in" / "d-{00..05}.tar"), str(tmp_path / "o" / "o-@2.tar"),
                    script=str(script), dedup="img", client=processes_client, quiet=True)
    assert s.ok, s.failures
    keep = firsts(samples, "img")
    expect = []
    for g in sorted({int(x["grp"]) for x in keep}):
        group = [x for x in keep if int(x["grp"]) == g]
        expect.append({"__key__": f"g{g}", "n": str(len(group)).encode(),
                       "pos": b",".join(x["pos"] for x in group)})
    assert read_wds(outputs(tmp_path / "o")) == expect
    assert s.extra["duplicates"] == len(samples) - len(keep)


def test_sort_dedup_by_another_field_sample_errors(tmp_path, processes_client):
    """A sample without the dedup field, or without the sort field, is a sample error:
    counted, named by key, and the rest sorted and deduplicated."""
    samples = write_ties(tmp_path / "in", shards=3, per_shard=10, seed=6)
    with wds.TarWriter(str(tmp_path / "in" / "d-03.tar")) as w:
        w.write({"__key__": "no-img", "grp": b"1"})
        w.write({"__key__": "no-grp", "img": b"fresh"})
    src = str(tmp_path / "in" / "d-{00..03}.tar")
    s = htools.sort(src, str(tmp_path / "a" / "o-@2.tar"), key="grp", dedup="img",
                    client=processes_client, quiet=True)
    assert not s.ok and "nothing was written" in " ".join(s.notes)
    assert not list((tmp_path / "a").glob("o-*.tar"))
    s = htools.sort(src, str(tmp_path / "b" / "o-@2.tar"), key="grp", dedup="img",
                    max_errors=2, client=processes_client, quiet=True)
    assert s.ok, s.failures
    adds_up(s, len(samples) + 2)
    assert s.samples_failed == s.sample_errors == 2
    errors = {e["key"]: e["error"] for e in s.errors}
    assert "deduplicate" in errors["no-img"] and "sort by" in errors["no-grp"]
    keep = firsts(samples, "img")
    assert read_wds(outputs(tmp_path / "b")) == sorted(keep, key=lambda x: x["grp"])


def test_a_dedup_task_fails_clearly_on_a_corrupt_run_and_leaves_nothing(tmp_path):
    """The task between the passes, called directly on a damaged first-pass run: a
    failed shard naming the run file, and none of its own runs left behind."""
    from htools.exchange.dedup import dedup_and_partition
    from htools.exchange.keys import KeySpec, first_pass_key
    from htools.exchange.runfile import RunWriter, SampleEncoder, pack_key, record
    from htools.exchange.specs import StageOne, StageTwo

    scratch = tmp_path / "scratch"
    key = KeySpec(mode="field", field="grp", dedup="img")
    key_of = first_pass_key(key, None, 0)
    enc = SampleEncoder(str(scratch), 0)
    recs = sorted((key_of(x), x) for x in write_ties(tmp_path / "in", 1, 40))
    url = str(scratch / "first.bin")
    encoded = [record(pack_key(k), x["__key__"], enc.encode(x)) for k, x in recs]
    with RunWriter(url, 0, 1, {}) as w:
        for rec in encoded:
            w.write(0, rec, 1)
        run = w.close()
    data = bytearray(Path(url).read_bytes())
    at = sum(len(r) for r in encoded[:20])  # the 21st record's header: lengths too long
    data[at:at + 8] = (1 << 40).to_bytes(8, "little")
    Path(url).write_bytes(data)
    one = StageOne(scratch=str(scratch), buckets=2, key=key, memory=1 << 10)
    r = dedup_and_partition([run], 0, 1, 0, one, StageTwo(dedup="img"))
    assert r["status"] == "failed" and "first.bin" in r["error"], r
    assert sorted(p.name for p in scratch.iterdir()) == ["first.bin"]


def test_bad_dedup_arguments_are_refused(tmp_path):
    src, dst = str(tmp_path / "d-@2.tar"), str(tmp_path / "o-@2.tar")
    for bad in ("", "a/b", "__url__", " jpg"):
        with pytest.raises(HtoolsError, match="not a field name"):
            htools.shuffle(src, dst, dedup=bad)
        with pytest.raises(HtoolsError, match="not a field name"):
            htools.sort(src, dst, key="score", dedup=bad)
    with pytest.raises(HtoolsError, match="do not combine"):
        htools.sort(src, dst, merge=True, dedup="__key__")


def test_cli_dedup(tmp_path):
    samples = write_shards(tmp_path / "in", shards=4, per_shard=15, seed=9, distinct=12)
    summary = tmp_path / "s.json"
    ok(run("htsort", str(tmp_path / "in" / "d-{00..03}.tar"), str(tmp_path / "o" / "o-@2.tar"),
           "--key", "name", "--dedup", "name", "--workers", "1", "--summary", str(summary),
           "-q"))
    got = read_wds(outputs(tmp_path / "o"))
    assert got == sorted(firsts(samples, "name"), key=lambda x: x["name"])
    s = json.loads(summary.read_text())
    assert s["samples_dropped"] == s["extra"]["duplicates"] == len(samples) - len(got)
    ties = write_ties(tmp_path / "t", shards=3, per_shard=15, seed=2)
    ok(run("htsort", str(tmp_path / "t" / "d-{00..02}.tar"), str(tmp_path / "p" / "o-@2.tar"),
           "--key", "grp", "--dedup", "img", "--workers", "1", "-q"))
    assert read_wds(outputs(tmp_path / "p")) == sorted(firsts(ties, "img"),
                                                       key=lambda x: x["grp"])
    p = run("htsort", str(tmp_path / "t" / "d-{00..02}.tar"), str(tmp_path / "q" / "o-@2.tar"),
            "--key", "grp", "--dedup", "a/b")
    assert p.returncode != 0 and "not a field name" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = run("htsort", str(tmp_path / "t" / "d-{00..02}.tar"), str(tmp_path / "q" / "o-@2.tar"),
            "--key", "grp", "--dedup", "img", "--dry-run")
    assert p.returncode == 0 and "decide tasks" in p.stdout + p.stderr
