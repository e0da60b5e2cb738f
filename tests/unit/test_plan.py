"""The pure planners, without Dask: how htupload splits items into outputs
(upload.split_counts), how the exchange picks splitters and groups buckets into outputs
(exchange.pick_splitters, group_buckets), and how output patterns name outputs
(shards.output_urls, numbered, count_of, is_numbered)."""

from __future__ import annotations

import random
from itertools import pairwise

import numpy as np
import pytest
from helpers import require_module

from htools import exchange, shards
from htools.errors import HtoolsError, PatternError
from htools.exchange import plan
from htools.upload import split_counts

hypothesis = require_module("hypothesis")
st = hypothesis.strategies
given = hypothesis.given
settings = hypothesis.settings(max_examples=150, deadline=None, derandomize=True, database=None)

RECORD = 10240  # tar writers pad an archive to whole records
END = 1024  # a tar's two end-of-archive blocks


def padded(n: int) -> int:
    return -(-n // RECORD) * RECORD


def covers(bounds: list[tuple[int, int]], total: int) -> bool:
    """Contiguous [start, stop) ranges from 0 to total, none running backwards."""
    return (bounds[0][0] == 0 and bounds[-1][1] == total
            and all(a <= b for a, b in bounds)
            and all(b == c for (_, b), (c, _) in pairwise(bounds)))


# ---------------------------------------------------------- htupload: split_counts --

def test_split_into_exactly_n_outputs_balanced_by_count():
    assert split_counts([1] * 10, 3, None, None) == [(0, 4), (4, 7), (7, 10)]
    assert split_counts([5, 1, 1], 1, None, None) == [(0, 3)]
    assert split_counts([1, 1], 4, None, None) == [(0, 1), (1, 2), (2, 2), (2, 2)]  # some empty
    assert split_counts([], 2, None, None) == [(0, 0), (0, 0)]


def test_split_counts_cuts_as_the_exchange_does():
    """htupload's own ranges (without importing the exchange package) are its split's."""
    from htools.exchange.plan import split

    for n in (0, 1, 2, 5, 63, 64, 65, 100_000):
        for pieces in (1, 2, 3, 7, 64, 200):
            assert split_counts([1] * n, pieces, None, None) == split(n, pieces, allow_empty=True)


def test_maxcount():
    assert split_counts([1] * 7, None, 3, None) == [(0, 3), (3, 6), (6, 7)]
    assert split_counts([1] * 6, None, 3, None) == [(0, 3), (3, 6)]  # no empty last output
    assert split_counts([1] * 2, None, 5, None) == [(0, 2)]


def test_maxsize_counts_record_padding_and_end_blocks():
    # 1024 + 3 x 3000 = 10024 fits one 10240-byte record; a fourth item needs a second
    assert split_counts([3000] * 7, None, None, RECORD) == [(0, 3), (3, 6), (6, 7)]
    # 1024 + 2 x 5000 = 11024 bytes of tar, but 20480 on disk: over 15000
    assert split_counts([5000, 5000], None, None, 15000) == [(0, 1), (1, 2)]
    assert split_counts([5000, 5000], None, None, 2 * RECORD) == [(0, 2)]


def test_an_item_larger_than_maxsize_gets_an_output_of_its_own():
    assert split_counts([10, 50000, 10], None, None, RECORD) == [(0, 1), (1, 2), (2, 3)]


def test_maxcount_and_maxsize_together():
    assert split_counts([100] * 5 + [6000] * 3, None, 4, RECORD) == [(0, 4), (4, 6), (6, 7),
                                                                    (7, 8)]


def test_no_items_make_one_empty_output():
    assert split_counts([], None, 10, None) == [(0, 0)]
    assert split_counts([], None, None, RECORD) == [(0, 0)]


def test_open_ended_needs_a_limit():
    with pytest.raises(HtoolsError, match="needs --maxcount or --maxsize"):
        split_counts([1, 2], None, None, None)
    with pytest.raises(HtoolsError, match="--maxsize 10239 is less than 10240 bytes"):
        split_counts([1, 2], None, None, RECORD - 1)  # no tar file is smaller than a record


@settings
@given(sizes=st.lists(st.integers(0, 30000), max_size=60),
       maxcount=st.one_of(st.none(), st.integers(1, 10)),
       maxsize=st.one_of(st.none(), st.integers(RECORD, 6 * RECORD)))
def test_split_counts_property(sizes, maxcount, maxsize):
    hypothesis.assume(maxcount or maxsize)
    bounds = split_counts(sizes, None, maxcount, maxsize)
    assert covers(bounds, len(sizes))
    assert all(a < b for a, b in bounds) or bounds == [(0, 0)]  # no empty output
    for i, (a, b) in enumerate(bounds):
        n, size = b - a, END + sum(sizes[a:b])
        if maxcount:
            assert n <= maxcount
        if maxsize and n > 1:
            assert padded(size) <= maxsize
        if i + 1 < len(bounds):  # greedy: the next item did not fit
            assert ((maxcount and n + 1 > maxcount)
                    or (maxsize and padded(size + sizes[b]) > maxsize))


# ------------------------------------------------------- exchange: group_buckets --

def sums(counts, groups) -> list[int]:
    return [int(sum(counts[a:b])) for a, b in groups]


def test_groups_balanced_by_count():
    counts = np.array([5, 5, 5, 5])
    assert exchange.group_buckets(counts, 2, None) == [(0, 2), (2, 4)]
    assert exchange.group_buckets(counts, 1, None) == [(0, 4)]
    uneven = np.array([10, 0, 0, 10, 1, 1, 1, 7])
    assert sums(uneven, exchange.group_buckets(uneven, 3, None)) == [10, 10, 10]


def test_cuts_at_the_nearer_bucket_boundary():
    # half of 10 is 5: cutting before the 6 leaves 1 (4 off), after it 7 (2 off)
    assert exchange.group_buckets(np.array([1, 6, 3]), 2, None) == [(0, 2), (2, 3)]
    assert exchange.group_buckets(np.array([3, 6, 1]), 2, None) == [(0, 1), (1, 3)]  # 3 vs 9
    groups = exchange.group_buckets(np.array([1, 8, 1]), 2, None)  # 1 or 9: a tie
    assert groups in ([(0, 1), (1, 3)], [(0, 2), (2, 3)])


def test_more_outputs_than_buckets_or_samples_gives_empty_groups():
    groups = exchange.group_buckets(np.array([4, 4]), 5, None)
    assert len(groups) == 5 and covers(groups, 2) and sum(sums([4, 4], groups)) == 8
    groups = exchange.group_buckets(np.zeros(8, dtype=np.int64), 3, None)
    assert len(groups) == 3 and covers(groups, 8)


def test_maxcount_decides_the_number_of_outputs():
    counts = np.full(64, 10)  # 640 samples
    groups = exchange.group_buckets(counts, None, 100)
    assert len(groups) == 7 and covers(groups, 64)  # ceil(640 / 100)
    assert len(exchange.group_buckets(counts, None, 640)) == 1
    assert len(exchange.group_buckets(np.zeros(4, dtype=np.int64), None, 5)) == 1


@settings
@given(counts=st.lists(st.integers(0, 50), min_size=1, max_size=80),
       outputs=st.integers(1, 40))
def test_group_buckets_property(counts, outputs):
    """Groups are contiguous, cover every bucket once, and each holds the fair share of
    samples to within one bucket's count (every cut is at the boundary nearest its target)."""
    arr = np.array(counts, dtype=np.int64)
    groups = exchange.group_buckets(arr, outputs, None)
    assert len(groups) == outputs and covers(groups, len(counts))
    fair, slack = sum(counts) / outputs, max(counts)
    for size in sums(counts, groups):
        assert fair - slack - 1e-9 <= size <= fair + slack + 1e-9


@settings
@given(counts=st.lists(st.integers(0, 50), min_size=1, max_size=80),
       maxcount=st.integers(1, 500))
def test_group_buckets_maxcount_property(counts, maxcount):
    arr = np.array(counts, dtype=np.int64)
    groups = exchange.group_buckets(arr, None, maxcount)
    assert len(groups) == max(1, -(-sum(counts) // maxcount)) and covers(groups, len(counts))
    assert max(sums(counts, groups)) <= maxcount + max(counts)


# ----------------------------------------- exchange: splitters, buckets, outputs --

def test_pick_splitters_are_quantiles():
    keys = list(range(100))
    random.Random(1).shuffle(keys)
    assert exchange.pick_splitters(keys, 4) == (25, 50, 75)
    assert exchange.pick_splitters(["b", "a", "c"], 2) == ("b",)
    assert exchange.pick_splitters([], 8) == ()
    assert exchange.pick_splitters([1, 2, 3], 1) == ()
    assert exchange.pick_splitters([7], 3) == (7, 7)  # fewer keys than buckets


def bucket_fn(splitters: tuple, buckets: int, reverse: bool = False):
    """The bucket a stage-1 task gives a sort key (exchange.bucket_fn, as htsort uses it)."""
    return exchange.bucket_fn(exchange.KeySpec(mode="field", reverse=reverse), buckets,
                              splitters)


def test_distinct_keys_fill_buckets_evenly():
    keys = [f"k{i:05d}" for i in range(1000)]
    random.Random(2).shuffle(keys)
    bucket = bucket_fn(exchange.pick_splitters(keys, 16), 16)
    sizes = np.bincount([bucket(k) for k in keys], minlength=16)
    assert set(sizes) <= {1000 // 16, 1000 // 16 + 1} and sizes.sum() == 1000


def plan_outputs_of(keys: list, buckets: int, outputs: int, reverse: bool) -> list[list]:
    """Keys per output, as htsort plans them: splitters from the keys, a bucket per key,
    bucket counts grouped into outputs."""
    bucket = bucket_fn(exchange.pick_splitters(keys, buckets), buckets, reverse)
    of_key = [bucket(k) for k in keys]
    counts = np.bincount(of_key, minlength=buckets)
    groups = exchange.group_buckets(counts, outputs, None)
    owner = {b: j for j, (lo, hi) in enumerate(groups) for b in range(lo, hi)}
    out: list[list] = [[] for _ in groups]
    for k, b in zip(keys, of_key):
        out[owner[b]].append(k)
    return out


@settings
@given(keys=st.lists(st.integers(0, 30), min_size=1, max_size=300),
       buckets=st.integers(1, 64), outputs=st.integers(1, 10), reverse=st.booleans())
def test_equal_keys_never_split_and_outputs_are_in_order(keys, buckets, outputs, reverse):
    out = plan_outputs_of(keys, buckets, outputs, reverse)
    assert sorted(k for o in out for k in o) == sorted(keys)
    owners: dict[int, set[int]] = {}
    for j, o in enumerate(out):
        for k in o:
            owners.setdefault(k, set()).add(j)
    assert all(len(js) == 1 for js in owners.values())  # every key in exactly one output
    # output j's keys all come before output j+1's (after, with reverse)
    ranges = [(min(o), max(o)) for o in out if o]
    for (lo1, hi1), (lo2, hi2) in pairwise(ranges):
        assert (hi1 < lo2) if not reverse else (lo1 > hi2)


def test_a_key_held_by_most_samples_takes_one_output():
    keys = ["same"] * 90 + [f"x{i}" for i in range(10)]
    out = plan_outputs_of(keys, 32, 4, False)
    assert sum("same" in o for o in out) == 1
    assert max(len(o) for o in out) >= 90


# --------------------------------------------------------- output patterns --

def test_output_urls_of_each_notation():
    assert shards.output_urls("s3://b/o-@3.tar", 3) == ["s3://b/o-0.tar", "s3://b/o-1.tar",
                                                        "s3://b/o-2.tar"]
    assert shards.output_urls("s3://b/o-@010.tar", 10)[-1] == "s3://b/o-009.tar"
    assert shards.output_urls("s3://b/{train,val}.tar", 2) == ["s3://b/train.tar",
                                                               "s3://b/val.tar"]
    assert shards.output_urls("s3://b/o-{08..10}.tar", 3) == ["s3://b/o-08.tar", "s3://b/o-09.tar",
                                                              "s3://b/o-10.tar"]
    assert shards.output_urls("s3://b/a.tar::s3://b/b-@2.tar", 3) == [
        "s3://b/a.tar", "s3://b/b-0.tar", "s3://b/b-1.tar"]
    assert shards.output_urls("http://h/one.tgz", 1) == ["http://h/one.tgz"]
    assert shards.output_urls("s3://b/o-%06d.tar", 2) == ["s3://b/o-000000.tar",
                                                          "s3://b/o-000001.tar"]
    assert shards.output_urls("s3://b/o-%d.tar", 11)[-1] == "s3://b/o-10.tar"
    assert shards.output_urls("s3://b/o-%06d.tar", 0) == []


def test_output_count_mismatch_is_a_pattern_error():
    for pattern, named in [("s3://b/o-@3.tar", 3), ("s3://b/{a,b}.tar", 2), ("s3://b/x.tar", 1)]:
        with pytest.raises(PatternError) as info:
            shards.output_urls(pattern, 4)
        assert f"names {named} outputs but 4 are needed" in str(info.value)
        assert repr(pattern) in str(info.value)


def test_numbered_patterns():
    assert shards.is_numbered("s3://b/o-%06d.tar") and shards.is_numbered("o-%d.tar")
    assert shards.is_numbered("o-%3d.tar")
    assert not shards.is_numbered("s3://b/o-@3.tar") and not shards.is_numbered("o-{0..3}.tar")
    assert not shards.is_numbered("s3://b/%06d/o.tar")  # only the file name counts
    assert not shards.is_numbered("http://h/a%20b.tar")  # a URL escape is no number
    assert shards.numbered("gs://b/dir-%d/o-%04d.tgz", 7) == "gs://b/dir-%d/o-0007.tgz"
    assert shards.numbered("o-%d.tar", 123) == "o-123.tar"
    with pytest.raises(PatternError, match="expected a numbered pattern"):
        shards.numbered("o-@3.tar", 0)


def test_count_of():
    assert shards.count_of("o-@7.tar") == 7
    assert shards.count_of("o-{a,b,c}-{0..1}.tar") == 6
    assert shards.count_of("s3://b/plain.tar") == 1
    assert shards.count_of("o-%06d.tar") is None
    with pytest.raises(PatternError, match="runs backwards"):
        shards.count_of("o-{3..1}.tar")


def test_output_set_parsed_once(tmp_path, monkeypatch):
    """The pattern is expanded when the set is parsed, and never again: its count, first
    output, folder and URLs come from that one expansion."""
    monkeypatch.chdir(tmp_path)
    expanded = []
    expand_all = shards.expand_all
    monkeypatch.setattr(shards, "expand_all", lambda p: expanded.append(p) or expand_all(p))
    fixed = shards.OutputSet.parse("out/o-@2.tar")
    assert expanded == ["out/o-@2.tar"]
    assert fixed.urls(2) == [f"{tmp_path}/out/o-0.tar", f"{tmp_path}/out/o-1.tar"]
    assert fixed.count == 2 and fixed.first() == f"{tmp_path}/out/o-0.tar"
    assert fixed.folder() == f"{tmp_path}/out/"
    open_ended = shards.OutputSet.parse("s3://b/run/o-%03d.tar")
    assert open_ended.count is None and open_ended.first() == "s3://b/run/o-000.tar"
    assert open_ended.urls(2) == ["s3://b/run/o-000.tar", "s3://b/run/o-001.tar"]
    assert open_ended.folder() == "s3://b/run/"
    assert expanded == ["out/o-@2.tar"]  # count, first, folder, urls: no second expansion
    with pytest.raises(PatternError, match="unbalanced"):
        shards.OutputSet.parse("o-{0..2.tar")


def test_count_slices_cut_the_merged_order_exactly():
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(0, 6, size=int(rng.integers(1, 30))) * rng.integers(0, 2, size=1)
        n = int(rng.integers(1, 12))
        slices = plan.count_slices(counts, n)
        starts = plan.bucket_starts(counts)
        total = int(counts.sum())
        if total == 0:
            assert slices == [(0, len(counts), 0, 0)]
            continue
        assert [c for *_x, c in slices] == [n] * (len(slices) - 1) + [total - n * (len(slices) - 1)]
        for j, (a, b, begin, count) in enumerate(slices):
            assert begin == j * n
            assert starts[a] <= begin < starts[a] + counts[a]  # starts inside bucket a
            end = begin + count
            assert starts[b - 1] < end <= starts[b - 1] + counts[b - 1]  # ends in b - 1
