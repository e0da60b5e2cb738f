"""The (MS)² exchange under htshuffle and htsort, in small modules:

* :mod:`.keys`    sort keys, random keys, buckets, splitters;
* :mod:`.runfile` the run-file format (its only owner) and sample encoding;
* :mod:`.plan`    pure planning: fan-in, input grouping, merge levels, write chunks;
* :mod:`.tasks`   partition (stage 1), merge (extra levels), key sampling, run cursors;
* :mod:`.write`   the write tasks (whole buckets, or exact --maxcount slices);
* :mod:`.dedup`   the task between htsort's two passes when --dedup is not its key;
* :mod:`.job`     the driver: stages in order, summary, scratch clean-up.
"""

from __future__ import annotations

from htools.exchange.job import ExchangeSpec, run_exchange
from htools.exchange.keys import KeySpec, bucket_fn, pick_splitters
from htools.exchange.plan import group_buckets
from htools.exchange.tasks import StageOne, StageTwo

__all__ = ["ExchangeSpec", "KeySpec", "StageOne", "StageTwo", "bucket_fn", "group_buckets",
           "pick_splitters", "run_exchange"]
