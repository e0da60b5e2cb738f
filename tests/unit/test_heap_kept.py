"""A stage-1 task keeps the heap it frees, up to its memory budget, for its next spill
and the worker's next stage-1 task (:func:`htools.exchange.partition.heap_kept`), and
puts glibc's trim threshold back when it ends, failed or not."""

from __future__ import annotations

import os

import pytest

from htools import tar
from htools.exchange import partition as part
from htools.exchange.keys import KeySpec
from htools.exchange.specs import StageOne
from htools.runtime.task import TRIM_THRESHOLD


@pytest.fixture
def mallopt(monkeypatch):
    """The (param, value) calls of mallopt, in order."""
    calls: list[tuple[int, int]] = []

    def record(param: int, value: int) -> int:
        calls.append((param, value))
        return 1

    monkeypatch.setattr(part, "mallopt", lambda: record)
    monkeypatch.setattr(part, "malloc_tuned", lambda: True)
    return calls


def test_the_budget_is_kept_while_the_task_runs_then_the_setting_is_back(mallopt):
    with part.heap_kept(300 << 20):
        assert mallopt == [(part.M_TRIM_THRESHOLD, 300 << 20)]
    assert mallopt[1:] == [(part.M_TRIM_THRESHOLD, TRIM_THRESHOLD)]


def test_the_setting_is_back_after_a_failure_too(mallopt):
    with pytest.raises(RuntimeError), part.heap_kept(1 << 20):
        raise RuntimeError("the task failed")
    # never below the setting a worker has anyway
    assert mallopt == [(part.M_TRIM_THRESHOLD, TRIM_THRESHOLD)] * 2


def test_a_budget_beyond_a_c_int_keeps_the_most_mallopt_takes(mallopt):
    with part.heap_kept(5 << 30):  # passed as it is, it would wrap around to 1 GiB
        pass
    assert mallopt[0] == (part.M_TRIM_THRESHOLD, (1 << 31) - 1)


def test_nothing_where_htools_left_the_users_malloc_setting(mallopt, monkeypatch):
    """MALLOC_TRIM_THRESHOLD_ of 8 MiB or more, HTOOLS_MALLOC_TUNE=0, or no variable:
    tune_malloc changed nothing, and neither does a stage-1 task (it put back 8 MiB)."""
    monkeypatch.setattr(part, "malloc_tuned", lambda: False)
    with part.heap_kept(300 << 20):
        pass
    assert mallopt == []


def test_nothing_without_mallopt(monkeypatch):
    monkeypatch.setattr(part, "mallopt", lambda: None)
    with part.heap_kept(300 << 20):
        pass


def test_a_partition_task_runs_with_its_budget_kept(tmp_path, mallopt):
    url = str(tmp_path / "in.tar")
    with open(url, "wb") as f, tar.TarWriter(f) as w:
        for i in range(5):
            w.write({"__key__": f"s{i}", "bin": os.urandom(100)})
    spec = StageOne(scratch=str(tmp_path / "scratch"), buckets=2, key=KeySpec(seed=1),
                    memory=64 << 20)
    result = part.partition([(0, url)], 0, spec)
    assert result["status"] == "ok"
    assert mallopt == [(part.M_TRIM_THRESHOLD, 64 << 20),
                       (part.M_TRIM_THRESHOLD, TRIM_THRESHOLD)]


def test_a_dedup_task_runs_with_its_budget_kept(tmp_path, mallopt):
    """htsort --dedup's dedup tasks spill through stage 1's Spiller: their heap is kept
    as a stage-1 task's."""
    from htools.exchange.dedup import dedup_and_partition
    from htools.exchange.specs import StageTwo

    one = StageOne(scratch=str(tmp_path / "scratch"), buckets=2, key=KeySpec(seed=1),
                   memory=32 << 20)
    result = dedup_and_partition([], 0, 1, 0, one, StageTwo(dedup="bin"))
    assert result["status"] == "ok"
    assert mallopt == [(part.M_TRIM_THRESHOLD, 32 << 20),
                       (part.M_TRIM_THRESHOLD, TRIM_THRESHOLD)]
