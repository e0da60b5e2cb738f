"""Planning the exchange: pure functions of counts, no I/O (unit-tested on their own).

Costs the plan keeps (N inputs, M outputs, F fan-in, W worker threads):

* stage 1 groups small inputs so that a task reads about one memory budget
  (:func:`inputs_per_task`): R runs, about N / group + spills;
* while some output would read more than F runs, a merge level groups runs F at a
  time and splits the outputs into parts; each merge task reads F ranges (one per run
  of its group, its part's buckets) and writes one run: R shrinks F-fold per level
  (:func:`merge_shape`);
* write tasks take consecutive outputs (:func:`write_chunks`) and read one range per
  run of their part: requests total about R*(parts) + M*G instead of N*M.

The client holds O(N + M + buckets): run URLs and sizes, output bucket ranges, and
the counts per bucket summed over stage 1; never offsets per run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STREAM_COST = 2 << 20  # memory to budget per open run stream (reader buffer, records)
MIN_FAN_IN, MAX_FAN_IN = 4, 256
BUCKETS_PER_OUTPUT = 16
MAX_BUCKETS = 1 << 16
DEFAULT_BUCKETS = 4096  # when the number of outputs is known only after stage 1
TASKS_PER_WORKER = 4  # stage-1 / write tasks per worker thread, at least (load balance)


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


def split(n: int, pieces: int, *, allow_empty: bool = False) -> list[tuple[int, int]]:
    """``[0, n)`` cut into ``pieces`` contiguous, nearly equal ranges (none empty unless
    ``allow_empty``: then exactly ``pieces`` ranges even when ``n`` is smaller)."""
    pieces = max(1, pieces if allow_empty else min(pieces, n))
    base, extra = divmod(n, pieces)
    out, start = [], 0
    for i in range(pieces):
        stop = start + base + (i < extra)
        out.append((start, stop))
        start = stop
    return out


def group_buckets(counts: np.ndarray, outputs: int | None, maxcount: int | None
                  ) -> list[tuple[int, int]]:
    """Contiguous bucket ranges, one per output, balanced by sample count."""
    b = len(counts)
    if outputs is not None and outputs == b:
        return [(i, i + 1) for i in range(b)]
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
    return list(zip(bounds[:-1], bounds[1:]))


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


def levels(runs: int, outputs: int, fan: int, min_tasks: int) -> list[int]:
    """Merge tasks per level for ``runs`` runs and ``outputs`` outputs (no level: [])."""
    out = []
    parts = [(runs, outputs)]
    while any(r > fan for r, _m in parts):
        tasks, nxt = 0, []
        for r, m in parts:
            shape = merge_shape(r, m, fan, min_tasks)
            if shape is None:
                nxt.append((r, m))
                continue
            tasks += shape.tasks
            nxt += [(shape.groups, b - a) for a, b in split(m, shape.parts)]
        out.append(tasks)
        parts = nxt
    return out


def write_chunks(todo: list[int], per_task: int) -> list[list[int]]:
    """Consecutive output indexes, at most ``per_task`` a task; a gap (an output that
    already exists) starts a new task, so a task's buckets are one range."""
    chunks: list[list[int]] = []
    for j in todo:
        if chunks and chunks[-1][-1] == j - 1 and len(chunks[-1]) < per_task:
            chunks[-1].append(j)
        else:
            chunks.append([j])
    return chunks


def outputs_per_task(outputs: int, total_bytes: int, memory: int, workers: int) -> int:
    """Outputs per write task: small outputs share a task (one read of each run's
    slice for all of them), keeping at least ``TASKS_PER_WORKER`` tasks per worker."""
    if outputs <= 1:
        return 1
    per_output = max(1, total_bytes // outputs)
    by_memory = max(1, memory // per_output)
    by_balance = max(1, outputs // max(1, TASKS_PER_WORKER * workers))
    return max(1, min(by_memory, by_balance, 1024))
