"""The list join's pieces (issue 23, item 4): the fetch budget, and a decide task's
table slice -- exactly the rows whose digests fall in its digest buckets."""

from __future__ import annotations

import os

import numpy as np

from htools.exchange import listjoin
from htools.exchange.semijoin import digest_bucket
from htools.selection import table as tables
from htools.selection.spec import Selection
from htools.selection.values import digest_block


def test_fetch_budget_is_a_quarter_of_memory_unless_set(monkeypatch):
    monkeypatch.delenv(listjoin.FETCH_ENV, raising=False)
    assert listjoin.fetch_budget(256 << 20) == 64 << 20
    monkeypatch.setenv(listjoin.FETCH_ENV, "123")
    assert listjoin.fetch_budget(256 << 20) == 123


def test_table_slices_cover_the_table_by_digest_bucket(tmp_path):
    values = [f"v{i}".encode() for i in range(5000)]
    url = str(tmp_path / "t.digests")
    n, _digest = tables.build([digest_block(values)], url, None)
    whole = tables.Table(url)
    buckets, seen = 64, 0
    for a, b in [(0, 1), (1, 7), (7, 40), (40, 63), (63, 64)]:
        start, hi, lo = listjoin._table_slice(url, n, a, b, buckets, {})
        assert start == seen
        assert np.array_equal(hi, whole.hi[start:start + len(hi)])
        assert np.array_equal(lo, whole.lo[start:start + len(lo)])
        for h in hi.tolist():
            assert a <= digest_bucket(int(h).to_bytes(8, "big"), buckets) < b
        seen += len(hi)
    assert seen == n == os.path.getsize(url) // 16


def test_a_table_slice_costs_a_few_requests_whatever_the_table_size(tmp_path, monkeypatch):
    """Each edge of a slice is found in one partition (by the ``.bounds`` file), not by a
    binary search of 8-byte reads over the whole table (log2(rows) requests an edge)."""
    values = [f"v{i}".encode() for i in range(100_000)]
    url = str(tmp_path / "t.digests")
    n, _digest = tables.build([digest_block(values)], url, None)
    whole = tables.Table(url)
    calls = []
    real = listjoin.storage.read_range
    monkeypatch.setattr(listjoin.storage, "read_range",
                        lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    start, hi, _lo = listjoin._table_slice(url, n, 10, 20, 64, {})
    assert np.array_equal(hi, whole.hi[start:start + len(hi)]) and len(hi) > 0
    assert len(calls) <= 6, calls  # 2 edges x (bounds, partition) + the two halves


def test_a_decide_task_that_fails_reports_its_failure(tmp_path):
    """shard_task keeps a decide task's error in its result: the task's own fields must
    not be read unset after it (an UnboundLocalError instead of a failed shard)."""
    sel = Selection(mode="keep", source="list.txt", table=str(tmp_path / "gone.digests"),
                    listed=10, counts=str(tmp_path / "counts"))
    out = listjoin.join_slice([], 0, 1, str(tmp_path / "run"), 4, sel, {})
    assert out["status"] == "failed" and "gone.digests" in out["error"]
    assert out["extra"]["run"] is None and out["extra"]["unselected"] == 0
