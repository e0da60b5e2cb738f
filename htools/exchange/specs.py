"""What the exchange ships to its tasks: :class:`StageOne` (partition and dedup tasks:
scratch, buckets, key, splitters, script, budget) and :class:`StageTwo` (merge and write
tasks: order, reduce, --merge, --dedup), both frozen; and the storage options of scratch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from htools.exchange.keys import KeySpec
from htools.selection import Selection
from htools.usercode.script import Script


def scratch_options(options: dict | None) -> dict:
    """The job's storage options (endpoints, credentials) with no fsync for local runs:
    a run file lives only as long as the job."""
    options = dict(options or {})
    options["file"] = {**options.get("file", {}), "fsync": False}
    return options


@dataclass(frozen=True)
class StageOne:
    """Everything a partition task needs (shipped to every task)."""

    scratch: str
    buckets: int
    key: KeySpec
    splitters: tuple = ()
    script: Script | None = None  # process_sample / sort_key, or None
    memory: int = 256 << 20
    max_errors: int = 0
    options: dict = field(default_factory=dict)
    mtime: float | None = 0
    counts: bool = True  # return per-bucket counts (the client balances outputs by them)
    first_pass: bool = False  # htsort --dedup F by another key: bucket by F's content
    group_by: str = ""  # keys files of distinct groups beside each run: "key", or "head"
    select: Selection | None = None  # --keep/--drop LIST, applied as samples are read
    # (a key's first element, after htsort's dedup pass); "" none (see .groupcount)
    dedup_buckets: int = 0  # htsort --dedup by another key as a semi-join: keys [K, place]
    # and digest runs of this many buckets beside the runs (.semijoin); 0: none
    select_join: bool = False  # a large --keep/--drop list joins through the exchange
    # (.listjoin): digests of its values beside the runs instead of lookups


@dataclass(frozen=True)
class StageTwo:
    """What merge and write tasks need besides their runs and buckets."""

    reverse: bool = False
    reduce: Script | None = None  # a script with reduce_samples, or None
    merge: bool = False  # join samples with equal __key__ (htsort --merge)
    max_errors: int = 0
    mtime: float | None = 0
    options: dict = field(default_factory=dict)
    dedup: str | None = None  # --dedup FIELD: drop all but the first of equal FIELD bytes
    dedup_by_key: bool = False  # equal sort keys imply identical FIELD bytes (no decoding)
    index: bool = True  # hash what is written, for the shard index
    positions: bool = False  # keys are [K, input place...] (after htsort's dedup pass)
    by_groups: bool = False  # --maxcount slices count groups of equal keys, not records

    @property
    def scratch_options(self) -> dict:
        return scratch_options(self.options)

    @property
    def passes_through(self) -> bool:
        """Whether the writes copy records as they come (no reduce, --merge, or dedup
        among equal keys), so that an output may end inside a bucket (--maxcount)."""
        return not (self.reduce or self.merge or self.dedup)
