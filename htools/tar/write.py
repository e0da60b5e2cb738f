"""Streaming tar writer of WebDataset samples (see :mod:`htools.tar`).

Every header comes from one encoder, :class:`HeaderEncoder`: a template with fixed
mode/uid/gid/mtime/owner, so the same samples give the same bytes.  Names that
do not fit the 100-byte name field use the ustar prefix split, else a pax
``path`` record (so do non-ASCII names); members of 8 GiB and more get a pax
``size`` record.  The encoder, the sample checks and the header fields are
:mod:`htools.tar.members`; the writer's loop (:meth:`TarWriter.write`) is here.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any, BinaryIO
from zlib import adler32

from htools.errors import hide_credentials
from htools.tar.compress import open_stream_writer
from htools.tar.header import BLOCK, MAX_OCTAL_SIZE, RECORD, byte_sum, encoded_fields, pax_records
from htools.tar.members import (
    MAX_CACHED,
    PADS,
    SHORT_HEADER,
    ZEROS,
    HeaderEncoder,
    SampleFormatError,
    check_field,
    check_key,
    checksum_field,
    size_field_of,
    ustar_split,
)

FLUSH = 1 << 20  # writer buffer size
DIRECT = 64 << 10  # values this large are written to the stream directly


class TarWriter:
    """Write samples as a tar stream (optionally compressed) onto ``stream``.

    ``compress="auto"`` chooses the codec from the ``url`` suffix; or give
    ``"gzip"``, ``"zstd"`` or ``None``.  ``mtime`` is the members' mtime (``None``
    = now, taken once).  Members of a sample are written in sorted field order;
    fields starting with ``_`` (``__key__``, ``__url__``, private fields) are not
    written.  Values are bytes-like or str (UTF-8).  A sample without writable
    fields writes nothing and is not counted.

    ``bytes_written`` counts uncompressed tar bytes; ``samples_written`` samples.
    :meth:`close` (also on leaving the ``with`` block) writes the end-of-archive
    blocks, pads to a 10240-byte record like GNU tar and finishes compression;
    it closes ``stream`` only when ``close_raw=True``.
    """

    def __init__(self, stream: BinaryIO, *, url: str = "", mtime: float | None = 0,
                 compress: str | bool | None = "auto", user: str = "", group: str = "",
                 mode: int = 0o644, level: int | None = None, close_raw: bool = False,
                 count_fields: bool = False):
        self.url = hide_credentials(url)
        self.raw = stream
        self.close_raw = close_raw
        self.stream = open_stream_writer(stream, url, level, compress=compress)
        self.mtime = int(time.time() if mtime is None else mtime)
        self.bytes_written = 0
        self.samples_written = 0
        # samples written per field-name set (see the ``fields`` property)
        self._field_sets: dict[tuple, int] | None = {} if count_fields else None
        self._encoded_fields: Counter[str] = Counter()  # of write_encoded()
        self.closed = False
        self._out = bytearray()
        self._suffixes: dict[str, bytes] = {}
        self._plans: dict[tuple, tuple[tuple[str, bytes, int, int], ...]] = {}
        self._reg = HeaderEncoder(b"0", mode, self.mtime, user, group)
        self._pax = HeaderEncoder(b"x", mode, self.mtime, user, group)

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, sample: dict) -> int:
        """Write one sample; returns the number of (uncompressed) tar bytes written."""
        if self.closed:
            raise ValueError("write to a closed TarWriter")
        key = sample.get("__key__")
        # check_key(key) unless the key is plainly good (a str, not starting with '/' or
        # '.', no NUL, no dot in its basename, not ending with '/')
        if (type(key) is not str or not key or key[0] == "/" or key[0] == "."
                or key[-1] == "/" or "\0" in key or key.find(".", key.rfind("/") + 1) >= 0):
            key = check_key(key, self.url)
        kb = key.encode("utf-8", "surrogateescape")
        # The plan of a field-name set (its fields in order, each with its b".field", the
        # byte sum of that and the room left for the key in a ustar name), made once by
        # _plan(), which checks every name: later samples with the same names only have
        # their values checked.
        names = tuple(sample)
        plan = self._plans.get(names)
        if plan is None:
            plan, values = self._plan(names, sample, key)
        else:
            values = [sample[step[0]] for step in plan]
            for i, value in enumerate(values):
                if type(value) is not bytes:
                    values[i] = self._as_bytes(value, plan[i][0], key)
        if not values:
            return 0
        counts = self._field_sets
        if counts is not None:  # the fields are counted once per field-name set
            counts[names] = counts.get(names, 0) + 1
        # a short ASCII name gets its header in one pack(), its checksum from sums kept:
        # the template's and the key's, the field's (in the plan), the size field's
        klen = len(kb) if kb.isascii() else BLOCK
        out = self._out
        start = len(out)
        flushed = 0
        reg = self._reg
        pack, mode_to_size = SHORT_HEADER.pack, reg.mode_to_size
        size_end_to_chk, type_to_end = reg.size_end_to_chk, reg.type_to_end
        head_sum = reg.sum + (adler32(kb) & 0xFFFF) - 1 if klen <= 100 else 0  # byte_sum
        size_field, checksum, pads = size_field_of, checksum_field, PADS
        for value, (field, suffix, suffix_sum, room) in zip(values, plan):
            size = len(value)
            if klen <= room and size <= MAX_OCTAL_SIZE:  # what _long_header() would
                size_f, size_sum = size_field(size)  # write
                out += pack(kb + suffix, mode_to_size, size_f, size_end_to_chk,
                            checksum(head_sum + suffix_sum + size_sum), type_to_end)
            else:
                out += self._long_header(key + "." + field, kb + suffix, size)
            if size >= DIRECT:  # big values go straight to the stream, uncopied
                flushed += len(out) - start + size
                self.stream.write(out)
                self.stream.write(value)
                out = self._out = bytearray()
                start = 0
            else:
                out += value
            out += pads[-size % BLOCK]
        n = flushed + len(out) - start
        if len(out) >= FLUSH:
            self.stream.write(out)
            self._out = bytearray()
        self.bytes_written += n
        self.samples_written += 1
        return n

    @property
    def fields(self) -> Counter[str] | None:
        """With ``count_fields=True``: how many written samples had each field."""
        if self._field_sets is None:
            return None
        fields: Counter[str] = Counter(self._encoded_fields)
        for names, n in self._field_sets.items():
            for field in sorted(names):
                if field[:1] != "_":
                    fields[field] += n
        return fields

    def _plan(self, names: tuple, sample: dict, key: str) -> tuple[tuple, list]:
        """The write plan of the field-name set ``names`` (kept for later samples), sorted,
        and ``sample``'s values in its order; every field is checked before any is
        written, so a bad sample leaves no partial members."""
        try:
            fields = sorted(sample)
        except TypeError:
            raise SampleFormatError(self.url, "field names must be str", key=key) from None
        plan, values = [], []
        for field in fields:
            if field[:1] == "_":
                continue
            suffix = self._suffixes.get(field) or self._suffix(field, key)
            value = sample[field]
            values.append(value if type(value) is bytes else self._as_bytes(value, field, key))
            plan.append((field, suffix, byte_sum(suffix),
                         100 - len(suffix) if suffix.isascii() else -1))
        if len(self._plans) >= MAX_CACHED:
            self._plans.clear()
        self._plans[names] = plan = tuple(plan)
        return plan, values

    def _long_header(self, name: str, nb: bytes, size: int) -> bytes:
        """Headers for a name that needs the ustar prefix or a pax record, or a huge size."""
        records: dict[str, str] = {}
        prefix = b""
        short = nb
        if len(nb) > 100 or not nb.isascii():
            split = ustar_split(nb) if nb.isascii() else None
            if split is not None:
                prefix, short = split
            else:
                records["path"] = name
                short = name.encode("ascii", "replace")[:100]
        if size > MAX_OCTAL_SIZE:
            records["size"] = str(size)
        header = self._reg.encode(short, size, prefix)
        if not records:
            return header
        payload = pax_records(records)
        return b"".join((self._pax.encode(b"././@PaxHeader", len(payload)), payload,
                         ZEROS[:-len(payload) % BLOCK], header))

    def _suffix(self, field: str, key: str) -> bytes:
        """Validate a field name; cache b".field" (b"" for the empty field)."""
        check_field(field, key, self.url)
        fb = b"." + field.encode("utf-8", "surrogateescape") if field else b""
        if len(self._suffixes) > 4096:
            self._suffixes.clear()
        self._suffixes[field] = fb
        return fb

    def _as_bytes(self, value: Any, field: str, key: str) -> Any:
        """str -> UTF-8; bytearray/memoryview as they are (as bytes); others are an error."""
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, (bytes, bytearray)):
            return value
        if isinstance(value, memoryview):
            return value if value.format == "B" and value.ndim == 1 else value.cast("B")
        raise SampleFormatError(
            self.url, f"field {field!r} is a {type(value).__name__}; expected bytes or str",
            key=key)

    def write_encoded(self, data: bytes | bytearray | memoryview,
                      fields: tuple[str, ...] | None = None) -> int:
        """Write one sample already encoded as tar members (by a TarWriter with the same
        settings: the exchange keeps samples this way); returns its byte count.
        ``fields``: the members' fields in order, if the caller knows them (else, when
        fields are counted, they are read from the headers)."""
        if self.closed:
            raise ValueError("write to a closed TarWriter")
        n = len(data)
        counts = self._field_sets
        if counts is not None:
            if fields is None:
                self._encoded_fields.update(encoded_fields(data))
            else:  # counted as write() counts a field-name set
                counts[fields] = counts.get(fields, 0) + 1
        if n >= DIRECT:
            if self._out:
                self.stream.write(self._out)
                self._out = bytearray()
            self.stream.write(data)
        else:
            self._out += data
            if len(self._out) >= FLUSH:
                self.stream.write(self._out)
                self._out = bytearray()
        self.bytes_written += n
        self.samples_written += 1
        return n

    def hands_over(self, buf: object) -> bool:
        """Whether ``buf``, just written to the stream, is this writer's own buffer, which
        it hands over: it writes that buffer whole and starts a new one, never changing
        one it wrote, so the stream may keep it rather than copy it.  A field's value
        written as it is, or a compressor's output, is not it."""
        return buf is self._out

    def flush(self) -> None:
        """Hand buffered bytes to the (compressing) stream."""
        if self._out:
            self.stream.write(self._out)
            self._out = bytearray()
        self.stream.flush()

    def close(self) -> None:
        """Write the end-of-archive marker, finish compression, flush (close raw if asked)."""
        if self.closed:
            return
        self.closed = True
        total = self.bytes_written + 2 * BLOCK
        tail = 2 * BLOCK + (-total % RECORD)
        self._out += ZEROS[:tail]
        self.bytes_written += tail
        self.stream.write(self._out)
        self._out = bytearray()
        self.stream.close()
        flush = getattr(self.raw, "flush", None)
        if flush is not None and not getattr(self.raw, "closed", False):
            flush()
        if self.close_raw:
            self.raw.close()


_SIZER: list[TarWriter] = []  # one writer whose header encoding member_size() borrows


def member_size(key: str, field: str, size: int) -> int:
    """Bytes the writer takes for one member ``KEY.FIELD`` of ``size`` bytes: its header
    (a pax header too when the name does not fit or is not ASCII) and padded data."""
    nb = key.encode("utf-8", "surrogateescape") + (b"." + field.encode("utf-8",
                                                   "surrogateescape") if field else b"")
    data = size + -size % BLOCK
    if len(nb) <= 100 and size <= MAX_OCTAL_SIZE and nb.isascii():
        return BLOCK + data
    if not _SIZER:
        _SIZER.append(TarWriter(io.BytesIO(), compress=None))
    return len(_SIZER[0]._long_header(f"{key}.{field}" if field else key, nb, size)) + data


def archive_size(members: int) -> int:
    """The size of a tar file whose members take ``members`` bytes: the end-of-archive
    blocks and the padding to a whole 10240-byte record, as :meth:`TarWriter.close`
    writes them."""
    total = members + 2 * BLOCK
    return total + -total % RECORD


def write_samples(stream: BinaryIO, samples: Iterable[dict], **kw: Any) -> tuple[int, int]:
    """Write ``samples`` with a :class:`TarWriter` (``kw`` passed on); returns
    (samples written, uncompressed bytes written)."""
    with TarWriter(stream, **kw) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.samples_written, writer.bytes_written
