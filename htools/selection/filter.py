"""The generator stage every reading task puts right after ``read_shard``: samples whose
value is (``--keep``) or is not (``--drop``) in the job's list pass; the others count as
read and dropped, and as unselected.

When a shard's samples are all read, its counts go to the job's counts folder in one
small file named by the shard's URL (a shard read twice, by a retry or htsort's key
pre-pass, writes the same file again): the samples left out, and the table rows its
samples matched (for ``extra.selection.matched``, distinct over the job).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator

import numpy as np

from htools import storage
from htools.selection import table as tables
from htools.selection.spec import Selection
from htools.selection.values import digest, sample_value
from htools.summary import ShardResult


def selected(samples: Iterator[dict], sel: Selection | None, result: ShardResult,
             url: str, options: dict | None = None) -> Iterator[dict]:
    """``samples`` without those the selection leaves out (all of them when ``sel`` is None)."""
    return samples if sel is None else _selected(samples, sel, result, url, options)


def _selected(samples: Iterator[dict], sel: Selection, result: ShardResult, url: str,
              options: dict | None) -> Iterator[dict]:
    table = tables.load(sel.table, sel.digest, options)
    keep = sel.mode == "keep"
    matched: list[int] = []
    left_out = 0
    for s in samples:
        try:
            value = sample_value(s, sel)
        except ValueError as e:
            result.samples_read += 1
            result.sample_error(url, s.get("__key__", ""), f"{sel.flag} --select-by {sel.by}",
                                e)
            continue
        row = table.index(digest(value)) if value is not None else -1
        if row >= 0:
            matched.append(row)
        if (row >= 0) == keep:
            yield s
        else:
            result.samples_read += 1
            result.samples_dropped += 1
            left_out += 1
    write_counts(sel, url, left_out, matched, options)


def counts_url(sel: Selection, url: str) -> str:
    name = hashlib.blake2b(url.encode("utf-8"), digest_size=12).hexdigest()
    return storage.join(sel.counts, f"{name}.npy")


def write_counts(sel: Selection, url: str, left_out: int, matched: list[int],
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
