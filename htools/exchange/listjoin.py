"""htshuffle and htsort --keep/--drop with a list larger than a worker should fetch: the
list joins the samples through the exchange (issue 23, item 4), as a semi-join on
digests like :mod:`.semijoin`'s dedup.

*Which mode* (:func:`joins`): the list's sorted digest table (16 bytes a listed value,
:mod:`htools.selection.table`) is fetched by every worker when it is at most
:func:`fetch_budget` bytes -- a quarter of the task memory budget (``--memory``), or
``HTOOLS_LIST_FETCH_BYTES`` when set -- and joined through the exchange when larger.

*Stage 1* (:func:`tagged`): where the small-list path looks a sample up (as it is read,
before a script's ``process_sample``), the large-list path takes the 128-bit digest of
its ``--select-by`` value and its input place, and carries them with every sample the
script makes of it (:func:`joined_key`): stage 1's :class:`.semijoin.DigestTee` writes
one digest record a sample -- the digest, the place and the sort bucket -- by digest.

*Decide tasks* (:func:`join_slice`): one range of digest buckets each; the table is
sorted by digest, so the range is one contiguous slice of the table file, found by
binary search and read by range.  Records not matched (``--keep``) or matched
(``--drop``) go to the task's drop run by sort bucket, which the write tasks apply
(:class:`.semijoin.DropFilter`); their counts file (listed rows matched, samples left
out) is the one :func:`htools.selection.job.account` reads, as from the small path.

*The same bytes as the small-list path*: the keys are ``[K, position, ordinal]``, whose
order is the plain key's with ties in input order; a shuffle draws one random key a
sample that reaches its key -- the small path draws one more for every sample the list
left out (:func:`drawing`), as the join path's left-out samples draw theirs; htsort's
splitter pre-pass samples keys of every sample read in both modes.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np

from htools import storage
from htools.errors import HtoolsError
from htools.exchange.keys import KeySpec, Placed, checked_key, second_pass_key
from htools.exchange.plan import DIGEST_BUCKETS
from htools.exchange.runfile import Run
from htools.exchange.semijoin import decided, digest_records, write_drop_run
from htools.exchange.sizing import human_size
from htools.runtime.memory import rss
from htools.runtime.task import shard_task
from htools.selection import Selection, selected
from htools.selection.filter import batch_digests, batches, count_failed, same_sample, write_counts
from htools.selection.table import bounds_url, halves, part_bits, search
from htools.selection.values import digest_bytes
from htools.summary import ShardResult

FETCH_SHARE = 4  # a worker fetches a table of at most 1/4 of the task memory budget
FETCH_ENV = "HTOOLS_LIST_FETCH_BYTES"  # overrides the budget (bytes; tests force either mode)
ROW = 16  # table bytes a listed value
CHUNK = 1 << 16  # digest records a decide task looks up at once
MISSING = b""  # the digest of a sample without the value (never matched)


def fetch_budget(memory: int) -> int:
    """The largest table (bytes) a worker fetches: ``memory // FETCH_SHARE``, or the
    ``HTOOLS_LIST_FETCH_BYTES`` environment variable."""
    env = os.environ.get(FETCH_ENV, "").strip()
    return int(env) if env else memory // FETCH_SHARE


def table_bytes(sel: Selection, options: dict | None) -> int:
    """The table's size: 16 bytes a listed value once built; before (a dry run), the list
    file's size stands for it."""
    if sel.table:
        return ROW * sel.listed
    try:
        return storage.size(sel.source, options)
    except HtoolsError:
        return 0


def joins(spec, memory: int, options: dict | None, table: int | None = None) -> bool:
    """Whether ``spec``'s list (an :class:`.job.ExchangeSpec`) joins through the exchange
    (``table``: its :func:`table_bytes`, when known); a large list in a job the join
    cannot serve is refused in one line."""
    sel = spec.select
    if sel is None:
        return False
    table = table_bytes(sel, options) if table is None else table
    if table <= fetch_budget(memory):
        return False
    reduce = spec.script is not None and spec.script.defines("reduce_samples")
    other = ("--dedup" if spec.key.dedup else "--merge" if spec.merge
             else "reduce_samples()" if reduce else "")
    if other:
        raise HtoolsError(
            f"{sel.flag} list of {table} table bytes is larger than a worker "
            f"fetches ({fetch_budget(memory)}: a quarter of --memory, or {FETCH_ENV}) and joins "
            f"through the exchange, which does not combine with {other}: raise --memory, or "
            "select first and run this on the selected shards")
    return True


def plan_line(sel: Selection, joined: bool, memory: int, decide_tasks: int,
              table: int) -> str:
    """The plan's line of the selection (``table``: its :func:`table_bytes`): which
    mode, and the join's decide tasks."""
    size = human_size(table)
    head = (f"selection: {sel.flag} by {sel.by}, a digest table of {size}"
            + ("" if sel.table else " (about: the list file's size)"))
    budget = human_size(fetch_budget(memory))
    if not joined:
        return f"{head}: every worker fetches it once (at most {budget}: a quarter of --memory)"
    return (f"{head}, more than a worker fetches ({budget}): joined through the exchange -- "
            "stage 1 also writes each sample's digest of its value and place (about 40 bytes) "
            f"by digest; {decide_tasks} decide tasks each read one slice of the table and hand "
            "each write task the places to drop (no pass more)")


class Tags:
    """What stage 1 knows of the input sample being keyed: its ordinal in its shard and
    the digest of its value (the join path), and the random keys owed for samples the
    small path left out since the last one keyed (:func:`drawing`)."""

    __slots__ = ("ordinal", "digest", "owed")

    def __init__(self) -> None:
        self.ordinal, self.digest, self.owed = 0, MISSING, 0


def tagged(samples: Iterator[dict], sel: Selection, result: ShardResult, url: str,
           tags: Tags) -> Iterator[dict]:
    """The join path's selection stage: every sample passes, ``tags`` naming its place
    and digest as it does; a sample whose value cannot be read fails, as in the small
    path (and owes its random key, as the small path's do).  Values are digested a
    batch at a time, as the small path looks them up (:class:`.filter.Lookup`)."""
    ordinal = 0
    for batch in batches(samples, same_sample):
        (hi, lo), present, errors = batch_digests(batch, sel)
        bad = {i for i, _e in errors}
        for i, e in errors:
            count_failed(result, url, sel, batch[i], e)
        raw = digest_bytes(hi, lo)
        has_value = [True] * len(batch) if present is None else present.tolist()
        for i, (s, has) in enumerate(zip(batch, has_value)):
            if i in bad:
                tags.owed += 1
                continue
            tags.ordinal = ordinal + i
            tags.digest = raw[i * ROW:(i + 1) * ROW] if has else MISSING
            yield s
        ordinal += len(batch)


def small_selected(samples: Iterator[dict], sel: Selection | None, result: ShardResult,
                   url: str, options: dict | None, tags: Tags | None) -> Iterator[dict]:
    """The small path's selection (:func:`htools.selection.selected`); with ``tags``,
    the samples it leaves out (or fails) before each one it passes are owed random keys."""
    if sel is None or tags is None:
        yield from selected(samples, sel, result, url, options)
        return
    pulled: deque[int] = deque()

    def pulling() -> Iterator[dict]:
        for s in samples:
            pulled.append(id(s))
            yield s

    for s in selected(pulling(), sel, result, url, options):
        while pulled.popleft() != id(s):
            tags.owed += 1
        yield s


def drawing(key_of: Callable[[dict], object], tags: Tags) -> Callable[[dict], object]:
    """A shuffle's random key that first draws (and discards) the keys owed."""

    def key(sample: dict):
        while tags.owed:
            tags.owed -= 1
            key_of(sample)
        return key_of(sample)

    return key


def joined_key(key: KeySpec, script, index: int, tags: Tags) -> Callable[[dict], Placed]:
    """The join path's stage-1 key: ``[K, position, ordinal]`` of the input sample it
    came from (negated under reverse, as :func:`.keys.second_pass_key`), carrying the
    digest of that sample's value to the :class:`.semijoin.DigestTee`."""
    sort_key = key.key_fn(script, index)
    if key.mode == "random":
        sort_key = drawing(sort_key, tags)
    reverse = key.reverse

    def key_of(sample: dict) -> Placed:
        k = checked_key(sort_key(sample))
        out = Placed(second_pass_key([None, index, tags.ordinal, k], reverse))
        out.digest = tags.digest
        return out

    return key_of


def join_slice(runs: list[Run], a: int, b: int, url: str, buckets: int, sel: Selection,
               options: dict) -> dict:
    """Decide task: digest buckets ``[a, b)`` of ``runs`` joined with the same range of
    the table (one slice, read by range) -> the places the list leaves out, in one drop
    run at ``url`` (by sort bucket; none when nothing is left out), their counts per sort
    bucket, and the task's counts file (rows matched, records left out).  The digest
    records stream through in chunks; what stays is the slice and 12 bytes a record left
    out."""
    rss0 = rss()
    keep = sel.mode == "keep"
    made, counts, left_out = None, (b"", b""), 0  # a failed task's (shard_task keeps it)
    with shard_task(f"{len(runs)} digest runs, buckets {a}..{b - 1}", url) as result:
        start, hi, lo = _table_slice(sel.table, sel.listed, a, b, DIGEST_BUCKETS,
                                     options)
        places, sort_buckets, matched = [], [], []
        for found, where, bucket_of in _digest_chunks(runs, a, b, options):
            present = np.fromiter((len(d) == ROW for d in found), dtype=bool,
                                  count=len(found))
            qhi, qlo = halves(b"".join(d if len(d) == ROW else bytes(ROW) for d in found))
            rows = search(hi, lo, qhi, qlo, present)
            hit = rows >= 0
            out = ~hit if keep else hit
            places.append(where[out])
            sort_buckets.append(bucket_of[out])
            matched.append(rows[hit] + start)
            result.samples_read += len(found)
        dropped = np.concatenate(places) if places else np.zeros(0, np.uint64)
        left_out = len(dropped)
        made, counts = write_drop_run(
            url, np.concatenate(sort_buckets) if sort_buckets else np.zeros(0, np.int64),
            dropped, buckets, options)
        write_counts(sel, f"{url}#decide",
                     left_out, np.concatenate(matched) if matched else np.zeros(0, np.int64),
                     options)
        result.samples_dropped += left_out
    result.extra = decided(made, counts, rss0, unselected=left_out)
    return result.as_dict()


def _digest_chunks(runs: list[Run], a: int, b: int, options: dict
                   ) -> Iterator[tuple[list[bytes], np.ndarray, np.ndarray]]:
    """The digest records of buckets ``[a, b)``, merged, ``CHUNK`` at a time: their
    digests, places and sort buckets."""
    chunk: list[list] = []
    for k in digest_records(runs, a, b, options):
        chunk.append(k)
        if len(chunk) >= CHUNK:
            yield _columns(chunk)
            chunk = []
    if chunk:
        yield _columns(chunk)


def _columns(chunk: list[list]) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    return ([k[0] for k in chunk],
            np.fromiter((k[1] << 32 | k[2] for k in chunk), dtype=np.uint64, count=len(chunk)),
            np.fromiter((k[3] for k in chunk), dtype=np.int64, count=len(chunk)))


def _table_slice(url: str, n: int, a: int, b: int, buckets: int, options: dict
                 ) -> tuple[int, np.ndarray, np.ndarray]:
    """The rows of the table at ``url`` (``n`` rows) whose digest falls in digest buckets
    ``[a, b)``: the first row, and the rows' high and low halves (for
    :func:`~htools.selection.table.search`: rows relative to the first).  Each edge is found in
    the one partition of the table that holds it (its bounds, then its high halves: two
    small range reads), then the slice is two range reads: six requests, whatever the
    table's size."""
    bounds = bounds_url(url)
    bits = part_bits(n)  # as the table's build cut its partitions
    start = _first_row(url, bounds, bits, -(-(a << 64) // buckets), options)
    stop = n if b >= buckets else _first_row(url, bounds, bits, -(-(b << 64) // buckets),
                                             options)
    if stop <= start:
        return start, np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    hi = storage.read_range(url, 8 * start, 8 * stop, options)
    lo = storage.read_range(url, 8 * (n + start), 8 * (n + stop), options)
    return (start, np.frombuffer(hi, dtype="<u8").astype(np.uint64),
            np.frombuffer(lo, dtype="<u8").astype(np.uint64))


def _first_row(url: str, bounds: str, bits: int, value: int, options: dict) -> int:
    """The first row whose high half is at least ``value`` (< 2^64): it lies in the
    partition of ``value``'s top ``bits`` bits, or is the next partition's first row."""
    p = value >> (64 - bits) if bits else 0
    first, end = (int(v) for v in np.frombuffer(
        storage.read_range(bounds, 8 * p, 8 * p + 16, options), "<i8"))
    if end <= first:
        return first
    hi = np.frombuffer(storage.read_range(url, 8 * first, 8 * end, options), "<u8")
    return first + int(np.searchsorted(hi, np.uint64(value), side="left"))
