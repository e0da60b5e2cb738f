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

import htools
from helpers import ok, read_wds, run
from htools.errors import HtoolsError


def write_shards(folder: Path, shards: int, per_shard: int, seed: int = 0,
                 distinct: int = 40) -> list[dict]:
    """Shards whose ``img`` takes one of ``distinct`` values: duplicates within a shard
    and across shards; ``pos`` is the sample's place in input order."""
    rng = random.Random(seed)
    values = [rng.randbytes(rng.randrange(1, 700)) for _ in range(distinct)]
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for s in range(shards):
        with wds.TarWriter(str(folder / f"d-{s:02d}.tar")) as w:
            for i in range(per_shard):
                v = rng.randrange(distinct)
                sample = {"__key__": f"s{s:02d}-{i:03d}", "img": values[v],
                          "name": f"v{v:03d}".encode(), "pos": f"{s:02d}-{i:03d}".encode()}
                w.write(sample)
                samples.append(sample)
    return samples


def firsts(samples: list[dict], field: str) -> list[dict]:
    """The first sample of each distinct ``field`` value, in input order."""
    seen, out = set(), []
    for x in samples:
        d = hashlib.sha256(x[field]).digest()
        if d not in seen:
            seen.add(d)
            out.append(x)
    return out


def outputs(folder: Path) -> list[Path]:
    return sorted(folder.glob("o-*.tar"))


def as_set(samples) -> Counter:
    return Counter(tuple(sorted(x.items())) for x in samples)


def adds_up(s, read: int) -> None:
    assert s.samples_read == read
    assert s.samples_read == s.samples_written + s.samples_dropped + s.samples_failed
    assert s.samples_read == s.samples_mapped + s.samples_dropped + s.samples_failed


@pytest.mark.parametrize("levels", [False, True])
def test_shuffle_dedup_keeps_the_first_of_each_value(tmp_path, client, levels):
    samples = write_shards(tmp_path / "in", shards=12, per_shard=20)
    kw = {"fan_in": 2, "memory": 4 << 10} if levels else {}
    s = htools.shuffle(str(tmp_path / "in" / "d-@12.tar"), str(tmp_path / "o" / "o-@3.tar"),
                       seed=4, dedup="img", client=client, quiet=True, **kw)
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


def test_shuffle_dedup_is_byte_identical_for_a_seed_and_whatever_the_fan_in(tmp_path, client):
    write_shards(tmp_path / "in", shards=10, per_shard=15, seed=2)
    digests = {}
    for name, seed, fan in (("a", 7, 2), ("b", 7, 256), ("c", 8, 256)):
        s = htools.shuffle(str(tmp_path / "in" / "d-@10.tar"), str(tmp_path / name / "o-@3.tar"),
                           seed=seed, dedup="name", fan_in=fan, memory=4 << 10, client=client,
                           quiet=True)
        assert s.ok, s.failures
        digests[name] = [hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in outputs(tmp_path / name)]
    assert digests["a"] == digests["b"] != digests["c"]


@pytest.mark.parametrize("levels", [False, True])
def test_sort_dedup_by_its_key_keeps_the_first_in_input_order(tmp_path, client, levels):
    samples = write_shards(tmp_path / "in", shards=12, per_shard=20, seed=1)
    kw = {"fan_in": 2, "memory": 4 << 10} if levels else {}
    s = htools.sort(str(tmp_path / "in" / "d-@12.tar"), str(tmp_path / "o" / "o-@4.tar"),
                    key="name", dedup="name", client=client, quiet=True, **kw)
    assert s.ok, s.failures
    if levels:
        assert len(s.extra["levels"]) >= 2
    keep = firsts(samples, "name")
    got = read_wds(outputs(tmp_path / "o"))
    assert got == sorted(keep, key=lambda x: x["name"])  # sorted, each value's first kept
    adds_up(s, len(samples))
    assert s.samples_dropped == s.extra["duplicates"] == len(samples) - len(keep)


def test_sort_dedup_numeric_key_compares_bytes(tmp_path, client):
    """Equal numbers written differently ("7", "07") are different bytes: both stay."""
    folder = tmp_path / "in"
    folder.mkdir()
    rows = [("a", b"7"), ("b", b"07"), ("c", b"7"), ("d", b"3"), ("e", b"07"), ("f", b"3")]
    for n, part in enumerate((rows[:3], rows[3:])):
        with wds.TarWriter(str(folder / f"d-{n}.tar")) as w:
            for k, v in part:
                w.write({"__key__": k, "n": v})
    s = htools.sort(str(folder / "d-@2.tar"), str(tmp_path / "o" / "o-@1.tar"), key="n",
                    key_type="int", dedup="n", client=client, quiet=True)
    assert s.ok, s.failures
    got = read_wds(outputs(tmp_path / "o"))
    assert [(x["__key__"], x["n"]) for x in got] == [("d", b"3"), ("a", b"7"), ("b", b"07")]
    assert s.samples_dropped == s.extra["duplicates"] == 3


def test_dedup_by_key(tmp_path, client):
    folder = tmp_path / "in"
    folder.mkdir()
    for n in range(3):  # every shard has the same keys: two of every three are duplicates
        with wds.TarWriter(str(folder / f"d-{n}.tar")) as w:
            for i in range(10):
                w.write({"__key__": f"k{i}", "src": str(n).encode()})
    s = htools.shuffle(str(folder / "d-@3.tar"), str(tmp_path / "o" / "o-@2.tar"),
                       dedup="__key__", client=client, quiet=True)
    assert s.ok, s.failures
    got = read_wds(outputs(tmp_path / "o"))
    assert sorted(x["__key__"] for x in got) == [f"k{i}" for i in range(10)]
    assert {x["src"] for x in got} == {b"0"}  # the first shard's
    assert s.samples_dropped == 20


def test_a_missing_field_is_a_sample_error(tmp_path, client):
    samples = write_shards(tmp_path / "in", shards=3, per_shard=10, seed=5)
    with wds.TarWriter(str(tmp_path / "in" / "d-03.tar")) as w:
        w.write({"__key__": "lonely", "name": b"x"})  # no img
        w.write({"__key__": "dup", "img": samples[0]["img"], "name": b"y"})
    src = str(tmp_path / "in" / "d-{00..03}.tar")
    s = htools.shuffle(src, str(tmp_path / "a" / "o-@2.tar"), dedup="img", client=client,
                       quiet=True)
    assert not s.ok and s.shards_failed  # --max-errors 0: the shard fails
    assert "no field 'img' to deduplicate by" in json.dumps(s.failures)
    s = htools.shuffle(src, str(tmp_path / "b" / "o-@2.tar"), dedup="img", max_errors=1,
                       client=client, quiet=True)
    assert s.ok, s.failures
    adds_up(s, len(samples) + 2)
    assert s.samples_failed == s.sample_errors == 1
    assert s.errors[0]["key"] == "lonely" and "deduplicate" in s.errors[0]["error"]
    keep = firsts(samples, "img")
    assert s.samples_written == len(keep) and s.extra["duplicates"] == len(samples) + 1 - len(keep)


def test_bad_dedup_arguments_are_refused(tmp_path):
    src, dst = str(tmp_path / "d-@2.tar"), str(tmp_path / "o-@2.tar")
    for bad in ("", "a/b", "__url__", " jpg"):
        with pytest.raises(HtoolsError, match="not a field name"):
            htools.shuffle(src, dst, dedup=bad)
    with pytest.raises(HtoolsError, match="needs --key img"):
        htools.sort(src, dst, key="score", dedup="img")
    with pytest.raises(HtoolsError, match="needs --key img"):
        htools.sort(src, dst, dedup="img")
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
    p = run("htsort", str(tmp_path / "in" / "d-{00..03}.tar"), str(tmp_path / "p" / "o-@2.tar"),
            "--key", "name", "--dedup", "img")
    assert p.returncode != 0 and "needs --key img" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
