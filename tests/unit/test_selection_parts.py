"""A list's table looked up by partition (htools.selection.parts): the same rows as the
whole table, at most the budget held, partitions fetched by range requests."""

from __future__ import annotations

import numpy as np

from htools.selection import table
from htools.selection.parts import PartTable
from htools.selection.values import digest, digests


def test_partitioned_lookup_finds_the_same_rows_within_the_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(table, "PART_ROWS", 64)  # 20,000 rows: 512 partitions
    values = [f"v{i}".encode() for i in range(20000)]
    url = str(tmp_path / "t.digests")
    n, dg = table.build((digest(v) for v in values), url, None)
    bounds = np.fromfile(url + ".bounds", dtype="<i8")
    assert len(bounds) == 513 and bounds[0] == 0 and bounds[-1] == n
    assert np.all(np.diff(bounds) >= 0)
    whole = table.Table(url)
    budget = 16 * 64 * 8  # about 8 partitions
    parts = PartTable(url, n, budget, None)
    probe = values[::7] + [f"w{i}".encode() for i in range(3000)] + [None]
    for a in range(0, len(probe), 256):
        batch = probe[a:a + 256]
        pairs, present = digests(batch)
        assert np.array_equal(parts.rows(pairs, present), whole.rows(pairs, present))
        assert parts.held <= budget
    assert parts.requests > 0
    assert sorted(parts.index(digest(v)) for v in values[:50]) == \
        sorted(whole.index(digest(v)) for v in values[:50])


def test_load_chooses_by_budget(tmp_path):
    url = str(tmp_path / "t.digests")
    n, dg = table.build((digest(f"v{i}".encode()) for i in range(100)), url, None)
    assert isinstance(table.load(url, dg, None, 1 << 20, n), table.Table)
    assert isinstance(table.load(url, dg + "x", None, 16 * n - 1, n), PartTable)
