"""The generator stage every reading task puts right after ``read_shard``: samples whose
value is (``--keep``) or is not (``--drop``) in the job's list pass; the others count as
read and dropped, and as unselected.

Samples are looked up a batch at a time (up to ``BATCH`` samples or ``BATCH_BYTES`` of
fields read ahead, in stream order): the batch's values are digested in one pass and
found in the memory-mapped table all at once, each within its partition (see
:class:`Lookup` and :func:`htools.selection.table.first_rows`).

When a shard's samples are all read, its counts go to the job's counts folder in one
small file named by the shard's URL (a shard read twice, by a retry or htsort's key
pre-pass, writes the same file again): the samples left out, and the table rows its
samples matched (for ``extra.selection.matched``, distinct over the job).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from itertools import compress
from typing import TypeVar

import numpy as np

from htools import storage
from htools.selection import table as tables
from htools.selection.spec import Selection
from htools.selection.values import Digests, digests, field_values, member_values
from htools.summary import ShardResult

T = TypeVar("T")
BATCH = 1024  # samples looked up at once (numpy calls amortized: 1.3 us a sample at 1024, 2.2 at 256)
BATCH_BYTES = 16 << 20  # ... or fewer, when their fields reach this many bytes


def batch_digests(batch: list[dict], sel: Selection
                  ) -> tuple[Digests, np.ndarray | None, list[tuple[int, ValueError]]]:
    """The digests of what ``sel`` matches in each sample of ``batch`` (high and low
    halves), which are present (None: all), and (index, error) of the samples whose
    value cannot be read (a JSON field that does not parse: not present)."""
    if sel.member is None:  # a field's bytes: its trailing newline cut vectorised
        found, present = digests(field_values(batch, sel.field), sel.key, strip_newline=True)
        return found, present, []
    values, errors, complete = member_values(batch, sel)
    found, present = digests(values, sel.key, complete=complete)
    return found, present, errors


def count_failed(result: ShardResult, url: str, sel: Selection, sample: dict,
                 e: ValueError) -> None:
    """A sample whose value ``sel`` cannot read: read, and failed with ``e``."""
    result.samples_read += 1
    result.sample_error(url, sample.get("__key__", ""), f"{sel.flag} --select-by {sel.by}", e)


class Lookup:
    """The job's table in this process, deciding batches of one shard's samples; it
    collects the rows matched and (when ``result`` counts) the samples left out."""

    def __init__(self, sel: Selection, url: str, result: ShardResult | None,
                 options: dict | None):
        self.sel, self.url, self.result = sel, url, result
        self.table = tables.load(sel.table, sel.digest, options, sel.budget, sel.listed)
        self.keep = sel.mode == "keep"
        self.matched: list[np.ndarray] = []
        self.left_out = 0

    def passes(self, batch: list[dict]) -> list[bool]:
        """Whether each sample of ``batch`` passes; a sample whose value cannot be read
        (a JSON field that does not parse) does not, and is counted as failed."""
        found, present, errors = batch_digests(batch, self.sel)
        bad = [i for i, _e in errors]
        if self.result is not None:
            for i, e in errors:
                count_failed(self.result, self.url, self.sel, batch[i], e)
        rows = self.table.rows(found, present)
        hit = rows >= 0
        if hit.any():
            self.matched.append(rows[hit])
        passing = hit == self.keep
        passing[bad] = False
        if self.result is not None:
            left = len(batch) - int(passing.sum()) - len(bad)
            self.left_out += left
            self.result.samples_read += left
            self.result.samples_dropped += left
        return passing.tolist()

    def close(self, options: dict | None) -> None:
        """Write this shard's counts file (when counting)."""
        if self.result is not None:
            rows = np.concatenate(self.matched) if self.matched else np.zeros(0, np.int64)
            write_counts(self.sel, self.url, self.left_out, rows, options)


def selected(samples: Iterator[dict], sel: Selection | None, result: ShardResult | None,
             url: str, options: dict | None = None) -> Iterator[dict]:
    """``samples`` without those the selection leaves out (all of them when ``sel`` is
    None); ``result`` None: filtered without counting (a second read of a shard whose
    counts a first pass wrote)."""
    return select_items(samples, same_sample, sel, result, url, options)


def same_sample(sample: dict) -> dict:
    """The ``sample_of`` of items that are samples (:func:`batches` then makes no list
    of them again)."""
    return sample


def select_items(items: Iterator[T], sample_of: Callable[[T], dict], sel: Selection | None,
                 result: ShardResult | None, url: str, options: dict | None = None
                 ) -> Iterator[T]:
    """:func:`selected` over items that each carry a sample (``sample_of(item)``)."""
    if sel is None:
        return items
    return _selected(items, sample_of, Lookup(sel, url, result, options), options)


def _selected(items: Iterator[T], sample_of: Callable[[T], dict], lookup: Lookup,
              options: dict | None) -> Iterator[T]:
    same = sample_of is same_sample  # samples themselves: no list of them made again
    for batch in batches(items, sample_of):
        yield from compress(batch, lookup.passes(
            batch if same else [sample_of(i) for i in batch]))
    lookup.close(options)


def batches(items: Iterator[T], sample_of: Callable[[T], dict]) -> Iterator[list[T]]:
    """``items`` in lists of up to ``BATCH`` samples or ``BATCH_BYTES`` of fields."""
    batch: list[T] = []
    size = 0
    same = sample_of is same_sample
    for item in items:
        batch.append(item)
        sample = item if same else sample_of(item)
        try:
            size += sum(map(len, sample.values()))  # str keys count too: close
        except TypeError:  # a value without a length
            size += sum(len(v) for v in sample.values() if hasattr(v, "__len__"))
        if size >= BATCH_BYTES or len(batch) >= BATCH:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def counts_url(sel: Selection, url: str) -> str:
    name = hashlib.blake2b(url.encode("utf-8"), digest_size=12).hexdigest()
    return storage.join(sel.counts, f"{name}.npy")


def write_counts(sel: Selection, url: str, left_out: int, matched: np.ndarray,
                 options: dict | None) -> None:
    """[samples left out, distinct rows matched...] as one .npy file."""
    rows = np.unique(np.asarray(matched, dtype=np.int64))
    buf = io.BytesIO()
    np.save(buf, np.concatenate([np.array([left_out], dtype=np.int64), rows]))
    with storage.open_write(counts_url(sel, url), options) as out:
        out.write(buf.getvalue())


def read_counts(data: bytes) -> tuple[int, np.ndarray]:
    arr = np.load(io.BytesIO(data))
    return int(arr[0]), arr[1:]
