"""The exchange's task arguments as ranges of the job's shard lists (issue 26): a
stage-1 task of a brace pattern's inputs, and a write task of ``@N`` outputs, carry a
numbered range that does not grow with the shards; an arbitrary list stays a list."""

from __future__ import annotations

import pickle

import numpy as np

from htools import shards
from htools.exchange import plan
from htools.exchange.keys import KeySpec
from htools.exchange.runner import stage_one_tasks
from htools.exchange.specs import InputSpan, Numbered, OutputSpan, StageOne, compact


def _stage_one_bytes(folder, n: int) -> int:
    inputs = shards.expand_all(f"{folder}/in-{{000000..{n - 1:06d}}}.tar")
    one = StageOne(scratch=f"{folder}/scratch/", buckets=4, key=KeySpec())
    (task,) = stage_one_tasks(inputs, 1, one)
    assert list(task.kwargs["inputs"]) == list(enumerate(inputs))
    return len(pickle.dumps(task.kwargs["inputs"]))


def test_stage_one_arguments_do_not_grow_with_a_brace_patterns_inputs(tmp_path):
    small, large = _stage_one_bytes(tmp_path, 10), _stage_one_bytes(tmp_path, 10_000)
    assert large <= small + 8  # a few digits more, not a URL an input


def test_stage_one_tasks_cover_the_inputs_in_order(tmp_path):
    inputs = shards.expand_all(f"{tmp_path}/in-{{0..999}}.tar")  # numbers not padded
    one = StageOne(scratch=f"{tmp_path}/scratch/", buckets=4, key=KeySpec())
    tasks = stage_one_tasks(inputs, 7, one)
    pairs = [p for t in tasks for p in t.kwargs["inputs"]]
    assert pairs == list(enumerate(inputs))
    assert all(isinstance(t.kwargs["inputs"].urls, Numbered) for t in tasks)
    assert [u for t in tasks for u in t.input] == inputs


def test_an_arbitrary_list_of_inputs_travels_as_a_list():
    urls = ["/d/a-000001.tar", "/d/a-000002.tar", "/d/b-000003.tar", "/e/x.tar"]
    for a, b, numbered in [(0, 4, False), (0, 2, True), (1, 3, False), (3, 4, False)]:
        span = compact(urls, a, b)
        assert list(span) == urls[a:b]
        assert isinstance(span, Numbered) == numbered
    repeated = ["/d/in-1.tar", "/d/in-1.tar"]
    assert compact(repeated, 0, 2) == repeated
    assert list(InputSpan(compact(urls, 1, 3), 1)) == [(1, urls[1]), (2, urls[2])]


def test_write_arguments_of_numbered_outputs(tmp_path):
    n = 5000
    outputs = shards.OutputSet.parse(f"{tmp_path}/out-@{n}.tar").urls(n)
    groups = plan.Groups.of_bounds(np.arange(n + 1, dtype=np.int64))
    span = OutputSpan(compact(outputs, 10, 1034), groups.a[10:1034], groups.b[10:1034])
    assert isinstance(span.urls, Numbered)
    assert list(span) == [(outputs[j], j, j + 1) for j in range(10, 1034)]
    assert span[0] == (outputs[10], 10, 11) and span[-1] == (outputs[1033], 1033, 1034)
    few = OutputSpan(compact(outputs, 10, 20), groups.a[10:20], groups.b[10:20])
    assert len(pickle.dumps(span)) <= len(pickle.dumps(few)) + 8  # a bucket an output
    bounds = np.array([0, 2, 3, 3, 7])  # a sort's outputs: arrays, 16 bytes an output
    sorted_ = plan.Groups.of_bounds(bounds)
    assert [sorted_[j] for j in range(4)] == [(0, 2), (2, 3), (3, 3), (3, 7)]
    assert list(OutputSpan(outputs[:4], sorted_.a, sorted_.b)) == \
        [(outputs[0], 0, 2), (outputs[1], 2, 3), (outputs[2], 3, 3), (outputs[3], 3, 7)]


def test_write_arguments_of_exact_maxcount_slices():
    counts = np.array([3, 0, 5, 2], dtype=np.int64)
    groups = plan.Groups.of_slices(counts, 4)
    cuts = plan.count_slices(counts, 4)
    starts = plan.bucket_starts(counts)
    urls = [f"/o/out-{j}.tar" for j in range(len(cuts))]
    span = OutputSpan(compact(urls, 0, len(urls)), groups.a, groups.b, groups.slices)
    assert list(span) == [(u, a, b, begin, k, int(starts[a]))
                          for u, (a, b, begin, k) in zip(urls, cuts)]
    assert [groups[j] for j in range(len(groups))] == [(a, b) for a, b, _s, _k in cuts]


def test_bucket_bounds_are_group_buckets():
    counts = np.array([5, 1, 0, 7, 3, 3, 9, 2], dtype=np.int64)
    for outputs, maxcount in [(3, None), (8, None), (None, 6)]:
        bounds = plan.bucket_bounds(counts, outputs, maxcount).tolist()
        assert list(zip(bounds[:-1], bounds[1:])) == \
            plan.group_buckets(counts, outputs, maxcount)


def test_a_range_of_a_numbered_range_is_numbered_without_making_its_urls():
    urls = shards.expand_all("/d/in-{0000..1999}.tar")
    whole = compact(urls, 0, len(urls))
    part = compact(whole, 100, 350)
    assert isinstance(part, Numbered) and list(part) == urls[100:350]
    assert whole[::400] == urls[::400] and whole[-1] == urls[-1]
    assert list(compact(whole, 1990, 2500)) == urls[1990:]


def test_compact_slices_the_list_without_walking_it_from_the_start():
    """A write task's outputs are compacted from the job's list once a task: reading it
    from index 0 every time made planning quadratic in the shard count."""
    class Unwalkable(list):
        def __iter__(self):
            raise AssertionError("walked from the start")

    urls = Unwalkable(f"/d/o-{i:05d}.tar" for i in range(100))
    span = compact(urls, 40, 50)
    assert isinstance(span, Numbered) and list(span) == list.__getitem__(urls, slice(40, 50))
    assert list(compact(urls, 95, 120)) == [f"/d/o-{i:05d}.tar" for i in range(95, 100)]
