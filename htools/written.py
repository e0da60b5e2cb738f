"""The index entries of a job's outputs as the client collects them
(:attr:`htools.summary.JobSummary.written`): one row an output, spooled to an anonymous
temp file a chunk at a time, so a job of a million shards does not hold a million rows.

A row is a tuple: output URL, nsamples, filesize, the sha256 as its 32 bytes, the field
names (one shared tuple per distinct set of names) and their counts.  The newest
:data:`CHUNK` rows stay in memory; each full chunk is pickled, compressed and appended
to the spool (measured: 200 bytes a row in memory, 8 in the client's offset table, about
40 on disk).  Entries come back as the dicts appended, in the order appended.
"""

from __future__ import annotations

import pickle
import tempfile
import zlib
from array import array
from collections.abc import Iterable, Iterator
from typing import IO

CHUNK = 1024  # rows a spooled chunk holds


class Written:
    """The index entries (``output``, ``nsamples``, ``filesize``, ``sha256``, ``fields``)
    of a job's outputs: ``append`` an entry dict, iterate to get them back as dicts,
    equal to those appended."""

    __slots__ = ("_rows", "_names", "_spool", "_offsets", "_spooled", "_cached")

    def __init__(self, entries: Iterable[dict] = ()) -> None:
        self._rows: list[tuple] = []  # the rows not spooled yet
        self._names: dict[tuple, tuple] = {}
        self._spool: IO[bytes] | None = None  # made when the first chunk is full
        self._offsets = array("q", [0])  # where each spooled chunk starts (and the end)
        self._spooled = 0  # rows in the spool
        self._cached: dict[int, list[tuple]] = {}  # the last chunks read back
        for e in entries:
            self.append(e)

    def append(self, e: dict) -> None:
        fields = e.get("fields") or {}
        names = tuple(fields)
        names = self._names.setdefault(names, names)
        sha = digest = e["sha256"]
        if isinstance(sha, str) and len(sha) == 64:
            try:
                digest = bytes.fromhex(sha)
            except ValueError:
                pass
            else:
                digest = digest if digest.hex() == sha else sha  # lower-case hex only
        self._rows.append((e["output"], e["nsamples"], e["filesize"], digest, names,
                           tuple(fields.values())))
        if len(self._rows) >= CHUNK:
            self._spill()

    def _spill(self) -> None:
        if self._spool is None:
            self._spool = tempfile.TemporaryFile(prefix="htools-written-")
        blob = zlib.compress(pickle.dumps(self._rows, pickle.HIGHEST_PROTOCOL), 1)
        self._spool.seek(self._offsets[-1])
        self._spool.write(blob)
        self._offsets.append(self._offsets[-1] + len(blob))
        self._spooled += len(self._rows)
        self._rows = []

    def _chunk(self, c: int) -> list[tuple]:
        """Spooled chunk number ``c``'s rows (the last two read are kept: entries asked
        in output order come nearly in the order appended, a window of tasks apart)."""
        rows = self._cached.get(c)
        if rows is None and self._spool is not None:
            self._spool.seek(self._offsets[c])
            blob = self._spool.read(self._offsets[c + 1] - self._offsets[c])
            rows = pickle.loads(zlib.decompress(blob))
            if len(self._cached) >= 2:
                del self._cached[next(iter(self._cached))]
            self._cached[c] = rows
        return rows or []

    def _row(self, i: int) -> tuple:
        if i >= self._spooled:
            return self._rows[i - self._spooled]
        return self._chunk(i // CHUNK)[i % CHUNK]

    def rows(self) -> Iterator[tuple]:
        for c in range(len(self._offsets) - 1):
            yield from self._chunk(c)
        yield from self._rows

    def __iter__(self) -> Iterator[dict]:
        return map(self._entry, self.rows())

    def entry(self, i: int) -> dict:
        """Entry number ``i`` (in the order appended)."""
        return self._entry(self._row(i))

    def order(self, outputs: list[str]) -> array:
        """For each of ``outputs``, its entry number (the last, for an output appended
        twice), or -1 when it has none."""
        first: dict[str, int] = {}
        for j, u in enumerate(outputs):
            first.setdefault(u, j)
        at = array("q", [-1]) * len(outputs)
        for i, row in enumerate(self.rows()):
            j = first.get(row[0])
            if j is not None:
                at[j] = i
        for j, u in enumerate(outputs):  # an output named twice: both take its entry
            if at[j] < 0 and first[u] != j:
                at[j] = at[first[u]]
        return at

    @staticmethod
    def _entry(row: tuple) -> dict:
        output, nsamples, filesize, digest, names, counts = row
        return {"output": output, "nsamples": nsamples, "filesize": filesize,
                "sha256": digest.hex() if isinstance(digest, bytes) else digest,
                "fields": dict(zip(names, counts))}

    def __len__(self) -> int:
        return self._spooled + len(self._rows)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Written, list)):
            return list(self) == list(other)
        return NotImplemented

    def __reduce__(self):  # a copy (deepcopy, pickle) holds its entries, not the file
        return Written, (list(self),)

    def __repr__(self) -> str:
        return f"Written({len(self)} entries)"
