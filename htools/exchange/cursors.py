"""Reading runs: a :class:`Cursor` reads one run's slice of buckets front to back (two
range requests: the offset table, then the data) through one reused window
(:class:`.runfile.RecordReader`); :func:`open_cursors` opens one per run (all or none);
:func:`bucket_records` merges one bucket of every run by key, stably.  Shared by the
merge, write and dedup tasks.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from operator import itemgetter
from typing import BinaryIO

from htools.exchange.runfile import RecordReader, Run, bucket_offsets, open_slice


class Cursor:
    """One run's slice of buckets ``[a, b)``, read front to back, bucket by bucket.
    ``pos`` is where the reader stands; ``count`` the records read or skipped so far."""

    def __init__(self, run: Run, a: int, b: int, options: dict):
        self.run = run
        self.a = a
        self.offsets = bucket_offsets(run, a, b, options)
        self.start = int(self.offsets[0])
        end = int(self.offsets[-1])
        self.f: BinaryIO | None = open_slice(run, self.start, end, options) \
            if end > self.start else None
        self._reader = RecordReader(self.f, run.url, end - self.start) \
            if self.f is not None else None

    @property
    def pos(self) -> int:
        return self.start + self._reader.done if self._reader is not None else self.start

    @property
    def count(self) -> int:
        return self._reader.count if self._reader is not None else 0

    def length(self, bucket: int) -> int:
        """Bytes of ``bucket`` left to read (all of it when the cursor is at its start)."""
        return int(self.offsets[bucket - self.a + 1]) - self.pos

    def records(self, bucket: int, view: bool = False) -> Iterator[tuple]:
        """The records of ``bucket`` left to read (the reader's own generator: the
        reader counts them); with ``view``, each is a view valid until the next is asked
        for (for a caller that writes it at once)."""
        return self._reader.records(self.length(bucket), view)

    def skip_to(self, bucket: int) -> None:
        """Skip to the start of ``bucket``, counting the records passed over."""
        n = int(self.offsets[bucket - self.a]) - self.pos
        if n > 0:
            self._reader.skip(n)

    def copy(self, bucket: int) -> Iterator[memoryview]:
        """The bytes of ``bucket`` left to read, as views (each valid until the next)."""
        return self._reader.chunks(self.length(bucket))

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def bucket_records(cursors: list[Cursor], bucket: int, reverse: bool,
                   view: bool = False) -> Iterator[tuple]:
    """The records of one bucket of every run, merged by key (stable: earlier runs
    first on equal keys).  With ``view``, records are views of the cursors' windows,
    each valid until the next is asked for: for callers that write each at once (the
    merge holds one record of each run, whose window does not move until it is
    taken)."""
    live = [c for c in cursors if c.length(bucket) > 0]
    if not live:
        return iter(())
    if len(live) == 1:
        return live[0].records(bucket, view)
    return heapq.merge(*(c.records(bucket, view) for c in live), key=itemgetter(0),
                       reverse=reverse)


def open_cursors(runs: list[Run], a: int, b: int, options: dict) -> list[Cursor]:
    """A cursor on buckets ``[a, b)`` of each run; if one cannot open, none stays open."""
    cursors: list[Cursor] = []
    try:
        for run in runs:
            cursors.append(Cursor(run, a, b, options))
    except BaseException:
        close_all(cursors)
        raise
    return cursors


def close_all(cursors: list[Cursor]) -> None:
    for c in cursors:
        c.close()
