"""The multi-level exchange: a small fan-in forces merge levels on small data; results
are read back with independent readers (webdataset, GNU tar) and checked for the
multiset, the order, stability, joins and reduce."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from collections import Counter
from pathlib import Path

import webdataset as wds
from helpers import ok, read_wds, run
from helpers import write_grouped as write_shards

import htools
from htools.exchange import plan


def outputs(folder: Path) -> list[Path]:
    return sorted(folder.glob("o-*.tar"))


def test_sort_through_three_merge_levels_is_sorted_stable_and_complete(tmp_path, processes_client,
                                                                         gnu_tar):
    samples = write_shards(tmp_path / "in", shards=24, per_shard=12)
    s = htools.sort(str(tmp_path / "in" / "d-@24.tar"), str(tmp_path / "o" / "o-@5.tar"),
                    key="grp", fan_in=2, memory=4 << 10, client=processes_client, quiet=True)
    assert s.ok, s.failures
    assert len(s.extra["levels"]) >= 3  # stage 1, three merge levels or more, the writes
    assert s.extra["runs"] > 24 and s.extra["max_runs_per_write"] <= 2
    assert all(level["runs_per_task"] <= 2 for level in s.extra["levels"])
    got = read_wds(outputs(tmp_path / "o"))
    assert s.samples_read == s.samples_written == len(samples) == len(got)
    assert Counter(tuple(sorted(x.items())) for x in got) == \
        Counter(tuple(sorted(x.items())) for x in samples)
    # sorted by grp; equal grp keep input order (shard, then index): stability
    assert [(x["grp"], x["pos"]) for x in got] == sorted((x["grp"], x["pos"]) for x in samples)
    names = [n for p in outputs(tmp_path / "o") for n in subprocess.run(
        [gnu_tar, "-tf", str(p)], capture_output=True, text=True, check=True).stdout.split()]
    assert len(names) == 3 * len(samples)  # every member, as GNU tar sees it


def test_shuffle_bytes_do_not_depend_on_fan_in(tmp_path, processes_client):
    samples = write_shards(tmp_path / "in", shards=20, per_shard=10, seed=3)
    digests, levels = [], []
    for fan in (2, 256):
        dst = tmp_path / f"f{fan}"
        s = htools.shuffle(str(tmp_path / "in" / "d-@20.tar"), str(dst / "o-@4.tar"), seed=5,
                           fan_in=fan, memory=4 << 10, client=processes_client, quiet=True)
        assert s.ok and s.samples_written == len(samples)
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest() for p in outputs(dst)])
        levels.append(len(s.extra["levels"]))
    assert levels[0] >= 3 and levels[1] == 0 and digests[0] == digests[1]
    got = read_wds(outputs(tmp_path / "f2"))
    assert sorted(x["__key__"] for x in got) == sorted(x["__key__"] for x in samples)
    assert [x["__key__"] for x in got] != sorted(x["__key__"] for x in got)  # shuffled


REDUCE = """
def sort_key(sample):
    return sample["grp"].decode()

def reduce_samples(key, samples):
    return {"__key__": "g" + key, "n": str(len(samples)).encode(),
            "first": samples[0]["pos"], "last": samples[-1]["pos"]}
"""


def test_reduce_and_merge_see_whole_groups_across_levels(tmp_path, processes_client):
    samples = write_shards(tmp_path / "in", shards=16, per_shard=10, seed=7)
    script = tmp_path / "r.py"
    script.write_text(REDUCE)
    summary = tmp_path / "s.json"
    ok(run("htsort", tmp_path / "in" / "d-@16.tar", tmp_path / "o" / "o-@3.tar", "-p", script,
           "--fan-in", "2", "--memory", "4K", "--workers", "2", "--summary", summary, "-q"))
    got = {x["__key__"]: x for x in read_wds(outputs(tmp_path / "o"))}
    groups: dict[str, list[bytes]] = {}
    for x in samples:
        groups.setdefault(x["grp"].decode(), []).append(x["pos"])
    assert set(got) == {"g" + g for g in groups}
    for g, pos in groups.items():  # whole groups, in input order
        assert got["g" + g]["n"] == str(len(pos)).encode()
        assert (got["g" + g]["first"], got["g" + g]["last"]) == (min(pos), max(pos))
    js = json.loads(summary.read_text())
    assert len(js["extra"]["levels"]) >= 2
    assert js["samples_read"] == len(samples) == js["samples_mapped"] + js["samples_dropped"]


def test_merge_joins_across_levels(tmp_path, processes_client):
    keys = [f"k{i:03d}" for i in range(60)]
    a = [{"__key__": k, "jpg": k.encode() * 3} for k in keys]
    b = [{"__key__": k, "cls": str(i % 4).encode()} for i, k in enumerate(keys)]
    random.Random(1).shuffle(b)
    for name, part in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        for s in range(6):
            with wds.TarWriter(str(tmp_path / name / f"{name}-{s}.tar")) as w:
                for x in part[s * 10:(s + 1) * 10]:
                    w.write(x)
    s = htools.sort([str(tmp_path / "a" / "a-@6.tar"), str(tmp_path / "b" / "b-@6.tar")],
                    str(tmp_path / "o" / "o-@4.tar"), merge=True, fan_in=2, memory=2 << 10,
                    client=processes_client, quiet=True)
    assert s.ok and len(s.extra["levels"]) >= 2
    got = read_wds(outputs(tmp_path / "o"))
    assert [x["__key__"] for x in got] == keys
    assert all(x["jpg"] == x["__key__"].encode() * 3 and "cls" in x for x in got)


def test_planner_levels_divide_runs_by_the_fan_in():
    assert plan.levels(10, 4, fan=16, min_tasks=4) == []
    assert len(plan.levels(100_000, 100_000, fan=1000, min_tasks=4)) == 1
    assert len(plan.levels(2_000_000, 100_000, fan=1000, min_tasks=4)) == 2
    shape = plan.merge_shape(100_000, 100_000, 1000, 4)
    assert (shape.groups, shape.parts) == (100, 100)  # 10^4 tasks of 1000 ranges each
    assert len(plan.levels(24, 5, fan=2, min_tasks=4)) >= 3
    assert plan.merge_shape(3, 8, 4, 4) is None


def test_planner_groups_small_inputs_and_chunks_outputs():
    assert plan.inputs_per_task(16_384, 10_000, 256 << 20, 2) == 16_384 // 8
    assert plan.inputs_per_task(1000, 1 << 30, 256 << 20, 2) == 1
    assert plan.inputs_per_task(1000, None, 256 << 20, 2) == 1
    assert plan.write_chunks([0, 1, 2, 4, 5, 6, 7], 3) == [[0, 1, 2], [4, 5, 6], [7]]
    assert plan.outputs_per_task(16_384, 16_384 * 1000, 256 << 20, 2) == 1024
    assert plan.outputs_per_task(10, 10 << 30, 256 << 20, 2) == 1
    assert plan.bucket_count(100_000, shuffle=True) == 100_000
    assert plan.bucket_count(100_000, shuffle=False) == 100_000
    assert plan.bucket_count(8, shuffle=False) == 128
    assert plan.fan_in(16 << 10) == plan.MIN_FAN_IN and plan.fan_in(1 << 40) == plan.MAX_FAN_IN


BAD_KEY = """
def reduce_samples(key, samples):
    if key == "k0137":
        raise ValueError("cannot reduce k0137")
    return samples[0]
"""


def test_one_failed_output_of_a_shared_write_task_loses_only_its_own_samples(tmp_path, processes_client):
    keys = [f"k{i:04d}" for i in range(320)]
    random.Random(4).shuffle(keys)
    (tmp_path / "in").mkdir()
    for s in range(4):
        with wds.TarWriter(str(tmp_path / "in" / f"d-{s}.tar")) as w:
            for k in keys[s * 80:(s + 1) * 80]:
                w.write({"__key__": k, "txt": k.encode()})
    script = tmp_path / "bad.py"
    script.write_text(BAD_KEY)
    s = htools.sort(str(tmp_path / "in" / "d-@4.tar"), str(tmp_path / "o" / "o-@32.tar"),
                    script=str(script), client=processes_client, quiet=True)
    assert s.extra["outputs_per_task"] > 1  # outputs share write tasks
    assert (s.shards_done, s.shards_failed) == (31, 1)
    assert "cannot reduce k0137" in s.failures[0]["error"]
    got = [x["__key__"] for x in read_wds(outputs(tmp_path / "o"))]
    assert got == sorted(got) and "k0137" not in got
    lost = 320 - len(got)
    assert 1 <= lost <= 20  # one output's worth (320 / 32 on average)
    assert s.samples_read == 320 and s.samples_failed == lost and s.samples_written == len(got)
    assert s.samples_read == s.samples_mapped + s.samples_dropped + s.samples_failed


def test_many_tiny_inputs_are_grouped_per_task_and_all_written(tmp_path, processes_client):
    """With the default memory budget, 48 tiny shards go to a few stage-1 tasks; the job
    must still write every output (stage 1 counts tasks, not inputs)."""
    samples = write_shards(tmp_path / "in", shards=48, per_shard=3, seed=9)
    s = htools.shuffle(str(tmp_path / "in" / "d-{00..47}.tar"), str(tmp_path / "o" / "o-@48.tar"),
                       client=processes_client, quiet=True)
    assert s.ok and s.extra["inputs_per_task"] > 1 and s.extra["stage1_tasks"] < 48
    assert s.shards_done == 48 and s.samples_written == len(samples)
    got = read_wds(outputs(tmp_path / "o"))
    assert sorted(x["__key__"] for x in got) == sorted(x["__key__"] for x in samples)
