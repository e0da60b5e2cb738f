"""The table's batch search (htools.selection.table): searching each digest within its
partition finds what ``np.searchsorted`` over the whole table finds, for queries in
full, empty, first and last partitions and at the ends of the range, and a table's
rows are the same found either way."""

from __future__ import annotations

import numpy as np
import pytest

from htools.selection import table as tables
from htools.selection.table import first_rows, part_bits, partition_bounds
from htools.selection.values import digest_block

TOP = np.iinfo(np.uint64).max


def _queries(hi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Listed high halves, their neighbours, random ones and both ends of the range."""
    listed = rng.choice(hi, size=min(len(hi), 300)) if len(hi) else hi
    near = np.concatenate([listed - np.uint64(1), listed + np.uint64(1)])
    ends = np.array([0, 1, TOP - 1, TOP, hi.max() if len(hi) else 0], dtype=np.uint64)
    rand = rng.integers(0, TOP, size=300, dtype=np.uint64, endpoint=True)
    return np.concatenate([listed, near, ends, rand])


@pytest.mark.parametrize("n", [300, 257, 1000, 5000, 40_000])
@pytest.mark.parametrize("layout", ["uniform", "clustered", "top"])
def test_first_rows_is_searchsorted(n, layout):
    rng = np.random.default_rng(n)
    hi = rng.integers(0, TOP, size=n, dtype=np.uint64, endpoint=True)
    if layout == "clustered":  # most partitions empty, a few large (and repeated halves)
        hi = hi >> np.uint64(8) | np.uint64(0xAB << 56)
        hi[: n // 10] = hi[0]
    elif layout == "top":  # the last partition holds the end of the range
        hi[-50:] = TOP - np.arange(50, dtype=np.uint64)
    hi.sort()
    bounds = partition_bounds(hi)
    bits = part_bits(n)
    assert bits > 0 and len(bounds) == 2 ** bits + 1
    steps = int(np.diff(bounds).max()).bit_length()
    q = _queries(hi, rng)
    assert np.array_equal(first_rows(hi, bounds, bits, steps, q), np.searchsorted(hi, q))


def test_table_rows_within_partitions(tmp_path):
    """A table's rows of a batch (searched within partitions) and of each digest alone
    (one binary search): listed digests at their rows, the others -1."""
    values = [f"v{i}".encode() for i in range(3000)]
    url = str(tmp_path / "t")
    n, _digest = tables.build([digest_block(values)], url, None)
    table = tables.Table(url)
    assert table.bounds is not None
    asked = values[::7] + [b"absent-%d" % i for i in range(200)]
    block = digest_block(asked)
    pairs = np.frombuffer(block, dtype=">u8").reshape(-1, 2).astype(np.uint64)
    rows = table.rows(pairs)
    assert len(rows) >= tables.BOUNDED
    one = [table.index(block[16 * i:16 * i + 16]) for i in range(len(asked))]
    assert rows.tolist() == one
    assert (rows[: len(values[::7])] >= 0).all() and (rows[len(values[::7]):] == -1).all()
    assert len(set(rows[rows >= 0].tolist())) == len(values[::7]) <= n
