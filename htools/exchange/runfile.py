"""Run files: the only on-disk format of the exchange, and its only owner.

A run holds records of a contiguous range of buckets ``[lo, hi)``, bucket after
bucket, each bucket's records sorted by key (stably: equal keys keep input order)::

    [bucket lo records] ... [bucket hi-1 records] [offsets: hi-lo+1 x u64] [footer]

``footer`` is ``<QQ8s``: lo, hi, MAGIC.  Offsets are byte positions of each bucket's
first record (the last one is where the records end), so the byte range of buckets
``[a, b)`` is ``offsets[a-lo] .. offsets[b-lo]``: a reader fetches two numbers of the
table (one small range read) and then exactly its slice.  The client never holds
offsets: it keeps each run's URL, size and bucket range.

A record is ``<QIIH`` (tar bytes, sort-key bytes, sample-key bytes, field-set bytes),
the sort key (msgpack), the sample's ``__key__`` (UTF-8, surrogateescape), its field
set (each written field's name and a ``/``, in the order written; none when not known)
and the sample as the tar members it will be written as (headers already encoded with
the job's mtime), so merge levels and output writers copy bytes, and the writers count
the index's fields without parsing the headers again (:func:`fields_of`); a sample is
decoded back into a dict only where a reduce, ``--merge`` or a script needs it.  Runs
live as long as their job: nothing reads a run of another version.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import msgpack
import numpy as np

from htools import storage, tar
from htools.errors import HtoolsError, hide_credentials
from htools.tar.header import remember

MAGIC = b"HTRUN003"
FOOTER = struct.Struct("<QQ8s")
HEADER = struct.Struct("<QIIH")
_FIELD_BYTES = struct.Struct("<H")  # the header's last number: the field set's bytes
_FIELDS_AT = HEADER.size - _FIELD_BYTES.size
MAX_FIELD_SET = (1 << 16) - 1  # a longer field set is not kept (the writer parses)
_HEAD = bytes(HEADER.size)  # a record's head before its lengths are known
SMALL_RANGE = 256 << 10  # ranges up to this size are fetched whole in one request
# A run writer hands bytes to storage in whole buffers of this size: more than a local
# file writer's own buffer (storage's CHUNK, 1 MiB), which copies a write that fits in
# it and passes a larger one straight to the file.
BUFFER = 2 << 20
WINDOW = 1 << 20  # a run reader reads this much at a time into one reused buffer
# Records under this size are kept joined, and a bucket's pieces this small on average
# are joined before the copy (fewer Python calls).
SMALL_RECORDS = 4 << 10


@dataclass(frozen=True)
class Run:
    """A run file as the client knows it: where, how big, which buckets."""

    url: str
    size: int
    lo: int
    hi: int


def pack_key(k) -> bytes:
    return msgpack.packb(k, use_bin_type=True, unicode_errors="surrogateescape")


def key_packer() -> Callable[[object], bytes]:
    """:func:`pack_key` for one task's keys (one packer, not one a key; not shared
    between threads)."""
    return msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape").pack


def unpack_key(b: bytes):
    return msgpack.unpackb(b, raw=False, unicode_errors="surrogateescape")


def record(key_bytes: bytes, sample_key: str, members, fields=b"") -> bytes:
    """One record; ``fields``: the sample's field set (:func:`field_set`), if known."""
    skb = sample_key.encode("utf-8", "surrogateescape")
    if len(fields) > MAX_FIELD_SET:
        fields = b""
    return b"".join((HEADER.pack(len(members), len(key_bytes), len(skb), len(fields)),
                     key_bytes, skb, fields, members))


def rekeyed(key_bytes: bytes, sample_key: str, rec, start: int) -> bytes:
    """The record ``rec`` (its tar bytes from ``start``) under a new sort key, its field
    set kept."""
    mv = memoryview(rec)
    n = _FIELD_BYTES.unpack_from(mv, _FIELDS_AT)[0]
    return record(key_bytes, sample_key, mv[start:], mv[start - n:start])


def field_set(names) -> bytes:
    """The field set of a record: the written fields (sorted, none starting with ``_``),
    each followed by ``/`` (a field name has none)."""
    return b"".join(f.encode("utf-8", "surrogateescape") + b"/" for f in sorted(names)
                    if f[:1] != "_")


_FIELD_SETS: dict[bytes, tuple[str, ...]] = {}  # a record's field set -> its fields


def fields_of(rec, start: int) -> tuple[str, ...] | None:
    """The fields of record ``rec`` (its tar bytes from ``start``) as written, or None
    when the record does not carry them."""
    n = _FIELD_BYTES.unpack_from(rec, _FIELDS_AT)[0]
    if not n:
        return None
    raw = bytes(rec[start - n:start])
    names = _FIELD_SETS.get(raw)
    if names is None:
        names = remember(_FIELD_SETS, raw,
                         tuple(raw.decode("utf-8", "surrogateescape").split("/")[:-1]))
    return names


class SampleEncoder:
    """Samples -> the bytes of their tar members, as the output writer would write them;
    :meth:`record` makes a whole run record of a sample."""

    def __init__(self, url: str, mtime: float | None):
        self._parts: list = []
        self._writer = tar.TarWriter(self, url=url, mtime=mtime, compress=None)
        self._sets: dict[tuple, bytes] = {}  # a sample's names -> its field set

    def write(self, data) -> int:  # the TarWriter's stream
        # Kept as they are: bytes (a value), and the writer's own buffer, which it never
        # touches again once handed over (it starts a new one).  A value the caller may
        # still change (a bytearray, a memoryview) is copied.
        keep = type(data) is bytes or data is self._writer._out
        self._parts.append(data if keep else bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def encode(self, sample: dict) -> bytes:
        """The sample's members (b"" when it has no field to write)."""
        parts = self.pieces(sample)
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    def pieces(self, sample: dict) -> list:
        """The sample's members as the pieces the writer wrote (headers, padding and
        small values in its buffers; large values as they are), not joined."""
        self._writer.write(sample)
        self._writer.flush()
        parts, self._parts = self._parts, []
        return parts

    def record(self, key_bytes: bytes, sample: dict) -> bytearray | bytes | list:
        """The run record of ``sample`` under the sort key ``key_bytes``, with its field
        set.  The writer encodes the members straight after the record's head, into its
        own buffer, which becomes the record (no join, no copy); a value the writer
        hands on as it is (a large one) makes the record a list of pieces, the first
        one holding the head, none of them copied (the run writer copies each once)."""
        names = tuple(sample)
        fields = self._sets.get(names)
        key = sample.get("__key__")
        if fields is None or type(key) is not str:  # a new field set: checked first
            return self._first(key_bytes, sample, names)
        skb = key.encode("utf-8", "surrogateescape")
        w = self._writer
        w._out = bytearray(b"".join((_HEAD, key_bytes, skb, fields)))  # the head: below
        try:
            n = w.write(sample)
        except BaseException:  # a bad value: nothing of this sample is kept
            w._out, self._parts = bytearray(), []
            raise
        tail, w._out = w._out, bytearray()
        parts = self._parts
        if not parts:  # all in the writer's buffer: the record
            HEADER.pack_into(tail, 0, n, len(key_bytes), len(skb), len(fields))
            return tail
        self._parts = []
        if tail:
            parts.append(tail)
        HEADER.pack_into(parts[0], 0, n, len(key_bytes), len(skb), len(fields))
        return parts

    def _first(self, key_bytes: bytes, sample: dict, names: tuple) -> bytes | list:
        """:meth:`record` of a sample whose names (or key) the writer checks first."""
        members = self.pieces(sample)
        fields = field_set(names)
        if len(fields) <= MAX_FIELD_SET:
            if len(self._sets) >= 256:
                self._sets.clear()
            self._sets[names] = fields
        else:
            fields = b""
        skb = sample["__key__"].encode("utf-8", "surrogateescape")
        size = sum(map(len, members))
        head = HEADER.pack(size, len(key_bytes), len(skb), len(fields))
        if size < SMALL_RECORDS:
            return b"".join((head, key_bytes, skb, fields, *members))
        return [head + key_bytes + skb + fields, *members]


def decode(members: bytes, url: str) -> dict:
    """A record's sample as a dict (fields as bytes, ``__key__``, ``__url__``)."""
    for sample in tar.read_samples(io.BytesIO(members + bytes(1024)), url):
        return sample
    raise HtoolsError(f"{hide_credentials(url)}: an empty record cannot be decoded")


class RunWriter:
    """Write one run: ``write(b, data, n)`` / ``write_records(b, records)`` in ascending
    bucket order, then ``close()``.  Bytes are copied once, into one reused buffer,
    handed to storage whole (a piece larger than the buffer goes as it is)."""

    def __init__(self, url: str, lo: int, hi: int, options: dict):
        self.url, self.lo, self.hi = url, lo, hi
        self.offsets = np.zeros(hi - lo + 1, dtype=np.uint64)
        self.records = 0
        self._next = lo
        self._pos = 0
        self._buf = memoryview(bytearray(BUFFER))
        self._fill = 0
        self._out = storage.open_write(url, options)

    def _at(self, bucket: int) -> None:
        if bucket >= self._next:
            self.offsets[self._next - self.lo:bucket - self.lo + 1] = self._pos
            self._next = bucket + 1
        elif bucket < self._next - 1 or bucket < self.lo:
            raise ValueError(f"bucket {bucket} written after bucket {self._next - 1}")

    def write(self, bucket: int, data: bytes | bytearray | memoryview, records: int) -> None:
        """Append ``records`` records (already encoded, in key order) to ``bucket``."""
        self._at(bucket)
        self._put(data)
        self.records += records

    def write_records(self, bucket: int, records: list) -> None:
        """Append records in key order, each bytes or a list of pieces
        (:meth:`SampleEncoder.record`)."""
        self._at(bucket)
        pieces: list = []
        for r in records:
            if type(r) is list:
                pieces += r
            else:
                pieces.append(r)
        total = sum(map(len, pieces))
        if total < SMALL_RECORDS * len(pieces):  # small: joined in C, a buffer at a time
            # (a bucket joined whole would be fresh memory: mapped and faulted in anew)
            step = max(1, len(pieces) * BUFFER // max(total, 1))
            for i in range(0, len(pieces), step):
                self._put(b"".join(pieces[i:i + step]))
        else:
            put = self._put
            for piece in pieces:
                put(piece)
        self.records += len(records)

    def _put(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if not n:
            return
        self._pos += n
        fill, buf = self._fill, self._buf
        if fill + n <= BUFFER:
            buf[fill:fill + n] = data
            self._fill = fill + n
            return
        if n >= BUFFER:  # a whole buffer's worth: handed over as it is
            self._drain()
            self._out.write(data)
            return
        room = BUFFER - fill
        view = memoryview(data)
        buf[fill:] = view[:room]
        self._fill = BUFFER
        self._drain()
        buf[:n - room] = view[room:]
        self._fill = n - room

    def _drain(self) -> None:
        if self._fill:
            self._out.write(self._buf[:self._fill])
            self._fill = 0

    def close(self) -> Run:
        """Finish the run (offsets + footer, atomic commit)."""
        self.offsets[self._next - self.lo:] = self._pos
        self._drain()
        self._out.write(self.offsets.tobytes())
        self._out.write(FOOTER.pack(self.lo, self.hi, MAGIC))
        self._out.commit()
        size = self._pos + self.offsets.nbytes + FOOTER.size
        return Run(self.url, size, self.lo, self.hi)

    def abort(self) -> None:
        self._out.abort()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def bucket_offsets(run: Run, a: int, b: int, options: dict) -> np.ndarray:
    """Byte offsets of buckets ``a..b`` (``b-a+1`` values) of ``run``, from its table."""
    if not run.lo <= a <= b <= run.hi:
        raise HtoolsError(f"{hide_credentials(run.url)}: buckets {a}..{b} are not in this "
                          f"run ({run.lo}..{run.hi})")
    table = run.size - FOOTER.size - 8 * (run.hi - run.lo + 1)
    if table < 0:
        raise HtoolsError(f"{hide_credentials(run.url)}: not an htools run file (too short)")
    raw = storage.read_range(run.url, table + 8 * (a - run.lo), table + 8 * (b - run.lo + 1),
                             options)
    values = np.frombuffer(raw, dtype=np.uint64)
    if len(values) != b - a + 1 or int(values[-1]) > table:
        raise HtoolsError(f"{hide_credentials(run.url)}: corrupt run file (bad offsets)")
    return values


def check_footer(run: Run, options: dict) -> None:
    """Raise unless ``run`` ends with a footer naming its bucket range."""
    tail = storage.read_range(run.url, run.size - FOOTER.size, run.size, options)
    lo, hi, magic = FOOTER.unpack(tail)
    if magic != MAGIC or (lo, hi) != (run.lo, run.hi):
        raise HtoolsError(f"{hide_credentials(run.url)}: not an htools run file (bad footer)")


def open_slice(run: Run, start: int, end: int, options: dict) -> BinaryIO:
    """A reader of bytes [start, end) of a run: small slices in one request."""
    if end - start <= SMALL_RANGE:
        return io.BytesIO(storage.read_range(run.url, start, end, options))
    return storage.open_range(run.url, start, end, options)


def _crosses(url: str) -> HtoolsError:
    return HtoolsError(f"{hide_credentials(url)}: corrupt run file (record crosses a bucket)")


def _short(url: str) -> HtoolsError:
    return HtoolsError(f"{hide_credentials(url)}: run file ends inside a record")


class RecordReader:
    """The records of a run's slice read front to back through one reused window of
    :data:`WINDOW` bytes (larger when a record is): one copy of each byte from
    storage, no buffer allocated per record.  A record comes back as a view of the
    window, valid until this reader is called again (for callers that copy or write
    it at once), or as its own bytes (``view=False``, for callers that keep it)."""

    def __init__(self, f: BinaryIO, url: str, size: int = WINDOW):
        """``f`` fresh, ``size`` the bytes to be read of it, if known (a smaller window)."""
        self.f, self.url = f, url
        self.done = 0  # bytes read (or skipped) of the slice
        self.count = 0  # records read (or skipped)
        self._at = 0  # the window's next unread byte
        self._end = 0  # the end of what the window holds
        if type(f) is io.BytesIO:  # a small slice, fetched whole: its bytes are the window
            self._buf = memoryview(f.getvalue())
            self._at, self._end, self._whole = f.tell(), len(self._buf), True
            return
        raw = getattr(f, "raw", None)  # a storage reader: read under its buffer
        self._readinto = raw.readinto if raw is not None else f.readinto
        self._buf = memoryview(bytearray(min(WINDOW, size)))
        self._whole = False

    def _need(self, n: int) -> None:
        """Hold the next ``n`` bytes in the window, from ``self._at``."""
        have = self._end - self._at
        if have >= n:
            return
        if self._whole:
            raise _short(self.url)
        buf = self._buf
        if n > len(buf):  # a new window: views of the old one stay valid
            self._buf = memoryview(bytearray(max(n, 2 * len(buf))))
        self._buf[:have] = buf[self._at:self._end]
        self._at, self._end = 0, have
        while self._end < n:
            got = self._readinto(self._buf[self._end:])
            if not got:
                raise _short(self.url)
            self._end += got

    def records(self, nbytes: int, view: bool = False) -> Iterator[tuple]:
        """``(sort key, sample key, record, start)`` of each record in the next
        ``nbytes``; ``record[start:]`` is the sample's tar bytes (:func:`fields_of`
        its fields)."""
        size, unpack = HEADER.size, HEADER.unpack_from
        while nbytes > 0:
            self._need(size)
            at = self._at
            n_tar, n_key, n_skey, n_fields = unpack(self._buf, at)
            start = size + n_key + n_skey + n_fields
            n = start + n_tar
            if n > nbytes:  # a damaged length: fail before reading it
                raise _crosses(self.url)
            self._need(n)
            at, buf = self._at, self._buf
            self._at = at + n
            nbytes -= n
            self.done += n
            self.count += 1
            rec = buf[at:at + n]
            yield (unpack_key(rec[size:size + n_key]),
                   str(rec[size + n_key:size + n_key + n_skey], "utf-8", "surrogateescape"),
                   rec if view else bytes(rec), start)

    def skip(self, nbytes: int) -> int:
        """Pass over the records in the next ``nbytes``; returns how many there were."""
        count = 0
        size, unpack = HEADER.size, HEADER.unpack_from
        while nbytes > 0:
            self._need(size)
            n = size + sum(unpack(self._buf, self._at))
            if n > nbytes:
                raise _crosses(self.url)
            while n > 0:  # through the window, however large the record
                step = min(n, max(self._end - self._at, 1))
                self._need(step)
                self._at += step
                self.done += step
                n -= step
                nbytes -= step
            count += 1
            self.count += 1
        return count

    def chunks(self, nbytes: int) -> Iterator[memoryview]:
        """The next ``nbytes`` as views of the window (each valid until the next)."""
        while nbytes > 0:
            if self._at == self._end:
                self._need(min(nbytes, len(self._buf)))
            take = min(nbytes, self._end - self._at)
            at = self._at
            self._at += take
            self.done += take
            nbytes -= take
            yield self._buf[at:at + take]
