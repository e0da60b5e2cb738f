"""Planning the exchange: pure functions of counts, no I/O (unit-tested on their own).

:func:`plan_exchange` returns the one :class:`ExchangePlan` of a job -- stage-1 tasks,
runs, buckets, the dedup pass, merge levels, write tasks, scratch copies, range
requests -- that the run, ``--dry-run``, the scratch-space check and the 100 TB model
(``benchmarks/bench_scale.py``) all use.  Costs it keeps (N inputs, M outputs, F
fan-in, W worker threads):

* stage 1 groups small inputs so that a task reads about one memory budget
  (:func:`inputs_per_task`): R runs, about N / group + spills;
* while some output would read more than F runs, a merge level groups runs F at a
  time and splits the outputs into parts (:func:`next_level`, :func:`merge_shape`); each
  merge task reads F ranges (one per run of its group, its part's buckets) and writes
  one run: R shrinks F-fold per level.  The run plans each level from the runs the
  level before really wrote; :func:`merge_levels` assumes one run per merge task;
* write tasks take consecutive outputs (:func:`write_ranges`) and read one range per
  run of their part: requests total about R*(parts) + M*G instead of N*M.

The client holds O(N + M + buckets): run URLs and sizes, output bucket ranges, and
the counts per bucket summed over stage 1; never offsets per run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from htools.shards import split

STREAM_COST = 2 << 20  # memory to budget per open run stream (reader buffer, records)
MIN_FAN_IN, MAX_FAN_IN = 4, 256
BUCKETS_PER_OUTPUT = 16
MAX_BUCKETS = 1 << 16
DEFAULT_BUCKETS = 4096  # when the number of outputs is known only after stage 1
TASKS_PER_WORKER = 4  # stage-1 / write tasks per worker thread, at least (load balance)
DIGEST_BUCKETS = 1024  # htsort --dedup by another key: buckets of the digest runs
DIGEST_SHARE = 64  # before stage 1, digest runs are estimated at 1/64 of the data


def fan_in(memory: int, override: int | None = None) -> int:
    """How many runs one task may read at once within its memory budget."""
    if override:
        return max(2, int(override))
    return max(MIN_FAN_IN, min(MAX_FAN_IN, memory // STREAM_COST))


def bucket_count(outputs: int | None, shuffle: bool) -> int:
    """Buckets of stage 1.  A shuffle into M outputs uses one bucket per output (random
    keys balance them); a sort uses finer buckets, regrouped by count after stage 1."""
    if outputs is None:
        return DEFAULT_BUCKETS
    if shuffle:
        return outputs
    return max(outputs, min(MAX_BUCKETS, BUCKETS_PER_OUTPUT * outputs))


def inputs_per_task(n_inputs: int, shard_bytes: float | None, memory: int, workers: int) -> int:
    """Input shards per stage-1 task: tiny shards are grouped up to about one memory
    budget a task, leaving at least ``TASKS_PER_WORKER`` tasks per worker."""
    if not shard_bytes or shard_bytes <= 0 or n_inputs <= 1:
        return 1
    by_memory = max(1, int(memory // max(shard_bytes, 1)))
    by_balance = max(1, n_inputs // max(1, TASKS_PER_WORKER * workers))
    return max(1, min(by_memory, by_balance))


def group_buckets(counts: np.ndarray, outputs: int | None, maxcount: int | None
                  ) -> list[tuple[int, int]]:
    """Contiguous bucket ranges, one per output, balanced by sample count."""
    bounds = bucket_bounds(counts, outputs, maxcount).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def bucket_bounds(counts: np.ndarray, outputs: int | None, maxcount: int | None
                  ) -> np.ndarray:
    """:func:`group_buckets` as the outputs' boundaries: output j holds buckets
    ``[bounds[j], bounds[j + 1])`` (one array, not a tuple an output)."""
    b = len(counts)
    if outputs is not None and outputs == b:
        return np.arange(b + 1, dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    total = int(cum[-1])
    if outputs is None:
        outputs = max(1, -(-total // maxcount))
    bounds = [0]
    for j in range(1, outputs):
        target = total * j / outputs
        cut = int(np.searchsorted(cum, target, side="left"))
        if cut > 0 and target - cum[cut - 1] < cum[cut] - target:
            cut -= 1  # the nearer boundary
        bounds.append(min(max(cut, bounds[-1]), b))
    bounds.append(b)
    return np.array(bounds, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Groups:
    """Each output's buckets ``[a[j], b[j])``, and with exact --maxcount its slice (rows of
    begin, count, bucket_begin): arrays, 16-40 bytes an output instead of tuples;
    ``groups[j]`` is ``(a, b)``."""

    a: np.ndarray | range
    b: np.ndarray | range
    slices: np.ndarray | None = None

    @classmethod
    def of_bounds(cls, bounds: np.ndarray) -> Groups:
        """Outputs between ``bounds``; a bucket each (a shuffle into @M): two ranges,
        whose slices a write task's arguments carry as two numbers each."""
        first, n = (int(bounds[0]) if len(bounds) else 0), len(bounds) - 1
        if n >= 0 and np.array_equal(bounds, np.arange(first, first + n + 1)):
            return cls(range(first, first + n), range(first + 1, first + n + 1))
        return cls(bounds[:-1], bounds[1:])

    @classmethod
    def of_slices(cls, counts: np.ndarray, per_output: int) -> Groups:
        """--maxcount N exactly (:func:`count_slices`)."""
        cuts = np.array(count_slices(counts, per_output), dtype=np.int64).reshape(-1, 4)
        starts = bucket_starts(counts)
        return cls(cuts[:, 0], cuts[:, 1],
                   np.stack([cuts[:, 2], cuts[:, 3], starts[cuts[:, 0]]], axis=1))

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, j: int) -> tuple[int, int]:
        return int(self.a[j]), int(self.b[j])


def count_slices(counts: np.ndarray, per_output: int) -> list[tuple[int, int, int, int]]:
    """``--maxcount N`` exactly: output j holds records ``[j*N, (j+1)*N)`` of the merged
    order.  Each slice is ``(a, b, begin, count)``: the buckets ``[a, b)`` that hold it
    (a bucket may be shared with the next output), its first record's global index and
    its record count."""
    cum = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    total = int(cum[-1])
    if total == 0:
        return [(0, len(counts), 0, 0)]
    out = []
    for begin in range(0, total, per_output):
        end = min(begin + per_output, total)
        a = int(np.searchsorted(cum, begin, side="right")) - 1  # cum[a] <= begin < cum[a+1]
        b = int(np.searchsorted(cum, end, side="left"))  # first b with cum[b] >= end
        out.append((a, b, begin, end - begin))
    return out


def bucket_starts(counts: np.ndarray) -> np.ndarray:
    """The global index of each bucket's first record."""
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])[:-1]


@dataclass(frozen=True)
class MergeShape:
    """One merge level of one part: ``groups`` groups of runs x ``parts`` output parts."""

    groups: int
    parts: int

    @property
    def tasks(self) -> int:
        return self.groups * self.parts


def merge_shape(runs: int, outputs: int, fan: int, min_tasks: int) -> MergeShape | None:
    """How to merge ``runs`` runs feeding ``outputs`` outputs, or None if no merge is
    needed (runs <= fan-in).  Groups are as few as the fan-in allows; the outputs are
    cut into parts so that the next level's runs stay few per output and there are
    enough tasks to keep the workers busy."""
    if runs <= fan:
        return None
    groups = math.ceil(runs / fan)
    parts = max(math.ceil(outputs / fan), math.ceil(min_tasks / groups))
    return MergeShape(groups, max(1, min(parts, outputs)))


Part = tuple[int, int, int]  # outputs [j0, j1) and the number of runs they read


@dataclass(frozen=True)
class PartMerge:
    """One part of a level: outputs ``[j0, j1)`` reading ``runs`` runs.  When it is
    merged, its runs are cut into ``groups`` (ranges of its run list) and its outputs into
    ``parts`` (ranges of outputs): one merge task per group and part, each writing one
    run.  No groups: the part reads few enough runs and passes through as it is."""

    j0: int
    j1: int
    runs: int
    groups: tuple[tuple[int, int], ...] = ()
    parts: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class MergeLevel:
    """One merge level: what happens to each part of the level before it."""

    merges: tuple[PartMerge, ...]

    @property
    def tasks(self) -> int:
        return sum(len(m.groups) * len(m.parts) for m in self.merges)

    @property
    def runs_per_task(self) -> int:
        """The most runs one merge task reads (2 range requests each)."""
        return max((b - a for m in self.merges for a, b in m.groups), default=0)

    @property
    def ranges(self) -> int:
        """Run slices read by all the level's tasks (each: offsets + data, 2 requests)."""
        return sum(m.runs * len(m.parts) for m in self.merges if m.groups)

    def after(self) -> list[Part]:
        """The parts of the next level, each merge task having written one run."""
        out: list[Part] = []
        for m in self.merges:
            if not m.groups:
                out.append((m.j0, m.j1, m.runs))
            else:
                out += [(oa, ob, len(m.groups)) for oa, ob in m.parts]
        return out


def next_level(parts: list[Part], fan: int, min_tasks: int) -> MergeLevel | None:
    """The merge level for ``parts``, or None when no output reads more than ``fan`` runs.
    The run follows it with the runs the level really wrote (a merge task whose buckets
    hold nothing writes none); :func:`merge_levels` with one run per merge task."""
    if all(r <= fan for _a, _b, r in parts):
        return None
    merges = []
    for j0, j1, runs in parts:
        shape = merge_shape(runs, j1 - j0, fan, min_tasks)
        if shape is None:
            merges.append(PartMerge(j0, j1, runs))
            continue
        merges.append(PartMerge(j0, j1, runs, tuple(split(runs, shape.groups)),
                                tuple((j0 + a, j0 + b) for a, b in split(j1 - j0, shape.parts))))
    return MergeLevel(tuple(merges))


def merge_levels(runs: int, outputs: int, fan: int, min_tasks: int
                 ) -> tuple[tuple[MergeLevel, ...], list[Part]]:
    """The merge levels of ``runs`` runs feeding ``outputs`` outputs (none: ``()``), and
    the parts the writes read after them."""
    parts: list[Part] = [(0, outputs, runs)]
    out = []
    while (level := next_level(parts, fan, min_tasks)) is not None:
        out.append(level)
        parts = level.after()
    return tuple(out), parts


def write_ranges(todo: Iterable[int], per_task: int) -> list[tuple[int, int]]:
    """Consecutive output indexes ``[first, end)``, at most ``per_task`` a task; a gap (an
    output that already exists) starts a new task, so a task's buckets are one range."""
    ranges: list[list[int]] = []
    for j in todo:
        if ranges and ranges[-1][1] == j and j - ranges[-1][0] < per_task:
            ranges[-1][1] = j + 1
        else:
            ranges.append([j, j + 1])
    return [(a, b) for a, b in ranges]


def decide_tasks(digest_bytes: int, memory: int, workers: int) -> int:
    """Decide tasks of the semi-join on digests (htsort --dedup by another key): one per
    memory budget of digest runs, at least two per worker thread, at most one per
    digest bucket."""
    return max(1, min(DIGEST_BUCKETS, max(2 * workers, -(-digest_bytes // memory))))


def outputs_per_task(outputs: int, total_bytes: int, memory: int, workers: int) -> int:
    """Outputs per write task: small outputs share a task (one read of each run's
    slice for all of them), keeping at least ``TASKS_PER_WORKER`` tasks per worker."""
    if outputs <= 1:
        return 1
    per_output = max(1, total_bytes // outputs)
    by_memory = max(1, memory // per_output)
    by_balance = max(1, outputs // max(1, TASKS_PER_WORKER * workers))
    return max(1, min(by_memory, by_balance, 1024))


def write_tasks(parts: list[Part], per_task: int) -> int:
    """Write tasks for ``parts`` when no output exists yet (:func:`write_ranges` of each)."""
    return sum(-(-(j1 - j0) // per_task) for j0, j1, _r in parts)


@dataclass(frozen=True)
class ExchangePlan:
    """One exchange, planned from counts: what the run does, what ``--dry-run`` shows, what
    the scratch-space check and the 100 TB model read.  Before stage 1 the runs are an
    estimate (one per memory budget of input, at least one per stage-1 task); the run
    plans its merge levels again from the runs stage 1 really wrote (:func:`next_level`)."""

    inputs: int
    outputs: int  # planned outputs (1 when only --maxcount decides how many)
    memory: int  # a task's budget
    workers: int  # worker threads
    fan_in: int
    inputs_per_task: int
    stage1_tasks: int
    runs: int  # stage-1 runs
    buckets: int
    first_pass_buckets: int  # dedup tasks of htsort's dedup pass (0: no dedup pass)
    first_pass_levels: tuple[MergeLevel, ...]  # merge levels before the dedup tasks
    decide_tasks: int  # the semi-join's decide tasks (htsort --dedup by another key), or 0
    sort_runs: int  # the runs the merge levels start from (stage 1's, or the dedup tasks')
    levels: tuple[MergeLevel, ...]
    outputs_per_task: int
    write_tasks: int
    runs_per_write: int  # the most runs one write task reads
    write_ranges: int  # run slices all write tasks read
    scratch_copies: int  # copies of the data scratch holds at once, at most

    @property
    def merge_tasks(self) -> int:
        return sum(lv.tasks for lv in self.first_pass_levels + self.levels)

    @property
    def tasks(self) -> int:
        return self.stage1_tasks + self.first_pass_buckets + self.decide_tasks \
            + self.merge_tasks + self.write_tasks

    @property
    def range_requests(self) -> int:
        """Requests of merge and write tasks: 2 a run slice (offsets, then data)."""
        return 2 * (sum(lv.ranges for lv in self.first_pass_levels + self.levels)
                    + self.write_ranges)

    @property
    def passes(self) -> int:
        """Passes over the data: stage 1 and the writes, one a merge level, and the dedup
        tasks' read and write."""
        dedup = 1 + len(self.first_pass_levels) if self.first_pass_buckets else 0
        return 2 + len(self.levels) + dedup


def plan_exchange(*, inputs: int, shard_bytes: float | None, outputs: int | None,
                  memory: int, workers: int, shuffle: bool, fan: int | None = None,
                  dedup_pass: bool = False, semijoin: bool = False,
                  beside: bool = False, table: int = 0) -> ExchangePlan:
    """Plan an exchange of ``inputs`` shards of about ``shard_bytes`` each (None: unknown)
    into ``outputs`` outputs (None: --maxcount decides) on ``workers`` worker threads,
    ``memory`` bytes a task; ``fan`` overrides the fan-in.  ``dedup_pass``: htsort's
    --dedup by another key (stage 1 by content, merge levels, dedup tasks, then the sort);
    ``semijoin``: the same by digests (stage 1 by the sort key with the digests beside,
    decide tasks: no pass more); ``beside``: the outputs land on scratch's file system
    (for ``scratch_copies``); ``table``: the bytes of a --keep/--drop list's digest table
    joined through the exchange by the decide tasks (``semijoin`` too: :mod:`.listjoin`)."""
    group = inputs_per_task(inputs, shard_bytes, memory, workers)
    stage1 = -(-inputs // group)
    data = int((shard_bytes or 0) * inputs)
    runs = stage1 * max(1, -(-int((shard_bytes or 0) * group) // memory))
    fan_ = fan_in(memory, fan)
    planned = outputs or 1
    first_buckets, first_levels, sort_runs = 0, (), runs
    if dedup_pass:
        first_buckets = max(1, min(MAX_BUCKETS, max(stage1, -(-data // memory))))
        first_levels, _parts = merge_levels(runs, first_buckets, fan_, 2 * workers)
        sort_runs = first_buckets * max(1, math.ceil(data / first_buckets / memory))
    levels, parts = merge_levels(sort_runs, planned, fan_, 2 * workers)
    per = outputs_per_task(planned, data, memory, workers)
    decide = decide_tasks(data // DIGEST_SHARE + table, memory, workers) if semijoin else 0
    writes = write_tasks(parts, per)
    copies = 2 if levels or dedup_pass or beside else 1
    return ExchangePlan(
        inputs=inputs, outputs=planned, memory=memory, workers=workers, fan_in=fan_,
        inputs_per_task=group, stage1_tasks=stage1, runs=runs,
        buckets=bucket_count(outputs, shuffle), first_pass_buckets=first_buckets,
        first_pass_levels=first_levels, decide_tasks=decide, sort_runs=sort_runs,
        levels=levels, outputs_per_task=per, write_tasks=writes,
        runs_per_write=max(r for _a, _b, r in parts),
        write_ranges=sum(-(-(j1 - j0) // per) * r for j0, j1, r in parts) + writes * decide,
        scratch_copies=copies)
