"""What the exchange ships to its tasks: :class:`StageOne` (partition and dedup tasks:
scratch, buckets, key, splitters, script, budget) and :class:`StageTwo` (merge and write
tasks: order, reduce, --merge, --dedup), both frozen; and the storage options of scratch.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

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


# ------------------------------------------------------- spans of shards --
# A task's inputs or outputs travel as a range of the job's list, not as one tuple a
# shard: a million outputs' (url, a, b) tuples held ~200 bytes a shard on the client.

_NUMBER = re.compile(r"^(.*?)(\d+)(\D*)$")  # the last run of digits of a URL


@dataclass(frozen=True)
class Numbered(Sequence):
    """``n`` URLs ``prefix + number + suffix``, numbers from ``start`` zero-padded to
    ``width`` (what a brace range ``in-{000..999}`` or ``out-@1000`` names): the task
    makes its URLs itself from these five values."""

    prefix: str
    width: int
    suffix: str
    start: int
    n: int

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        return f"{self.prefix}{self.start + i:0{self.width}d}{self.suffix}"

    def __iter__(self) -> Iterator[str]:
        p, w, s = self.prefix, self.width, self.suffix
        return (f"{p}{k:0{w}d}{s}" for k in range(self.start, self.start + self.n))


def compact(urls: Sequence[str], a: int, b: int) -> Sequence[str]:
    """``urls[a:b]`` as :class:`Numbered` when they follow one (checked URL by URL),
    else as a list (an arbitrary list of inputs)."""
    if isinstance(urls, Numbered):
        a, b = min(a, len(urls)), min(b, len(urls))
        return replace(urls, start=urls.start + a, n=max(0, b - a))
    part = list(urls[a:b])  # a slice: O(b - a) wherever the range starts
    m = _NUMBER.match(part[0]) if part else None
    if m is not None:
        prefix, digits, suffix = m.groups()
        span = Numbered(prefix, len(digits), suffix, int(digits), len(part))
        if all(x == y for x, y in zip(span, part)):
            return span
    return part


@dataclass(frozen=True, eq=False)
class InputSpan:
    """A stage-1 task's inputs: ``urls``, at places ``first``... of the job's inputs;
    iterated as ``(place, url)``."""

    urls: Sequence[str]
    first: int

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return enumerate(self.urls, self.first)


@dataclass(frozen=True, eq=False)
class OutputSpan(Sequence):
    """A write task's outputs: ``urls`` and their buckets ``[a, b)`` (arrays), and with
    exact --maxcount their slices (rows of begin, count, bucket_begin); items are the
    ``(url, a, b[, begin, count, bucket_begin])`` tuples the task writes."""

    urls: Sequence[str]
    a: np.ndarray | range
    b: np.ndarray | range
    slices: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, j):  # type: ignore[override]
        if isinstance(j, slice):
            return [self[k] for k in range(*j.indices(len(self)))]
        rest = tuple(self.slices[j].tolist()) if self.slices is not None else ()
        return (self.urls[j], int(self.a[j]), int(self.b[j]), *rest)

    def __iter__(self) -> Iterator[tuple]:
        a, b = (x.tolist() if isinstance(x, np.ndarray) else x for x in (self.a, self.b))
        rows = self.slices.tolist() if self.slices is not None else None
        for j, url in enumerate(self.urls):
            yield (url, a[j], b[j], *rows[j]) if rows is not None else (url, a[j], b[j])
