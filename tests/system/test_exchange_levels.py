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
    assert js["samples_read"] == len(samples) == js["samples_written"] + js["samples_dropped"] \
        + js["samples_failed"] + js["samples_merged"] + js["samples_reduced"]  # they add up
    assert js["samples_reduced"] == len(samples) - len(groups)


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


def tasks_per_level(runs: int, outputs: int, fan: int, min_tasks: int) -> list[int]:
    levels, _parts = plan.merge_levels(runs, outputs, fan, min_tasks)
    return [lv.tasks for lv in levels]


def test_planner_levels_divide_runs_by_the_fan_in():
    assert tasks_per_level(10, 4, fan=16, min_tasks=4) == []
    assert len(tasks_per_level(100_000, 100_000, fan=1000, min_tasks=4)) == 1
    assert len(tasks_per_level(2_000_000, 100_000, fan=1000, min_tasks=4)) == 2
    shape = plan.merge_shape(100_000, 100_000, 1000, 4)
    assert (shape.groups, shape.parts) == (100, 100)  # 10^4 tasks of 1000 ranges each
    assert len(tasks_per_level(24, 5, fan=2, min_tasks=4)) >= 3
    assert plan.merge_shape(3, 8, 4, 4) is None


def test_a_level_cuts_runs_into_groups_and_outputs_into_parts():
    level = plan.next_level([(0, 8, 10)], fan=4, min_tasks=4)
    (m,) = level.merges
    assert m.groups == ((0, 4), (4, 7), (7, 10)) and m.parts == ((0, 4), (4, 8))
    assert (level.tasks, level.runs_per_task, level.ranges) == (6, 4, 20)
    assert level.after() == [(0, 4, 3), (4, 8, 3)]  # one run per merge task
    assert plan.next_level(level.after(), fan=4, min_tasks=4) is None
    # a part that reads few runs passes through; the others are merged
    level = plan.next_level([(0, 2, 3), (2, 4, 9)], fan=4, min_tasks=2)
    assert level.merges[0].groups == () and level.after()[0] == (0, 2, 3)
    assert level.tasks == 3 and level.after()[1:] == [(2, 4, 3)]


def test_one_plan_for_the_run_the_dry_run_and_the_model():
    p = plan.plan_exchange(inputs=100_000, shard_bytes=1e9, outputs=100_000, memory=4 << 30,
                           workers=100, shuffle=False, fan=256)
    assert (p.inputs_per_task, p.stage1_tasks, p.runs) == (4, 25_000, 25_000)
    assert [lv.tasks for lv in p.levels] == tasks_per_level(25_000, 100_000, 256, 200)
    assert p.passes == 3 and p.scratch_copies == 2 and p.first_pass_buckets == 0
    assert p.runs_per_write <= 256 and p.outputs_per_task == 4
    assert p.tasks == p.stage1_tasks + p.merge_tasks + p.write_tasks
    small = plan.plan_exchange(inputs=8, shard_bytes=1000, outputs=4, memory=64 << 20,
                               workers=2, shuffle=True)
    assert (small.levels, small.scratch_copies, small.write_tasks, small.buckets) == ((), 1, 4, 4)
    assert plan.plan_exchange(inputs=8, shard_bytes=1000, outputs=4, memory=64 << 20, workers=2,
                              shuffle=True, beside=True).scratch_copies == 2
    dedup = plan.plan_exchange(inputs=100_000, shard_bytes=1e9, outputs=100_000,
                               memory=4 << 30, workers=100, shuffle=False, fan=256,
                               dedup_pass=True)
    assert dedup.first_pass_buckets == 25_000 and len(dedup.first_pass_levels) == 1
    assert dedup.passes == p.passes + 2 and dedup.levels == p.levels


def test_planner_groups_small_inputs_and_chunks_outputs():
    assert plan.inputs_per_task(16_384, 10_000, 256 << 20, 2) == 16_384 // 8
    assert plan.inputs_per_task(1000, 1 << 30, 256 << 20, 2) == 1
    assert plan.inputs_per_task(1000, None, 256 << 20, 2) == 1
    assert plan.write_ranges([0, 1, 2, 4, 5, 6, 7], 3) == [(0, 3), (4, 7), (7, 8)]
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


def test_a_dry_run_shows_the_tasks_and_levels_the_run_makes(tmp_path, processes_client):
    """Both plan with the cluster's threads and the same budget (a small one: a merge
    level), through the one plan: stage-1 tasks, runs, levels and write tasks agree."""
    write_shards(tmp_path / "in", shards=12, per_shard=5, seed=11)
    src, dst = str(tmp_path / "in" / "d-@12.tar"), str(tmp_path / "o" / "o-@4.tar")
    kw = dict(key="grp", memory=64 << 10, client=processes_client, quiet=True)
    dry = htools.sort(src, dst, dry_run=True, **kw)
    assert "2 worker threads" in dry.plan[0] and "read from the cluster's workers" in dry.plan[0]
    assert not (tmp_path / "o").exists()
    s = htools.sort(src, dst, **kw)
    assert s.ok, s.failures
    same = ("stage1_tasks", "inputs_per_task", "runs", "fan_in", "memory_budget",
            "intermediate_merges", "write_tasks", "outputs_per_task", "max_runs_per_write")
    assert {k: dry.extra[k] for k in same} == {k: s.extra[k] for k in same}
    levels = [{k: lv[k] for k in ("stage", "tasks", "runs_per_task")} for lv in s.extra["levels"]]
    assert levels and [{k: lv[k] for k in levels[0]} for lv in dry.extra["levels"]] == levels
    assert f"merge levels: {len(levels)} " in "\n".join(dry.plan)


def test_a_dry_run_without_a_cluster_says_it_estimates():
    from htools.exchange.sizing import dry_run_resources
    from htools.options import RunOptions

    sized = dry_run_resources(RunOptions(workers=3), None)
    assert sized.threads == 3 and "estimated for the embedded cluster" in sized.source
    assert dry_run_resources(RunOptions(workers=3), 5 << 20).memory == 5 << 20
