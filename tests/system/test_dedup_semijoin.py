"""htsort --dedup F by another key as a semi-join on digests (issue 23, item 5): the
same output bytes, the same duplicates kept and the same counts as the dedup pass it
replaces (still run for a reduce_samples(), and forced here as the reference), the plain
sort's passes in the plan, and a worker killed in the decide tasks or the writes."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sys
from pathlib import Path

import cloudpickle
import pytest
import webdataset as wds
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin
from helpers import firsts, read_wds, write_duplicates

import htools
from htools.exchange import dryrun as exchange_dryrun
from htools.exchange import plan
from htools.exchange import runner as exchange_runner
from htools.exchange.dedupjob import dedup_mode
from htools.exchange.keys import KeySpec


def write_dups(folder: Path, shards: int, per_shard: int, seed: int = 0,
               distinct: int = 50) -> list[dict]:
    """Shards whose ``img`` takes one of ``distinct`` values (duplicates within and
    across shards, the first of a value anywhere), sorted by ``grp`` (5 values, so many
    equal keys whose input order must hold; duplicates of one img in other buckets)."""
    return write_duplicates(folder, shards, per_shard, seed=seed, distinct=distinct,
                            longest=2000,
                            extra=lambda rng, v: {"grp": str(rng.randrange(5)).encode()})


def digests(folder: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("o-*.tar"))]


def counts(s) -> dict:
    names = ("samples_read", "samples_written", "samples_dropped", "samples_failed",
             "samples_merged", "samples_reduced", "sample_errors", "shards_total")
    return {**{n: getattr(s, n) for n in names}, "duplicates": s.extra["duplicates"]}


def adds_up(s) -> None:
    assert s.samples_read == s.samples_written + s.samples_dropped + s.samples_failed \
        + s.samples_merged + s.samples_reduced
    assert s.samples_read == s.samples_mapped + s.samples_dropped + s.samples_failed


def sort(src: str, out: Path, client, **kw):
    s = htools.sort(src, str(out / "o-@4.tar") if "maxcount" not in kw else
                    str(out / "o-%03d.tar"), key="grp", key_type="int", dedup="img",
                    client=client, quiet=True, **kw)
    assert s.ok, s.failures
    return s


def force_the_dedup_pass(m: pytest.MonkeyPatch) -> None:
    """Run htsort --dedup by another key as before the semi-join (the client decides)."""
    for module in (exchange_runner, exchange_dryrun):
        m.setattr(module, "dedup_mode", lambda *_a: "pass")


def test_a_sort_by_another_key_is_a_semi_join_unless_it_reduces(tmp_path):
    key = KeySpec(mode="field", field="grp", dedup="img")
    assert dedup_mode(key, None) == "digests"
    assert dedup_mode(KeySpec(mode="field", field="img", dedup="img"), None) == ""
    assert dedup_mode(KeySpec(dedup="img"), None) == ""  # a shuffle
    p = plan.plan_exchange(inputs=1000, shard_bytes=1e9, outputs=100, memory=1 << 30,
                           workers=64, shuffle=False)
    semi = plan.plan_exchange(inputs=1000, shard_bytes=1e9, outputs=100, memory=1 << 30,
                              workers=64, shuffle=False, semijoin=True)
    two = plan.plan_exchange(inputs=1000, shard_bytes=1e9, outputs=100, memory=1 << 30,
                             workers=64, shuffle=False, dedup_pass=True)
    assert semi.passes == p.passes < two.passes  # the plain sort's passes over the data
    assert semi.decide_tasks >= 128 and semi.scratch_copies == p.scratch_copies
    assert semi.range_requests == p.range_requests + 2 * p.write_tasks * semi.decide_tasks


@pytest.mark.parametrize("kw", [{}, {"reverse": True}, {"fan_in": 2, "memory": 32 << 10},
                                {"reverse": True, "fan_in": 3, "memory": 16 << 10},
                                {"maxcount": 37}, {"maxcount": 20, "fan_in": 2, "memory": 32 << 10}],
                         ids=["plain", "reverse", "levels", "reverse-levels", "maxcount",
                              "maxcount-levels"])
def test_byte_identical_to_the_dedup_pass(tmp_path, processes_client, monkeypatch, kw):
    """Many duplicates across shards: the outputs, the samples kept and every count are
    the dedup pass's, through merge levels (of runs and of digest runs), --reverse and
    exact --maxcount slices; every scratch file is cleaned up."""
    samples = write_dups(tmp_path / "in", shards=10, per_shard=30, seed=len(kw))
    src = str(tmp_path / "in" / "d-{00..09}.tar")
    semi = sort(src, tmp_path / "semi", processes_client, scratch=str(tmp_path / "s1"), **kw)
    with monkeypatch.context() as m:  # the dedup pass, as before the semi-join
        force_the_dedup_pass(m)
        ref = sort(src, tmp_path / "pass", processes_client, scratch=str(tmp_path / "s2"), **kw)
    assert digests(tmp_path / "semi") == digests(tmp_path / "pass")
    assert len(digests(tmp_path / "semi")) >= 2
    keep = firsts(samples, "img")
    expect = sorted(keep, key=lambda x: int(x["grp"]), reverse=kw.get("reverse", False))
    assert read_wds(sorted((tmp_path / "semi").glob("o-*.tar"))) == expect
    assert counts(semi) == counts(ref)
    assert semi.samples_dropped == semi.extra["duplicates"] == len(samples) - len(keep)
    adds_up(semi)
    if "fan_in" in kw:
        assert {lv["stage"] for lv in semi.extra["levels"]} == {"dedup-merge", "merge"}
    assert not any((tmp_path / "s1").rglob("*.bin"))


#: the outputs of htsort --key grp --dedup img (o-@3) of write_dups(8 shards x 25, seed
#: 42), as the dedup pass wrote them before the semi-join; forward, then --reverse
PINNED = {False: ["288f3018706b76c5ebf47f5411b58922d515bbc500af9e43b94608e11a9c68e3",
                  "badada28da038078652d6beffc5ac678547ccc359137b3abc224d7dc955e693d",
                  "0ff7eeb2f388dc21bcba0a63d6c13c520160c09a453bab33aafb30c07eac6388"],
          True: ["fa06da85323260347e078114f8cf495645005e3afff96bb851ba4604cdfeaf6c",
                 "badada28da038078652d6beffc5ac678547ccc359137b3abc224d7dc955e693d",
                 "837a4e8a76370a03c57a732e338b2af2f9749a0d7bcc889f9e5a4fe6b7f6eb20"]}


@pytest.mark.parametrize("reverse", [False, True])
def test_pinned_digests_of_the_dedup_pass(tmp_path, processes_client, reverse):
    write_dups(tmp_path / "in", shards=8, per_shard=25, seed=42)
    s = htools.sort(str(tmp_path / "in" / "d-{00..07}.tar"), str(tmp_path / "o" / "o-@3.tar"),
                    key="grp", key_type="int", dedup="img", reverse=reverse,
                    client=processes_client, quiet=True)
    assert s.ok, s.failures
    assert digests(tmp_path / "o") == PINNED[reverse]
    assert s.samples_dropped == s.extra["duplicates"] == 150


def test_sample_errors_count_as_before(tmp_path, processes_client, monkeypatch):
    """Samples without the dedup field or the sort field: the same sample errors, the
    same counts (read = written + dropped + failed) and output as the dedup pass."""
    write_dups(tmp_path / "in", shards=3, per_shard=20, seed=6)
    with wds.TarWriter(str(tmp_path / "in" / "d-03.tar")) as w:
        w.write({"__key__": "no-img", "grp": b"1"})
        w.write({"__key__": "no-grp", "img": b"fresh"})
        w.write({"__key__": "again", "img": b"fresh", "grp": b"2"})  # its first failed
    src = str(tmp_path / "in" / "d-{00..03}.tar")
    semi = sort(src, tmp_path / "semi", processes_client, max_errors=2)
    with monkeypatch.context() as m:
        force_the_dedup_pass(m)
        ref = sort(src, tmp_path / "pass", processes_client, max_errors=2)
    assert digests(tmp_path / "semi") == digests(tmp_path / "pass")
    assert counts(semi) == counts(ref) and semi.samples_failed == 2
    assert {e["key"] for e in semi.errors} == {"no-img", "no-grp"}
    adds_up(semi)
    assert b"fresh" in [x["img"] for x in read_wds(sorted((tmp_path / "semi").glob("o-*")))]


class KillOnce(WorkerPlugin):
    """A Dask worker plugin: SIGKILL the worker process as it starts the first task whose
    key matches ``pattern`` (once: a marker file remembers)."""

    name = "kill-once"

    def __init__(self, pattern: str, mark: str):
        self.pattern, self.mark = pattern, mark

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing" and re.match(self.pattern, str(key)) \
                and not os.path.exists(self.mark):
            open(self.mark, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("stage,pattern", [("decide", r"htsort-dedup-[0-9a-f]{8}-"),
                                           ("write", r"htsort-[0-9a-f]{8}-")])
def test_worker_killed_mid_job_gives_the_same_output(tmp_path, stage, pattern):
    """A worker SIGKILLed as it starts a decide task, or a write task (which loads the
    drop runs): the task runs again elsewhere and the output is the clean run's."""
    write_dups(tmp_path / "in", shards=6, per_shard=25, seed=9)
    src = str(tmp_path / "in" / "d-{00..05}.tar")
    mark = tmp_path / "kill-mark"
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the plugin, to workers
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=40) as cluster, \
            Client(cluster) as client:
        clean = sort(src, tmp_path / "clean", client)
        client.register_plugin(KillOnce(pattern, str(mark)))
        killed = sort(src, tmp_path / "killed", client, scratch=str(tmp_path / "scratch"))
    assert mark.exists()
    assert digests(tmp_path / "killed") == digests(tmp_path / "clean")
    assert counts(killed)["samples_written"] == counts(clean)["samples_written"]
    assert killed.samples_dropped == clean.samples_dropped
    assert not any((tmp_path / "scratch").rglob("*.bin"))
