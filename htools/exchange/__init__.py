"""The (MS)² exchange under htshuffle and htsort, in small modules:

* :mod:`.plan`      pure planning from counts: :func:`~.plan.plan_exchange` returns the
  one :class:`~.plan.ExchangePlan` that the run, ``--dry-run``, the scratch-space check
  and the 100 TB model (``benchmarks/bench_scale.py``) all use;
* :mod:`.sizing`    the numbers a plan needs from where it runs: worker threads, memory
  budget, input shard size; the default scratch and its free-space check;
* :mod:`.keys`      sort keys, random keys, buckets, splitters;
* :mod:`.runfile`   the run-file format (its only owner) and sample encoding;
* :mod:`.specs`     what tasks are shipped: StageOne (partition), StageTwo (merge, write);
* :mod:`.partition` stage 1 (and the Spiller the dedup tasks share), the key pre-pass;
* :mod:`.cursors`   reading runs: a cursor per run, one bucket of every run merged;
* :mod:`.merge`     the merge-level task;
* :mod:`.write`     the write tasks (whole buckets, or exact --maxcount slices), through
  :mod:`.groups` (dedup, --merge, reduce);
* :mod:`.semijoin`  htsort --dedup by another key as a semi-join on digests: the digest
  runs of stage 1, the decide tasks, the writes' drop filter;
* :mod:`.dedupjob`  which way a --dedup job runs, and the decide stage's driver;
* :mod:`.dedup`     the task between htsort's two passes when --dedup is not its key and
  a reduce_samples() folds the sorted samples;
* :mod:`.stages`    typed stage results, and the job's summary made from them;
* :mod:`.dryrun`    the plan as ``--dry-run`` shows it;
* :mod:`.job`       the driver: checks, lineage, the cluster, then :mod:`.runner`;
* :mod:`.runner`    one exchange on a connected client: plan, stages in order, summary,
  scratch clean-up.
"""

from __future__ import annotations

from htools.exchange.job import ExchangeSpec, run_exchange
from htools.exchange.keys import KeySpec, bucket_fn, pick_splitters
from htools.exchange.plan import ExchangePlan, group_buckets, plan_exchange
from htools.exchange.specs import StageOne, StageTwo

__all__ = ["ExchangePlan", "ExchangeSpec", "KeySpec", "StageOne", "StageTwo", "bucket_fn",
           "group_buckets", "pick_splitters", "plan_exchange", "run_exchange"]
