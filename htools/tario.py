"""Streaming tar reader and writer of WebDataset samples: the hot path of htools.

Reading
    :func:`iter_members` parses 512-byte headers by hand out of a big reusable
    buffer (filled with ``readinto``), so a member costs a few slices and no
    system call.  It reads what GNU tar (gnu, pax, ustar, v7), Python's tarfile
    and webdataset write: GNU ``././@LongLink`` names, pax ``x``/``g`` headers
    (``path``, ``linkpath``, ``size``), the ustar prefix field, base-256 sizes.
    Directories, links and other non-regular members are skipped with their
    data.  Every header checksum is verified; a bad checksum, a truncated
    member or an undecodable compressed stream is a :class:`TarFormatError`
    naming the URL, the member (when known) and the byte offset of the header
    in the (uncompressed) tar stream.  Nothing is dropped silently.

    :func:`read_samples` groups consecutive members with one key into samples
    (``{"__key__": key, "__url__": url, field: bytes, ...}``).

Writing
    :class:`TarWriter` writes ustar headers with fixed mode/uid/gid/mtime, so
    the same samples give the same bytes (also gzip- or zstd-compressed).
    Names longer than 100 bytes use the ustar prefix split, else a pax ``path``
    record (so do non-ASCII names); members of 8 GiB and more get a pax ``size``.

Key rules (WebDataset): the key of ``a/b/n01.seg.png`` is ``a/b/n01`` and the
field ``seg.png`` -- the key ends at the first dot of the basename.  Hence the
writer refuses keys whose basename contains a dot (the reader would split the
member name differently) and fields that are empty or contain ``/``.
"""

from __future__ import annotations

import time
from typing import Any, BinaryIO, Callable, Iterable, Iterator
from zlib import adler32

from htools.compress import DECODE_ERRORS, open_stream_reader, open_stream_writer
from htools.errors import HtoolsError, TarFormatError, hide_credentials

__all__ = [
    "SampleFormatError",
    "TarWriter",
    "iter_members",
    "open_stream_reader",
    "open_stream_writer",
    "read_samples",
    "split_key",
    "write_samples",
]

BLOCK = 512
RECORD = 10240  # GNU tar pads the archive to a multiple of 20 blocks
CHUNK = 1 << 20  # reader buffer size
FLUSH = 1 << 20  # writer buffer size
DIRECT = 64 << 10  # writer: values this large are written to the stream directly
MAX_OCTAL_SIZE = 8**11 - 1  # the largest size an 11-digit octal field holds

_ZERO_BLOCK = bytes(BLOCK)
_ZEROS = bytes(RECORD)
_REGULAR = frozenset((0x30, 0x00, 0x37))  # '0', NUL (old), '7' (contiguous)
_T_LONGNAME, _T_LONGLINK = 0x4C, 0x4B  # 'L', 'K'
_T_PAX, _T_PAX_GLOBAL, _T_PAX_SUN = 0x78, 0x67, 0x58  # 'x', 'g', 'X'
_T_SPARSE, _T_MULTIVOL = 0x53, 0x4D  # 'S', 'M'
_USTAR_POSIX = b"ustar\x0000"  # magic + version
_USTAR_MAGIC = b"ustar\x00"
_MAX_META = 1 << 24  # longname/pax payloads larger than this are corrupt


class SampleFormatError(TarFormatError, ValueError):
    """A sample that cannot be written as tar members (bad key, field or value)."""


# --------------------------------------------------------------------------- keys


def split_key(name: str) -> tuple[str, str]:
    """``"a/b/n01.seg.png"`` -> ``("a/b/n01", "seg.png")``: the key ends at the first dot
    of the basename; a name without a dot there is all key (``(name, "")``)."""
    dot = name.find(".", name.rfind("/") + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


# --------------------------------------------------------------------------- reading


def _nts(field: bytes | bytearray) -> bytes:
    """A NUL-terminated header string field."""
    i = field.find(0)
    return bytes(field if i < 0 else field[:i])


def _number(field: bytes | bytearray) -> int:
    """A numeric header field: octal (NUL/space padded) or GNU base-256."""
    if field[:1] in (b"\x80", b"\xff"):
        n = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:
            n -= 256 ** (len(field) - 1)
        return n
    digits = _nts(field).strip()
    return int(digits, 8) if digits else 0


def _checksums(header: bytes | bytearray) -> tuple[int, int]:
    """The unsigned and the (historic) signed checksum of a header block."""
    body = bytes(header[:148]) + b"        " + bytes(header[156:512])
    unsigned = sum(body)
    signed = unsigned - 256 * sum(1 for b in body if b > 127)
    return unsigned, signed


def _decode_name(raw: bytes) -> str:
    name = raw.decode("utf-8", "surrogateescape")
    while name.startswith("./"):
        name = name[2:]
    return name


def _header_name(h: bytes) -> str:
    """The name in a header block: name field, joined to the ustar prefix if any."""
    raw = _nts(h[:100])
    if h[345] and h[257:263] == _USTAR_MAGIC:
        raw = _nts(h[345:500]) + b"/" + raw
    return _decode_name(raw)


def _parse_pax(data: bytes, url: str, offset: int) -> dict[str, str]:
    """pax extended header records ``"%d %s=%s\\n"``."""
    records: dict[str, str] = {}
    pos = 0
    n = len(data)
    while pos < n:
        if data[pos] == 0:  # NUL padding after the last record
            break
        sp = data.find(b" ", pos)
        try:
            length = int(data[pos:sp]) if sp > pos else 0
        except ValueError:
            length = 0
        end = pos + length
        key, eq, value = data[sp + 1:end - 1].partition(b"=")
        if length <= 0 or end > n or data[end - 1] != 0x0A or not eq:
            raise TarFormatError(url, "malformed pax extended header record", offset=offset)
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return records


class _Scanner:
    """State of one tar stream being scanned: a reusable buffer over ``stream``.

    ``buf[0]`` is at byte ``base`` of the tar stream.  The hot loop lives in
    :meth:`members`; the other methods are slow paths (refills, members larger
    than the buffer, metadata headers, errors).
    """

    def __init__(self, stream: BinaryIO, url: str):
        self.stream = stream
        self.url = hide_credentials(url)
        self.buf = bytearray(CHUNK)
        self.mv = memoryview(self.buf)
        self.base = 0
        self.sums: dict[bytes, int] = {}  # checksum field -> expected byte sum of the block
        readinto = getattr(stream, "readinto", None)
        self._readinto: Callable[[Any], int] = readinto or self._read_copy

    def _read_copy(self, out: memoryview) -> int:
        data = self.stream.read(len(out))
        n = len(data)
        out[:n] = data
        return n

    def _read_error(self, exc: BaseException, offset: int) -> TarFormatError:
        return TarFormatError(self.url, f"cannot decode stream: {type(exc).__name__}: {exc}",
                              offset=offset)

    # ---- buffer management

    def fill(self, pos: int, end: int, need: int) -> int:
        """Move ``buf[pos:end]`` to the front and read until ``need`` bytes (or EOF).

        Returns the new end; the caller's position becomes 0.
        """
        buf, mv = self.buf, self.mv
        rem = end - pos
        if rem and pos:
            buf[:rem] = mv[pos:end].tobytes()
        self.base += pos
        end = rem
        cap = len(buf)
        readinto = self._readinto
        try:
            while end < need:
                n = readinto(mv[end:cap])
                if not n:
                    break
                end += n
        except HtoolsError:
            raise
        except DECODE_ERRORS as exc:
            raise self._read_error(exc, self.base + end) from exc
        return end

    def read_exact(self, n: int) -> bytes:
        """Up to ``n`` bytes straight from the stream (fewer at EOF); the buffer is empty."""
        parts = []
        got = 0
        read = self.stream.read
        try:
            while got < n:
                chunk = read(min(n - got, 1 << 30))
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
        except HtoolsError:
            raise
        except DECODE_ERRORS as exc:
            raise self._read_error(exc, self.base + got) from exc
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # ---- errors and slow header checks

    def truncated(self, name: str | None, hoff: int, size: int, got: int) -> TarFormatError:
        return TarFormatError(
            self.url, f"truncated member: the stream ends after {got} of its {size} bytes",
            member=name, offset=hoff)

    def expected_sum(self, chk: bytes) -> int:
        """The byte sum of a header block whose checksum field is ``chk``, if below 65520."""
        try:
            exp = _number(chk) - 256 + sum(chk)
        except ValueError:
            return -2
        if not 0 <= exp < 65520:
            exp = -2  # never matches the fast test: bad_header() decides exactly
        if len(self.sums) > 1 << 16:
            self.sums.clear()
        self.sums[chk] = exp
        return exp

    def bad_header(self, h: bytes, hoff: int) -> TarFormatError | None:
        """None if ``h`` passes the full checksum test (signed sums too), else the error."""
        try:
            stored: int | str = _number(h[148:156])
        except ValueError:
            stored = repr(h[148:156])
        sums = _checksums(h)
        if stored in sums:
            return None
        name = None
        raw = _nts(h[:100])
        if raw and raw.isascii() and raw.decode().isprintable():
            name = _header_name(h)
        hint = " (not a tar stream?)" if hoff == 0 else ""
        return TarFormatError(
            self.url, f"bad tar header checksum: stored {stored}, computed {sums[0]}{hint}",
            member=name, offset=hoff)

    # ---- member data

    def member_data(self, pos: int, end: int, size: int, name: str,
                    hoff: int) -> tuple[bytes, int, int]:
        """The data of the member whose header is at ``pos``: returns (data, pos, end)."""
        need = BLOCK + size + (-size % BLOCK)
        if end - pos >= need:
            return self.mv[pos + BLOCK:pos + BLOCK + size].tobytes(), pos + need, end
        if need <= len(self.buf):
            end = self.fill(pos, end, need)
            if end < need:
                raise self.truncated(name, hoff, size, min(size, max(0, end - BLOCK)))
            return self.mv[BLOCK:BLOCK + size].tobytes(), need, end
        # Larger than the buffer: what is buffered, then a direct read.
        head = self.mv[pos + BLOCK:end].tobytes()
        self.base += end
        rest = self.read_exact(size - len(head))
        self.base += len(rest)
        if len(head) + len(rest) < size:
            raise self.truncated(name, hoff, size, len(head) + len(rest))
        data = head + rest if head else rest
        pad = -size % BLOCK
        end = self.fill(0, 0, pad)
        if end < pad:
            raise self.truncated(name, hoff, size, size)
        return data, pad, end

    def skip_data(self, pos: int, end: int, size: int, name: str | None,
                  hoff: int) -> tuple[int, int]:
        """Skip the header at ``pos`` and its (padded) data: returns (pos, end)."""
        todo = BLOCK + size + (-size % BLOCK)
        while end - pos < todo:
            todo -= end - pos
            end = self.fill(end, end, min(todo, CHUNK))
            pos = 0
            if end == 0:
                raise self.truncated(name, hoff, size, max(0, size - todo))
        return pos + todo, end

    def meta_data(self, pos: int, end: int, size: int, hoff: int,
                  what: str) -> tuple[bytes, int, int]:
        """The payload of a long-name/pax header: returns (data, pos, end)."""
        if size > _MAX_META:
            raise TarFormatError(self.url, f"{what} header of {size} bytes", offset=hoff)
        return self.member_data(pos, end, size, what, hoff)

    # ---- the hot loop

    def members(self) -> Iterator[tuple[str, bytes, int]]:
        """(name, data, header offset) of each regular member."""
        mv = self.mv
        url = self.url
        sums = self.sums
        zero_block = _ZERO_BLOCK
        pos = end = 0
        longname: str | None = None
        pax: dict[str, str] = {}
        gpax: dict[str, str] = {}
        plain = True  # no long name or pax records pending: the fast path applies
        while True:
            if end - pos < BLOCK:
                end = self.fill(pos, end, BLOCK)
                pos = 0
                if end == 0:
                    if self.base + pos == 0:
                        return  # an empty object: an empty shard
                    # Every tar writer ends with zero blocks; without them the object
                    # was cut short on a block boundary, and samples are missing.
                    raise TarFormatError(url, "truncated tar: the stream ends without the "
                                         "end-of-archive marker", offset=self.base + pos)
                if end < BLOCK:
                    raise TarFormatError(url, "truncated tar: the stream ends inside a header",
                                         offset=self.base)
            hoff = self.base + pos
            h = mv[pos:pos + BLOCK].tobytes()
            if not h[0] and h == zero_block:
                return  # end-of-archive marker
            # Checksum: adler32's A is 1 + the byte sum, mod 65521.  Both sums are below
            # 65521 (so equal mod 65521 means equal) when the expected one is and at least
            # 256 bytes are zero; otherwise bad_header() checks the exact sums.
            chk = h[148:156]
            exp = sums.get(chk)
            if exp is None:
                exp = self.expected_sum(chk)
            if (adler32(h) & 0xFFFF) != exp + 1 or h.count(0) < 256:
                err = self.bad_header(h, hoff)
                if err is not None:
                    raise err
            try:
                size = int(h[124:135], 8)
            except ValueError:
                try:
                    size = _number(h[124:136])
                except ValueError:
                    raise TarFormatError(url, "bad size field in tar header",
                                         member=_header_name(h), offset=hoff) from None
            kind = h[156]
            if (kind == 0x30 or kind == 0) and plain:
                i = h.find(0, 0, 100)
                if i < 0:
                    i = 100
                name = h[:i].decode("utf-8", "surrogateescape")
                if not i or h[345] or h[i - 1] == 0x2F or (h[0] == 0x2E and h[1] == 0x2F):
                    name = _header_name(h)
                    if not name or name[-1:] == "/":  # v7 directory, or no name at all
                        pos, end = self.skip_data(pos, end, size, name, hoff)
                        continue
                need = BLOCK + size + (-size % BLOCK)
                if end - pos >= need:
                    data = mv[pos + BLOCK:pos + BLOCK + size].tobytes()
                    pos += need
                else:
                    data, pos, end = self.member_data(pos, end, size, name, hoff)
                yield name, data, hoff
                continue
            # ---- slow path: metadata headers, long names, non-regular members
            if kind == _T_LONGNAME or kind == _T_LONGLINK:
                data, pos, end = self.meta_data(pos, end, size, hoff, "GNU long name")
                if kind == _T_LONGNAME:
                    longname = _decode_name(_nts(data))
                    plain = False
                continue
            if kind in (_T_PAX, _T_PAX_SUN, _T_PAX_GLOBAL):
                data, pos, end = self.meta_data(pos, end, size, hoff, "pax")
                records = _parse_pax(data, url, hoff)
                if any(k.startswith("GNU.sparse.") for k in records):
                    raise TarFormatError(url, "sparse members are not supported",
                                         member=records.get("path"), offset=hoff)
                if kind == _T_PAX_GLOBAL:
                    gpax = {k: v for k, v in {**gpax, **records}.items() if v}
                else:
                    pax = records
                plain = False
                continue
            merged = {**gpax, **pax}
            if merged.get("path"):
                name = _decode_name(merged["path"].encode("utf-8", "surrogateescape"))
            elif longname is not None:
                name = longname
            else:
                name = _header_name(h)
            longname, pax = None, {}
            plain = not gpax
            if merged.get("size"):
                try:
                    size = int(merged["size"])
                except ValueError:
                    raise TarFormatError(url, "bad pax size record", member=name,
                                         offset=hoff) from None
            if kind == _T_SPARSE or kind == _T_MULTIVOL:
                raise TarFormatError(url, f"unsupported tar member type {chr(kind)!r}",
                                     member=name, offset=hoff)
            if kind not in _REGULAR or not name or name[-1:] == "/":
                pos, end = self.skip_data(pos, end, size, name, hoff)
                continue
            data, pos, end = self.member_data(pos, end, size, name, hoff)
            yield name, data, hoff


def iter_members(stream: BinaryIO, url: str = "") -> Iterator[tuple[str, bytes, int]]:
    """(name, data, header offset) of each regular member of an uncompressed tar stream.

    Names are UTF-8 (surrogateescape for undecodable bytes) with any leading
    ``./`` removed.  Stops at the end-of-archive zero block or a clean EOF on a
    header boundary.  Use :func:`open_stream_reader` first for compressed input.
    """
    return _Scanner(stream, url).members()


def read_samples(stream: BinaryIO, url: str = "", *,
                 handler: Callable[[BaseException], bool] | None = None) -> Iterator[dict]:
    """WebDataset samples of a tar stream: consecutive members with one key form a sample.

    Each sample is ``{"__key__": key, "__url__": url, field: bytes, ...}``; a
    member name without a dot in its basename gives the field ``""``.  A field
    repeated within a sample is a :class:`TarFormatError` naming the URL, key,
    member and offset.  ``handler(exc)`` decides what happens on an error: true
    to continue, false (or ``handler=None``) to re-raise.  Continuing after a
    repeated field drops that sample (all its members); continuing after a
    stream error (corrupt or truncated tar, undecodable compression, a storage
    error) ends the stream, which cannot be resynchronised: the sample in
    progress is yielded only if the error names a member of another key.
    """
    url = hide_credentials(url)  # it lands in messages and in every sample's __url__
    members = _Scanner(stream, url).members()
    sample: dict | None = None
    key: str | None = None
    try:
        for name, data, hoff in members:
            dot = name.find(".", name.rfind("/") + 1)
            if dot < 0:
                k, field = name, ""
            else:
                k, field = name[:dot], name[dot + 1:]
            if k != key:
                if sample is not None:
                    yield sample
                key = k
                sample = {"__key__": k, "__url__": url, field: data}
            elif sample is None:  # the rest of a dropped sample
                continue
            elif field in sample:
                sample = None
                _repeated(url, k, field, name, hoff, handler)
            else:
                sample[field] = data
    except Exception as exc:
        if getattr(exc, "_htools_handled", False) or handler is None or not handler(exc):
            raise
        # The sample in progress is complete if the failing member belongs to another key.
        member = getattr(exc, "member", None)
        if sample is None or member is None or split_key(member)[0] == key:
            return
    if sample is not None:
        yield sample


def _repeated(url: str, key: str, field: str, name: str, hoff: int,
              handler: Callable[[BaseException], bool] | None) -> None:
    """Report a field repeated within a sample; returns if the handler says continue."""
    why = ("reserved field name" if field in ("__key__", "__url__")
           else f"field {field!r} repeated within one sample")
    exc = TarFormatError(url, why, key=key, member=name, offset=hoff)
    if handler is None or not handler(exc):
        exc._htools_handled = True  # type: ignore[attr-defined]
        raise exc


# --------------------------------------------------------------------------- writing


def _check_key(key: Any, url: str) -> str:
    if isinstance(key, (bytes, bytearray)):
        key = bytes(key).decode("utf-8", "surrogateescape")
    if not isinstance(key, str) or not key:
        raise SampleFormatError(url, "sample has no __key__ (a non-empty str)",
                                key=key if isinstance(key, str) else None)
    base = key[key.rfind("/") + 1:]
    if not base:
        raise SampleFormatError(url, "sample key ends with '/' (empty basename)", key=key)
    if "." in base:
        raise SampleFormatError(
            url, "sample key has a '.' in its basename; readers (htools, webdataset) would "
            "split its member names at that dot", key=key)
    if "\0" in key or key.startswith(("/", "./")):
        raise SampleFormatError(url, "sample key starts with '/' or './' or contains NUL",
                                key=key)
    return key


def _check_field(field: Any, key: str, url: str) -> None:
    """Field names are str without '/' or NUL.  The empty field is a member named
    exactly the key (a dotless member on read), so such shards pass through."""
    if not isinstance(field, str) or "/" in field or "\0" in field:
        raise SampleFormatError(
            url, f"bad field name {field!r}: must be a str without '/' or NUL", key=key)


def _pax_records(records: dict[str, str]) -> bytes:
    """Encode pax records ``"%d %s=%s\\n"`` (the length counts itself)."""
    out = []
    for k, v in records.items():
        body = b" " + k.encode("utf-8") + b"=" + v.encode("utf-8", "surrogateescape") + b"\n"
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n = len(str(n)) + len(body)
        out.append(str(n).encode("ascii") + body)
    return b"".join(out)


def _ustar_split(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) for the ustar prefix field, or None if the name does not fit."""
    if len(name) > 256:
        return None
    i = name.find(b"/")
    while i >= 0:
        if i <= 155 and len(name) - i - 1 <= 100:
            return (name[:i], name[i + 1:]) if i + 1 < len(name) else None
        if i > 155:
            return None
        i = name.find(b"/", i + 1)
    return None


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
                 mode: int = 0o644, level: int | None = None, close_raw: bool = False):
        self.url = hide_credentials(url)
        self.raw = stream
        self.close_raw = close_raw
        self.stream = open_stream_writer(stream, url, level, compress=compress)
        self.mtime = int(time.time() if mtime is None else mtime)
        self.bytes_written = 0
        self.samples_written = 0
        self.closed = False
        self._out = bytearray()
        self._suffixes: dict[str, tuple[bytes, int, bool]] = {}
        self._reg = self._template(b"0", mode, user, group)
        self._pax = self._template(b"x", mode, user, group)
        self._reg_sum = sum(self._reg)
        self._pax_sum = sum(self._pax)

    def _template(self, kind: bytes, mode: int, user: str, group: str) -> bytes:
        """A header with empty name, size 0 and the checksum field as spaces."""
        h = bytearray(BLOCK)
        h[100:108] = b"%07o\0" % (mode & 0o7777)
        h[108:116] = b"%07o\0" % 0
        h[116:124] = b"%07o\0" % 0
        h[136:148] = b"%011o\0" % (self.mtime & MAX_OCTAL_SIZE)
        h[148:156] = b"        "
        h[156:157] = kind
        h[257:265] = _USTAR_POSIX
        h[265:297] = user.encode("utf-8")[:31].ljust(32, b"\0")
        h[297:329] = group.encode("utf-8")[:31].ljust(32, b"\0")
        h[329:337] = b"%07o\0" % 0
        h[337:345] = b"%07o\0" % 0
        for i in range(124, 135):  # size digits are filled in per member
            h[i] = 0
        return bytes(h)

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _header(self, out: bytearray, name: bytes, size: int, prefix: bytes = b"",
                pax: bool = False) -> None:
        """Append one header (name already fits ustar) to ``out``."""
        o = len(out)
        out += self._pax if pax else self._reg
        size_f = b"%011o" % (size if size <= MAX_OCTAL_SIZE else 0)
        total = ((self._pax_sum if pax else self._reg_sum)
                 + (adler32(name) & 0xFFFF) - 1 + (adler32(size_f) & 0xFFFF) - 1)
        out[o:o + len(name)] = name
        out[o + 124:o + 135] = size_f
        if prefix:
            out[o + 345:o + 345 + len(prefix)] = prefix
            total += sum(prefix)
        out[o + 148:o + 155] = b"%06o\0" % total

    def _long_header(self, out: bytearray, name: str, nb: bytes, size: int) -> None:
        """A header for a name that needs the ustar prefix or a pax record, or a huge size."""
        records: dict[str, str] = {}
        prefix = b""
        short = nb
        if len(nb) > 100 or not nb.isascii():
            split = _ustar_split(nb) if nb.isascii() else None
            if split is not None:
                prefix, short = split
            else:
                records["path"] = name
                short = name.encode("ascii", "replace")[:100]
        if size > MAX_OCTAL_SIZE:
            records["size"] = str(size)
        if records:
            payload = _pax_records(records)
            self._header(out, b"././@PaxHeader", len(payload), pax=True)
            out += payload
            out += _ZEROS[:-len(payload) % BLOCK]
        self._header(out, short, size, prefix)

    def write(self, sample: dict) -> int:
        """Write one sample; returns the number of (uncompressed) tar bytes written."""
        if self.closed:
            raise ValueError("write to a closed TarWriter")
        key = _check_key(sample.get("__key__"), self.url)
        kb = key.encode("utf-8", "surrogateescape")
        short_key = len(kb) < 100 and kb.isascii()
        ksum = (adler32(kb) & 0xFFFF) - 1 if short_key else 0  # exact: at most 99 bytes
        try:
            fields = sorted(sample)
        except TypeError:
            raise SampleFormatError(self.url, "field names must be str", key=key) from None
        # Check every field before writing any, so a bad sample leaves no partial members.
        items = []
        suffixes = self._suffixes
        for field in fields:
            if field[:1] == "_":
                continue
            suffix = suffixes.get(field) or self._suffix(field, key)
            value = sample[field]
            if type(value) is not bytes:
                value = self._as_bytes(value, field, key)
            items.append((field, suffix, value))
        if not items:
            return 0
        out = self._out
        start = len(out)
        flushed = 0
        template, tsum = self._reg, self._reg_sum
        for field, suffix, value in items:
            size = len(value)
            nb = kb + suffix[0]
            if short_key and suffix[2] and len(nb) <= 100 and size <= MAX_OCTAL_SIZE:
                o = len(out)
                out += template
                out[o:o + len(nb)] = nb
                size_f = b"%011o" % size
                out[o + 124:o + 135] = size_f
                total = tsum + ksum + suffix[1] + (adler32(size_f) & 0xFFFF) - 1
                out[o + 148:o + 155] = b"%06o\0" % total
            else:
                self._long_header(out, key + "." + field, nb, size)
            if size >= DIRECT:  # big values go straight to the stream, uncopied
                flushed += len(out) - start + size
                self.stream.write(out)
                self.stream.write(value)
                out = self._out = bytearray()
                start = 0
            else:
                out += value
            out += _ZEROS[:-size % BLOCK]
        n = flushed + len(out) - start
        if len(out) >= FLUSH:
            self.stream.write(out)
            self._out = bytearray()
        self.bytes_written += n
        self.samples_written += 1
        return n

    def _suffix(self, field: str, key: str) -> tuple[bytes, int, bool]:
        """Validate a field name; cache (b".field", its byte sum, is ASCII)."""
        _check_field(field, key, self.url)
        fb = b"." + field.encode("utf-8", "surrogateescape") if field else b""
        entry = (fb, sum(fb), fb.isascii())
        if len(self._suffixes) > 4096:
            self._suffixes.clear()
        self._suffixes[field] = entry
        return entry

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
        self._out += _ZEROS[:tail]
        self.bytes_written += tail
        self.stream.write(self._out)
        self._out = bytearray()
        self.stream.close()
        flush = getattr(self.raw, "flush", None)
        if flush is not None and not getattr(self.raw, "closed", False):
            flush()
        if self.close_raw:
            self.raw.close()


def write_samples(stream: BinaryIO, samples: Iterable[dict], **kw: Any) -> tuple[int, int]:
    """Write ``samples`` with a :class:`TarWriter` (``kw`` passed on); returns
    (samples written, uncompressed bytes written)."""
    with TarWriter(stream, **kw) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.samples_written, writer.bytes_written
