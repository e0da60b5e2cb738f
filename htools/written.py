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
from collections.abc import Iterable, Iterator, Sequence
from typing import IO

CHUNK = 1024  # rows a spooled chunk holds
DICT_MAX = 4096  # outputs found through a dict (no numpy to import: 70 ms); more: _Finder


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
        for rows in self._chunks():
            yield from rows

    def __iter__(self) -> Iterator[dict]:
        return map(self._entry, self.rows())

    def entry(self, i: int) -> dict:
        """Entry number ``i`` (in the order appended)."""
        return self._entry(self._row(i))

    def order(self, outputs: Sequence[str]) -> array:
        """For each of ``outputs``, its entry number (the last, for an output appended
        twice), or -1 when it has none.  Outputs are found by their hash in a sorted
        array (16 bytes an output, not a dict of a million URLs); up to :data:`DICT_MAX`
        outputs, in a dict."""
        at = array("q", [-1]) * len(outputs)
        if len(outputs) <= DICT_MAX:
            first: dict[str, int] = {}
            for j, url in enumerate(outputs):
                first.setdefault(url, j)
            for i, row in enumerate(self.rows()):
                if (j := first.get(row[0], -1)) >= 0:
                    at[j] = i
            for j, url in enumerate(outputs):  # an output named twice: both take its entry
                if at[j] < 0:
                    at[j] = at[first[url]]
            return at
        find = _Finder(outputs)
        for c, rows in enumerate(self._chunks()):
            for k, j in enumerate(find.first_of([row[0] for row in rows])):
                if j >= 0:
                    at[j] = c * CHUNK + k
        for j in find.repeated():  # an output named twice: both take its entry
            first = find.first(outputs[j])
            if at[j] < 0 and first != j:
                at[j] = at[first]
        return at

    def _chunks(self) -> Iterator[list[tuple]]:
        """The rows, a chunk of :data:`CHUNK` at a time (the unspooled ones last)."""
        for c in range(len(self._offsets) - 1):
            yield self._chunk(c)
        yield self._rows

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


class _Finder:
    """Where each URL first stands in ``outputs``: their hashes sorted (stably, so that
    equal hashes keep the outputs' order), searched a chunk of URLs at a time; a hash
    found is checked against the URL itself."""

    def __init__(self, outputs: Sequence[str]) -> None:
        import numpy as np  # here, not at import: 70 ms of every command's start

        self.outputs = outputs
        hashes = np.fromiter((hash(u) for u in outputs), dtype=np.int64, count=len(outputs))
        self.by = np.argsort(hashes, kind="stable")
        self.hashes = hashes[self.by]

    def first(self, url: str) -> int:
        """The first j with ``outputs[j] == url``, or -1."""
        import numpy as np

        h = hash(url)
        k = int(np.searchsorted(self.hashes, h))
        while k < len(self.hashes) and self.hashes[k] == h:
            j = int(self.by[k])
            if self.outputs[j] == url:
                return j
            k += 1
        return -1

    def first_of(self, urls: list[str]) -> list[int]:
        """:meth:`first` of each of ``urls`` (the first candidate is nearly always it)."""
        import numpy as np

        if not urls or not len(self.hashes):
            return [-1] * len(urls)
        ks = np.searchsorted(self.hashes, np.fromiter(map(hash, urls), dtype=np.int64,
                                                      count=len(urls)))
        js = self.by[np.minimum(ks, len(self.by) - 1)].tolist()
        return [j if self.outputs[j] == u else self.first(u) for u, j in zip(urls, js)]

    def repeated(self) -> list[int]:
        """Outputs whose hash an earlier one has (the same URL named again, mostly)."""
        import numpy as np

        same = np.flatnonzero(self.hashes[1:] == self.hashes[:-1]) + 1
        return self.by[same].tolist()
