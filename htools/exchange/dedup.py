"""htsort --dedup F by another sort key K with a ``reduce_samples()``: the task between
the two passes.  (Without a reduce, the job is a semi-join on digests instead, in the
plain sort's passes: :mod:`.semijoin`; :func:`.dedupjob.dedup_mode` decides.)

Duplicates of F must meet to be dropped, and samples must meet by K to be sorted; one
bucketing cannot do both.  So the first pass partitions by F's content
(:func:`.keys.first_pass_key`: duplicates adjacent, the first in input order first,
each record carrying K and its input place), then :func:`dedup_and_partition` reads
one range of those buckets, drops the duplicates and partitions the survivors by K
into sorted runs, exactly as a stage-1 task would, keys ``[K, input place]`` so that
equal K keep their input order.  The second pass (merge levels, writes) is the
ordinary one.  Records travel as bytes: a sample is decoded only to compare F within
a group of equal content keys (a 63-bit key shared by different F values).
"""

from __future__ import annotations

import itertools

import numpy as np

from htools.exchange.cursors import bucket_records, close_all, open_cursors
from htools.exchange.groups import dedup
from htools.exchange.keys import bucket_fn, second_pass_key
from htools.exchange.partition import Spiller, heap_kept
from htools.exchange.runfile import Run, pack_key, rekeyed
from htools.exchange.specs import StageOne, StageTwo
from htools.runtime.memory import peak_rss, rss
from htools.runtime.task import shard_task


def dedup_and_partition(runs: list[Run], a: int, b: int, task: int, one: StageOne,
                        two: StageTwo) -> dict:
    """First-pass buckets ``[a, b)`` of ``runs`` -> duplicates dropped -> sorted
    second-pass runs in scratch (returned with their per-bucket counts)."""
    rss0 = rss()
    out = Spiller(one, task, np.zeros(one.buckets, dtype=np.int64))
    duplicates = [0]
    with shard_task(f"{len(runs)} runs, buckets {a}..{b - 1}", one.scratch,
                    max_errors=one.max_errors) as result, heap_kept(one.memory):
        cursors = open_cursors(runs, a, b, two.scratch_options)
        try:
            merged = itertools.chain.from_iterable(
                bucket_records(cursors, bucket, False) for bucket in range(a, b))
            kept = dedup(merged, two, result, one.scratch, duplicates,
                         group=lambda rec: rec[0][0])
            _partition(kept, one, out)
        except BaseException:
            out.discard()
            raise
        finally:
            close_all(cursors)
    result.extra = {**out.made(), "duplicates": duplicates[0], "rss_start": rss0,
                    "peak_rss": peak_rss()}
    return result.as_dict()


def _partition(records_, one: StageOne, out: Spiller) -> None:
    """Survivors -> buffers per second-pass bucket, spilled as sorted runs."""
    bucket_of = bucket_fn(one.key, one.buckets, one.splitters)
    reverse = one.key.reverse
    for k, skey, rec, start in records_:
        k2 = second_pass_key(k, reverse)
        out.add(bucket_of(k2[0]), k2, rekeyed(pack_key(k2), skey, rec, start))
    out.close()


def two_passes(key) -> bool:
    """Whether a job's --dedup needs the dedup pass: a sort by anything but F itself
    (a shuffle's keys, and a sort by F, bring duplicates together already)."""
    return bool(key.dedup) and key.mode != "random" \
        and not (key.mode == "field" and key.field == key.dedup)
