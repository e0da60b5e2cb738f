"""htshuffle and htsort end to end: exact multisets, order across output boundaries,
reduce over spills, --merge, determinism, edge cases, worker death, bounded memory."""

from __future__ import annotations

import io
import json
import random
import uuid
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from helpers import KILL_IN_STAGE_1, KILL_IN_STAGE_2, make_shards, ok, read_wds, run

import htools


def outputs(folder: Path, prefix: str) -> list[Path]:
    return sorted(folder.glob(f"{prefix}-*.tar"))


def as_multiset(samples) -> Counter:
    return Counter(tuple(sorted(s.items())) for s in samples)


def write_shard(path: Path, samples: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as w:
        for s in samples:
            w.write(s)


# ------------------------------------------------------------ CLI, real setups --

def test_shuffle_and_sort_cli(tmp_path, cluster_args, place):
    base, local = place
    data = make_shards(local, shards=4, per_shard=30)
    ok(run("htshuffle", f"{base}data-@4.tar", f"{base}shuf-@3.tar", "--seed", "5",
           *cluster_args, "-q"))
    shuffled = read_wds(outputs(local, "shuf"))
    assert as_multiset(shuffled) == as_multiset(data.values())
    for out in outputs(local, "shuf"):  # every output draws from all inputs
        keys = [s["__key__"] for s in read_wds([out])]
        assert {k.split("/")[0] for k in keys} == {"s0", "s1", "s2", "s3"}
        assert keys != sorted(keys)
    assert not list(local.glob("_htools_tmp/*")), "scratch runs are deleted on success"

    ok(run("htsort", f"{base}shuf-@3.tar", f"{base}sorted-@2.tar", *cluster_args, "-q"))
    ordered = [s["__key__"] for s in read_wds(outputs(local, "sorted"))]
    assert ordered == sorted(data)  # across the output boundary too
    assert as_multiset(read_wds(outputs(local, "sorted"))) == as_multiset(data.values())


# ------------------------------------------------------------------ shuffle --

def test_shuffle_is_deterministic_per_seed(tmp_path, processes_client):
    make_shards(tmp_path / "in", shards=3, per_shard=40)
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        assert htools.shuffle(str(tmp_path / "in" / "data-@3.tar"),
                              str(tmp_path / name / "o-@4.tar"), seed=seed, client=processes_client,
                              quiet=True).ok
    read = lambda d: [p.read_bytes() for p in outputs(tmp_path / d, "o")]  # noqa: E731
    assert read("a") == read("b")
    assert read("a") != read("c")


def test_shuffle_maxcount_and_memory_spills(tmp_path, processes_client):
    data = make_shards(tmp_path / "in", shards=3, per_shard=100)
    s = htools.shuffle(str(tmp_path / "in" / "data-@3.tar"), str(tmp_path / "o" / "o-%03d.tar"),
                       maxcount=70, memory=64 << 10, client=processes_client, quiet=True)
    assert s.ok and s.samples_read == 300 and s.samples_written == 300
    outs = outputs(tmp_path / "o", "o")
    assert len(outs) == 5  # ceil(300 / 70)
    assert [len(read_wds([p])) for p in outs] == [70, 70, 70, 70, 20]  # exactly --maxcount
    assert as_multiset(read_wds(outs)) == as_multiset(data.values())


def test_more_outputs_than_samples_and_empty_inputs(tmp_path, processes_client):
    write_shard(tmp_path / "in" / "e-0.tar", [])
    write_shard(tmp_path / "in" / "e-1.tar", [{"__key__": "only", "txt": b"one"}])
    s = htools.shuffle(str(tmp_path / "in" / "e-@2.tar"), str(tmp_path / "o" / "o-@5.tar"),
                       client=processes_client, quiet=True)
    assert s.ok and s.shards_done == 5
    outs = outputs(tmp_path / "o", "o")
    assert len(outs) == 5
    assert [s for p in outs for s in read_wds([p])] == [{"__key__": "only", "txt": b"one"}]
    s = htools.sort(str(tmp_path / "in" / "e-0.tar"), str(tmp_path / "o2" / "o-@2.tar"),
                    client=processes_client, quiet=True)
    assert s.ok and [read_wds([p]) for p in outputs(tmp_path / "o2", "o")] == [[], []]


# --------------------------------------------------------------------- sort --

def test_sort_by_numeric_field_balanced_and_reverse(tmp_path, processes_client):
    rng = random.Random(3)
    for i in range(4):
        write_shard(tmp_path / "in" / f"d-{i}.tar",
                    [{"__key__": f"{i}-{j}", "score": str(rng.uniform(-1e3, 1e3)).encode()}
                     for j in range(500)])
    s = htools.sort(str(tmp_path / "in" / "d-@4.tar"), str(tmp_path / "o" / "o-@4.tar"),
                    key="score", key_type="float", client=processes_client, quiet=True)
    assert s.ok
    per_output = [[float(x["score"]) for x in read_wds([p])] for p in outputs(tmp_path / "o", "o")]
    flat = [v for out in per_output for v in out]
    assert flat == sorted(flat) and len(flat) == 2000
    mean = 2000 / 4
    assert max(len(o) for o in per_output) <= 1.5 * mean

    s = htools.sort(str(tmp_path / "in" / "d-@4.tar"), str(tmp_path / "r" / "o-@3.tar"),
                    key="score", key_type="float", reverse=True, client=processes_client, quiet=True)
    flat = [float(x["score"]) for x in read_wds(outputs(tmp_path / "r", "o"))]
    assert flat == sorted(flat, reverse=True)


def test_equal_keys_keep_input_order_and_non_ascii_keys(tmp_path, processes_client):
    names = ["émile", "zoë", "ändern", "日本", "abc", "Ωmega"]
    for i in range(3):
        write_shard(tmp_path / "in" / f"d-{i}.tar",
                    [{"__key__": f"{n}-{i}-{j}", "grp": n.encode(), "pos": f"{i}-{j}".encode()}
                     for j in range(4) for n in names])
    s = htools.sort(str(tmp_path / "in" / "d-@3.tar"), str(tmp_path / "o" / "o-@3.tar"),
                    key="grp", client=processes_client, quiet=True, memory=4096)
    assert s.ok
    got = read_wds(outputs(tmp_path / "o", "o"))
    assert [x["grp"].decode() for x in got] == [n for n in sorted(names) for _ in range(12)]
    for n in names:  # stable: input order within equal keys, across spills and shards
        assert [x["pos"] for x in got if x["grp"] == n.encode()] == \
            [f"{i}-{j}".encode() for i in range(3) for j in range(4)]
    by_key = htools.sort(str(tmp_path / "in" / "d-@3.tar"), str(tmp_path / "k" / "o-@2.tar"),
                         client=processes_client, quiet=True)
    keys = [x["__key__"] for x in read_wds(outputs(tmp_path / "k", "o"))]
    assert by_key.ok and keys == sorted(keys) and len(keys) == 72


REDUCE = """
def sort_key(sample):
    return sample["word"].decode()

def reduce_samples(key, samples):
    return {"__key__": key, "count": str(len(samples)).encode(),
            "shards": ",".join(sorted({s["src"].decode() for s in samples})).encode()}
"""


def test_reduce_sees_whole_groups_across_shards_and_spills(tmp_path, processes_client):
    rng = random.Random(1)
    words = [f"w{i:03d}" for i in range(60)]
    expected = Counter()
    for i in range(4):
        chosen = [rng.choice(words) for _ in range(300)]
        expected.update(chosen)
        write_shard(tmp_path / "in" / f"d-{i}.tar",
                    [{"__key__": f"{i}-{j}", "word": w.encode(), "src": str(i).encode(),
                      "pad": rng.randbytes(200)} for j, w in enumerate(chosen)])
    script = tmp_path / "reduce.py"
    script.write_text(REDUCE)
    summary = tmp_path / "s.json"
    ok(run("htsort", tmp_path / "in" / "d-@4.tar", tmp_path / "o" / "o-@3.tar", "-p", script,
           "--memory", "16K", "--workers", "2", "--summary", summary, "-q"))
    got = read_wds(outputs(tmp_path / "o", "o"))
    assert {x["__key__"]: int(x["count"]) for x in got} == dict(expected)
    assert [x["__key__"] for x in got] == sorted(expected)
    js = json.loads(summary.read_text())
    assert js["samples_read"] == 1200 and js["samples_written"] == len(expected)
    assert js["extra"]["intermediate_merges"] > 0  # more runs than one merge pass may open


def test_merge_joins_two_sets_and_repairs_non_contiguous_tars(tmp_path, processes_client):
    images = {f"k{i:03d}": {"__key__": f"k{i:03d}", "jpg": bytes([i]) * 50} for i in range(40)}
    write_shard(tmp_path / "img" / "i-0.tar", list(images.values())[:20])
    write_shard(tmp_path / "img" / "i-1.tar", list(images.values())[20:])
    labels = [{"__key__": f"k{i:03d}", "cls": str(i % 3).encode()} for i in range(39, -1, -1)]
    # labels arrive in reverse, split so that one key's fields are not contiguous
    write_shard(tmp_path / "lab" / "l-0.tar", labels[:25])
    write_shard(tmp_path / "lab" / "l-1.tar", labels[25:] + [{"__key__": "k001", "txt": b"late"}])
    p = ok(run("htsort", tmp_path / "img" / "i-@2.tar", tmp_path / "lab" / "l-@2.tar",
               tmp_path / "j" / "j-@2.tar", "--merge", "--workers", "2"))
    assert "samples 81 read, 40 written" in p.stderr
    got = read_wds(outputs(tmp_path / "j", "j"))
    assert [x["__key__"] for x in got] == sorted(images)
    for x in got:
        i = int(x["__key__"][1:])
        expect = {"__key__": x["__key__"], "jpg": bytes([i]) * 50, "cls": str(i % 3).encode()}
        if i == 1:
            expect["txt"] = b"late"
        assert x == expect


def test_merge_conflict_names_the_key(tmp_path):
    write_shard(tmp_path / "a" / "a.tar", [{"__key__": "x1", "cls": b"1"}])
    write_shard(tmp_path / "b" / "b.tar", [{"__key__": "x1", "cls": b"2"}])
    p = run("htsort", tmp_path / "a" / "a.tar", tmp_path / "b" / "b.tar", tmp_path / "o" / "o.tar",
            "--merge", "--workers", "1")
    assert p.returncode == 1
    assert "key 'x1' has two different values for field 'cls'" in p.stderr
    assert not (tmp_path / "o" / "o.tar").exists()


def test_duplicate_keys_without_merge_are_refused(tmp_path):
    write_shard(tmp_path / "a" / "a.tar", [{"__key__": "x1", "cls": b"1"}])
    write_shard(tmp_path / "b" / "b.tar", [{"__key__": "x1", "txt": b"2"}])
    p = run("htsort", tmp_path / "a" / "a.tar", tmp_path / "b" / "b.tar", tmp_path / "o" / "o.tar",
            "--workers", "1")
    assert p.returncode == 1 and "use --merge" in p.stderr


def test_sample_larger_than_memory_budget(tmp_path, processes_client):
    big = random.Random(0).randbytes(3 << 20)
    write_shard(tmp_path / "in" / "d-0.tar", [{"__key__": "a", "bin": b"small"},
                                              {"__key__": "b", "bin": big},
                                              {"__key__": "c", "bin": b"small"}])
    s = htools.sort(str(tmp_path / "in" / "d-0.tar"), str(tmp_path / "o" / "o-@2.tar"),
                    memory=1 << 20, client=processes_client, quiet=True)
    assert s.ok
    got = read_wds(outputs(tmp_path / "o", "o"))
    assert [x["__key__"] for x in got] == ["a", "b", "c"] and got[1]["bin"] == big


def test_bad_sort_key_is_named(tmp_path):
    write_shard(tmp_path / "in" / "d.tar", [{"__key__": "a", "n": b"12"},
                                            {"__key__": "b", "n": b"twelve"}])
    p = run("htsort", tmp_path / "in" / "d.tar", tmp_path / "o" / "o.tar", "--key", "n",
            "--key-type", "int", "--workers", "1")
    assert p.returncode == 1
    assert "'b'" in p.stderr and "'twelve' is not an int" in p.stderr
    assert not (tmp_path / "o" / "o.tar").exists()


# ----------------------------------------------------------- worker death --

@pytest.mark.parametrize("body", [KILL_IN_STAGE_1, KILL_IN_STAGE_2], ids=["stage1", "stage2"])
def test_worker_killed_in_each_stage_result_still_exact(tmp_path, body, cluster_args):
    data = make_shards(tmp_path / "in", shards=3, per_shard=20)
    mark = tmp_path / "killed"
    script = tmp_path / "s.py"
    script.write_text(body.format(mark=str(mark)))
    ok(run("htsort", tmp_path / "in" / "data-@3.tar", tmp_path / "o" / "o-@2.tar", "-p", script,
           "--scratch", tmp_path / "scratch", *cluster_args, "-q"))
    assert mark.exists()
    got = read_wds(outputs(tmp_path / "o", "o"))
    assert [x["__key__"] for x in got] == sorted(data)
    assert as_multiset(got) == as_multiset(data.values())
    assert not list((tmp_path / "scratch").glob("**/*.bin"))


# ----------------------------------------------------------------- memory --

def test_memory_stays_within_budget_on_data_four_times_larger(tmp_path):
    budget = 24 << 20
    rng = random.Random(7)
    total = 0
    for i in range(4):
        samples = []
        for j in range(1600):  # 1600 x 16 KiB = 25 MiB per shard, 100 MiB in all
            samples.append({"__key__": f"{rng.getrandbits(48):012x}", "bin": rng.randbytes(16 << 10)})
            total += 16 << 10
        write_shard(tmp_path / "in" / f"d-{i}.tar", samples)
    assert total >= 4 * budget
    summary = tmp_path / "s.json"
    ok(run("htsort", tmp_path / "in" / "d-@4.tar", tmp_path / "o" / "o-@2.tar",
           "--memory", str(budget), "--workers", "2", "--summary", summary, "-q"))
    js = json.loads(summary.read_text())
    assert js["samples_written"] == 6400
    growth = js["extra"]["peak_rss"] - js["extra"]["rss_start_min"]
    assert growth < budget + (40 << 20), f"workers grew by {growth >> 20} MiB"


def test_missing_input_fails_before_writing_and_cleans_scratch(tmp_path):
    make_shards(tmp_path / "in", shards=3, per_shard=10)
    (tmp_path / "in" / "data-2.tar").unlink()
    p = run("htshuffle", tmp_path / "in" / "data-@3.tar", tmp_path / "o" / "o-@2.tar",
            "--scratch", tmp_path / "scratch", "--workers", "2")
    assert p.returncode == 1
    assert p.stderr.strip() == f"Error: input {tmp_path}/in/data-2.tar does not exist"
    assert not (tmp_path / "o").exists() and not any((tmp_path / "scratch").glob("**/*.bin"))

def test_existing_outputs_refused_resume_skips(tmp_path, processes_client, monkeypatch):
    import glob
    import tempfile

    # the default scratch is made here, in the client: in a temp dir of this test's own,
    # where no other job on the machine (another pytest worker) makes one
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    temps = set(glob.glob(f"{tempfile.gettempdir()}/htools-scratch-*"))
    made, mkdtemp = [], tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: made.append(mkdtemp(**kw)) or made[-1])
    make_shards(tmp_path / "in", shards=2, per_shard=10)
    src, dst = str(tmp_path / "in" / "data-@2.tar"), str(tmp_path / "o" / "o-@2.tar")
    assert htools.shuffle(src, dst, client=processes_client, quiet=True).ok
    first = [p.read_bytes() for p in outputs(tmp_path / "o", "o")]
    with pytest.raises(htools.HtoolsError, match="already exist"):
        htools.shuffle(src, dst, client=processes_client, quiet=True)
    (tmp_path / "o" / "o-1.tar").unlink()
    s = htools.shuffle(src, dst, client=processes_client, quiet=True, resume=True)
    assert s.ok and s.shards_done == 1 and s.shards_skipped == 1
    assert [p.read_bytes() for p in outputs(tmp_path / "o", "o")] == first  # same seed, same bytes
    assert set(glob.glob(f"{tempfile.gettempdir()}/htools-scratch-*")) == temps  # removed
    assert made and all(m.startswith(str(tmp_path / "tmp")) for m in made)  # it made them


def test_scratch_on_s3_uses_the_jobs_storage_options(tmp_path, s3_server, processes_client):
    """Run files go to S3 (moto) with the endpoint and credentials given to the job."""
    data = make_shards(tmp_path / "in", shards=2, per_shard=15)
    scratch = f"s3://{s3_server.bucket}/scratch-{uuid.uuid4().hex[:6]}/"
    s = htools.sort(str(tmp_path / "in" / "data-@2.tar"), str(tmp_path / "o" / "o-@2.tar"),
                    scratch=scratch, storage_options=s3_server.options, client=processes_client,
                    quiet=True, memory=8 << 10)
    assert s.ok, s.failures
    assert [x["__key__"] for x in read_wds(outputs(tmp_path / "o", "o"))] == sorted(data)
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server.options["s3"])
    assert fs.find(scratch) == []  # runs were written there, and deleted at the end


def test_counts_add_up_with_merge_and_reduce(tmp_path, processes_client):
    write_shard(tmp_path / "a" / "a.tar", [{"__key__": f"k{i}", "x": b"1"} for i in range(10)])
    write_shard(tmp_path / "b" / "b.tar", [{"__key__": f"k{i}", "y": b"2"} for i in range(10)])
    s = htools.sort([str(tmp_path / "a" / "a.tar"), str(tmp_path / "b" / "b.tar")],
                    str(tmp_path / "o" / "o-@2.tar"), merge=True, client=processes_client, quiet=True)
    assert (s.samples_read, s.samples_written, s.samples_dropped, s.samples_failed) == (20, 10, 0, 0)
    assert s.samples_read == s.samples_mapped + s.samples_dropped + s.samples_failed \
        + s.samples_merged + s.samples_reduced
    script = tmp_path / "r.py"
    script.write_text("def reduce_samples(key, samples):\n"
                      "    if key == 'k3':\n        return None\n"
                      "    if key == 'k4':\n        raise ValueError('no')\n"
                      "    return {'n': str(len(samples))}\n")
    s = htools.sort([str(tmp_path / "a" / "a.tar"), str(tmp_path / "b" / "b.tar")],
                    str(tmp_path / "r" / "o-@2.tar"), script=str(script), max_errors=1,
                    client=processes_client, quiet=True)
    assert s.ok
    assert (s.samples_read, s.samples_written, s.samples_dropped, s.samples_failed) == (20, 8, 2, 2)
    assert s.samples_read == s.samples_mapped + s.samples_dropped + s.samples_failed \
        + s.samples_merged + s.samples_reduced


def test_nan_and_non_utf8_keys(tmp_path, processes_client):
    write_shard(tmp_path / "in" / "f.tar", [{"__key__": "a", "v": b"1.5"}, {"__key__": "b", "v": b"nan"}])
    s = htools.sort(str(tmp_path / "in" / "f.tar"), str(tmp_path / "o" / "o.tar"), key="v",
                    key_type="float", client=processes_client, quiet=True)
    assert not s.ok and "NaN" in s.failures[0]["error"] and "'b'" in s.failures[0]["error"]
    import tarfile

    with tarfile.open(tmp_path / "in" / "latin1.tar", "w", format=tarfile.GNU_FORMAT,
                      encoding="latin-1") as tf:
        for name in ["caf\xe9.txt", "abc.txt"]:
            info = tarfile.TarInfo(name)
            info.size = 2
            tf.addfile(info, io.BytesIO(b"hi"))
    s = htools.shuffle(str(tmp_path / "in" / "latin1.tar"), str(tmp_path / "l" / "o.tar"),
                       client=processes_client, quiet=True)
    assert s.ok and s.samples_written == 2
    names = sorted(tarfile.open(tmp_path / "l" / "o.tar", encoding="latin-1").getnames())
    assert names == ["abc.txt", "caf\xe9.txt"]  # the original bytes came back


def test_dry_run_prints_the_plan_even_when_outputs_exist(tmp_path, processes_client):
    make_shards(tmp_path / "in", shards=2, per_shard=5)
    src, dst = str(tmp_path / "in" / "data-@2.tar"), str(tmp_path / "o" / "o-@2.tar")
    assert htools.shuffle(src, dst, client=processes_client, quiet=True).ok
    p = run("htshuffle", src, dst, "--dry-run", "--resume")
    assert p.returncode == 0 and p.stdout.count("(exists, skipped)") == 2
    assert "stage 1: 2 input shards" in p.stdout
