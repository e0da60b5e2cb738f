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


def test_tagged_gives_each_sample_its_ordinal_and_digest_or_fails_it():
    """Stage 1's tags on the join path: the digest of each sample's value (a field, its
    newline cut; or a JSON member), none for a sample without it, and a sample whose
    JSON does not parse failed and owed a random key -- as the small path reads them."""
    from htools.selection.digest import DEFAULT_KEY
    from htools.selection.values import digest, sample_value
    from htools.summary import ShardResult

    samples = [{"__key__": "a", "txt": b"x\n", "json": b'{"id": "1"}'},
               {"__key__": "b", "json": b'{"id": 2}'},
               {"__key__": "c", "txt": "y", "json": b"{not json"},
               {"__key__": "d", "json": b'{"other": 1}'}]
    for sel in (Selection(mode="keep", source="l", field="txt", key=DEFAULT_KEY),
                Selection(mode="keep", source="l", field="json", member="id",
                          key=DEFAULT_KEY)):
        result, tags, seen = ShardResult(max_errors=9), listjoin.Tags(), []
        for s in listjoin.tagged(iter(samples), sel, result, "u.tar", tags):
            seen.append((s["__key__"], tags.ordinal, tags.digest, tags.owed))
        want = []
        for o, s in enumerate(samples):
            try:
                v = sample_value(s, sel)
            except ValueError:
                continue
            want.append((s["__key__"], o, listjoin.MISSING if v is None else
                         digest(v, DEFAULT_KEY), 1 if sel.member and o == 3 else 0))
        assert seen == want
        failed = 1 if sel.member else 0  # "c": its JSON does not parse
        assert (result.samples_read, len(result.errors), tags.owed) == (failed,) * 3
