"""Run files: the only on-disk format of the exchange, and its only owner.

A run holds records of a contiguous range of buckets ``[lo, hi)``, bucket after
bucket, each bucket's records sorted by key (stably: equal keys keep input order)::

    [bucket lo records] ... [bucket hi-1 records] [offsets: hi-lo+1 x u64] [footer]

``footer`` is ``<QQ8s``: lo, hi, MAGIC.  Offsets are byte positions of each bucket's
first record (the last one is where the records end), so the byte range of buckets
``[a, b)`` is ``offsets[a-lo] .. offsets[b-lo]``: a reader fetches two numbers of the
table (one small range read) and then exactly its slice.  The client never holds
offsets: it keeps each run's URL, size and bucket range.

A record is ``<QII`` (tar bytes, sort-key bytes, sample-key bytes), the sort key
(msgpack), the sample's ``__key__`` (UTF-8, surrogateescape) and the sample as the
tar members it will be written as (headers already encoded with the job's mtime),
so merge levels and output writers copy bytes; a sample is decoded back into a dict
only where a reduce, ``--merge`` or a script needs it.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import msgpack
import numpy as np

from htools import storage, tar
from htools.errors import HtoolsError, hide_credentials

MAGIC = b"HTRUN002"
FOOTER = struct.Struct("<QQ8s")
HEADER = struct.Struct("<QII")
SMALL_RANGE = 256 << 10  # ranges up to this size are fetched whole in one request
BUFFER = 1 << 20  # a run writer hands bytes to storage in pieces of about this size


@dataclass(frozen=True)
class Run:
    """A run file as the client knows it: where, how big, which buckets."""

    url: str
    size: int
    lo: int
    hi: int


def pack_key(k) -> bytes:
    return msgpack.packb(k, use_bin_type=True, unicode_errors="surrogateescape")


def unpack_key(b: bytes):
    return msgpack.unpackb(b, raw=False, unicode_errors="surrogateescape")


def record(key_bytes: bytes, sample_key: str, members: bytes) -> bytes:
    skb = sample_key.encode("utf-8", "surrogateescape")
    return b"".join((HEADER.pack(len(members), len(key_bytes), len(skb)), key_bytes, skb,
                     members))


class SampleEncoder:
    """Samples -> the bytes of their tar members, as the output writer would write them."""

    def __init__(self, url: str, mtime: float | None):
        self._parts: list[bytes] = []
        self._writer = tar.TarWriter(self, url=url, mtime=mtime, compress=None)

    def write(self, data) -> int:  # the TarWriter's stream
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def encode(self, sample: dict) -> bytes:
        """The sample's members (b"" when it has no field to write)."""
        self._writer.write(sample)
        self._writer.flush()
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts.clear()
        return data


def decode(members: bytes, url: str) -> dict:
    """A record's sample as a dict (fields as bytes, ``__key__``, ``__url__``)."""
    for sample in tar.read_samples(io.BytesIO(members + bytes(1024)), url):
        return sample
    raise HtoolsError(f"{hide_credentials(url)}: an empty record cannot be decoded")


class RunWriter:
    """Write one run: ``bucket(b, records)`` in ascending bucket order, then ``close()``."""

    def __init__(self, url: str, lo: int, hi: int, options: dict):
        self.url, self.lo, self.hi = url, lo, hi
        self.offsets = np.zeros(hi - lo + 1, dtype=np.uint64)
        self.records = 0
        self._next = lo
        self._pos = 0
        self._buf = bytearray()
        self._out = storage.open_write(url, options)

    def _advance(self, bucket: int) -> None:
        self.offsets[self._next - self.lo:bucket - self.lo + 1] = self._pos
        self._next = bucket + 1

    def write(self, bucket: int, data: bytes | memoryview, records: int) -> None:
        """Append ``records`` records (already encoded, in key order) to ``bucket``."""
        if bucket >= self._next:
            self._advance(bucket)
        elif bucket < self._next - 1 or bucket < self.lo:
            raise ValueError(f"bucket {bucket} written after bucket {self._next - 1}")
        self._buf += data
        self._pos += len(data)
        self.records += records
        if len(self._buf) >= BUFFER:
            self._out.write(self._buf)
            self._buf = bytearray()

    def close(self) -> Run:
        """Finish the run (offsets + footer, atomic commit)."""
        self.offsets[self._next - self.lo:] = self._pos
        self._out.write(self._buf)
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


def records(f: BinaryIO, nbytes: int, url: str) -> Iterator[tuple]:
    """``(sort key, sample key, record, start)`` of each record in the next ``nbytes``
    of ``f``; ``record[start:]`` is the sample's tar bytes."""
    read, size, unpack = f.read, HEADER.size, HEADER.unpack
    while nbytes > 0:
        head = read(size)
        if len(head) < size:
            raise _short(url)
        n_tar, n_key, n_skey = unpack(head)
        n = size + n_key + n_skey + n_tar
        if n > nbytes:  # a damaged length: fail before allocating it
            raise _crosses(url)
        rec = bytearray(n)
        rec[:size] = head
        if f.readinto(memoryview(rec)[size:]) < n - size:
            raise _short(url)
        nbytes -= n
        start = size + n_key + n_skey
        yield (unpack_key(bytes(rec[size:size + n_key])),
               rec[size + n_key:start].decode("utf-8", "surrogateescape"), rec, start)
    if nbytes < 0:
        raise _crosses(url)


def raw_records(f: BinaryIO, nbytes: int, url: str) -> Iterator[bytes]:
    """The next ``nbytes`` of ``f`` as whole encoded records (for copies)."""
    read, size, unpack = f.read, HEADER.size, HEADER.unpack
    while nbytes > 0:
        head = read(size)
        if len(head) < size:
            raise _short(url)
        n = sum(unpack(head))
        if size + n > nbytes:
            raise _crosses(url)
        body = read(n)
        if len(body) < n:
            raise _short(url)
        nbytes -= size + n
        yield head + body
    if nbytes < 0:
        raise _crosses(url)


def _crosses(url: str) -> HtoolsError:
    return HtoolsError(f"{hide_credentials(url)}: corrupt run file (record crosses a bucket)")


def _short(url: str) -> HtoolsError:
    return HtoolsError(f"{hide_credentials(url)}: run file ends inside a record")
