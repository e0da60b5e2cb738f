"""Streaming tar reader: members and WebDataset samples (see :mod:`htools.tar`).

Headers are parsed by hand out of a big reusable buffer (filled with
``readinto``), so a member costs a few slices and no system call.  A plain
regular member (ustar or GNU, name in the name field, octal size, no pending
long name or pax records) takes the fast path in :meth:`_Scanner.members`;
every other header takes the one slow path, :meth:`_Scanner.special`.  GNU sparse
members (old GNU 'S' and pax 0.0/0.1/1.0) come out as the real file, holes as zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from htools.errors import HtoolsError, TarFormatError, hide_credentials
from htools.tar.compress import DECODE_ERRORS, compressed_span
from htools.tar.header import BLOCK, USTAR_MAGIC, byte_sum, pax_items
from htools.tar.header import nts as _nts
from htools.tar.header import number as _number
from htools.tar.sparse import SparseReading

CHUNK = 1 << 20  # reader buffer size

_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = frozenset((0x30, 0x00, 0x37))  # '0', NUL (old), '7' (contiguous)
_T_LONGNAME, _T_LONGLINK = 0x4C, 0x4B  # GNU 'L', 'K'
_T_PAX_GLOBAL = 0x67  # 'g'
_PAX = frozenset((0x78, _T_PAX_GLOBAL, 0x58))  # 'x', 'g', 'X' (Solaris)
_T_SPARSE = 0x53  # old GNU 'S'
_UNSUPPORTED = frozenset((0x4D,))  # 'M' multi-volume continuation
_MAX_META = 1 << 24  # longname/pax payloads larger than this are corrupt
# Buffers of scanners that ended, for the next ones: a fresh 1 MiB buffer costs page
# faults worth a tiny shard's whole read.
_FREE_BUFFERS: list[bytearray] = []
_KEEP_BUFFERS = 4


def split_key(name: str) -> tuple[str, str]:
    """``"a/b/n01.seg.png"`` -> ``("a/b/n01", "seg.png")``: the key ends at the first dot
    of the basename; a name without a dot there is all key (``(name, "")``)."""
    dot = name.find(".", name.rfind("/") + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


# --------------------------------------------------------------------------- header fields


def _header_size(h: bytes) -> int:
    """The size field; the fast path inlines its first, common case."""
    try:
        return int(h[124:135], 8)
    except ValueError:
        return _number(h[124:136])


def _decode_name(raw: bytes) -> str:
    name = raw.decode("utf-8", "surrogateescape")
    while name.startswith("./"):
        name = name[2:]
    return name


def _header_name(h: bytes) -> str:
    """The name in a header block: name field, joined to the ustar prefix if any."""
    raw = _nts(h[:100])
    if h[345] and h[257:263] == USTAR_MAGIC:
        raw = _nts(h[345:500]) + b"/" + raw
    return _decode_name(raw)


def _checksums(header: bytes | bytearray) -> tuple[int, int]:
    """The unsigned and the (historic) signed checksum of a header block."""
    body = bytes(header[:148]) + b"        " + bytes(header[156:512])
    unsigned = sum(body)
    signed = unsigned - 256 * sum(1 for b in body if b > 127)
    return unsigned, signed


# --------------------------------------------------------------------------- scanner


class _Scanner(SparseReading):
    """State of one tar stream being scanned: a reusable buffer over ``stream``.

    ``buf[0]`` is at byte ``base`` of the tar stream.  :meth:`members` is the hot
    loop; the other methods are slow paths (refills, members larger than the
    buffer, non-plain headers, errors).
    """

    def __init__(self, stream: BinaryIO, url: str):
        self.stream = stream
        self.url = hide_credentials(url)
        self.buf = _FREE_BUFFERS.pop() if _FREE_BUFFERS else bytearray(CHUNK)
        self.mv = memoryview(self.buf)
        self.base = 0
        self.sums: dict[bytes, int] = {}  # checksum field -> expected byte sum of the block
        readinto = getattr(stream, "readinto", None)
        self._readinto: Callable[[Any], int] = readinto or self._read_copy
        # Pending metadata for the next member, set by long-name and pax headers.
        self.longname: str | None = None
        self.pax: dict[str, str] = {}
        self.gpax: dict[str, str] = {}
        # GNU.sparse.* pax records for the next member, all records in order (0.0 repeats)
        self.sparse: tuple[dict[str, str], list[tuple[str, str]]] | None = None
        self.plain = True  # nothing pending: the fast path applies

    def _read_copy(self, out: memoryview) -> int:
        data = self.stream.read(len(out))
        n = len(data)
        out[:n] = data
        return n

    def _read_error(self, exc: BaseException, offset: int) -> TarFormatError:
        span = compressed_span(self.stream)
        at = f" in compressed bytes {span[0]:,}-{span[1]:,}" if span is not None else ""
        return TarFormatError(self.url, f"cannot decode stream: {type(exc).__name__}: "
                              f"{exc}{at}", offset=offset)

    # ---- the hot loop

    def members(self) -> Iterator[tuple[str, bytes, int]]:
        """(name, data, header offset) of each regular member."""
        try:
            yield from self._members()
        finally:  # every member's data is a copy: the buffer can serve another scanner
            if len(_FREE_BUFFERS) < _KEEP_BUFFERS:
                _FREE_BUFFERS.append(self.buf)

    def _members(self) -> Iterator[tuple[str, bytes, int]]:
        mv = self.mv
        sums = self.sums
        zero_block = _ZERO_BLOCK
        pos = end = 0
        plain = True
        while True:
            if end - pos < BLOCK:
                end = self.fill_header(pos, end)
                pos = 0
                if not end:
                    return
            h = mv[pos:pos + BLOCK].tobytes()
            if not h[0] and h == zero_block:
                return  # end-of-archive marker
            hoff = self.base + pos
            exp = sums.get(h[148:156])
            if exp is None:
                exp = self.expected_sum(h[148:156])
            if byte_sum(h) != exp or not (h.isascii() or h.count(0) >= 256):
                self.check_header(h, hoff)  # not a match, or byte_sum() may be inexact
            kind = h[156]
            if plain and (kind == 0x30 or kind == 0):
                try:
                    size = int(h[124:135], 8)  # _header_size(h), its common case
                except ValueError:
                    size = -1
                i = h.find(0, 0, 100)
                if i < 0:
                    i = 100
                # _header_name(h) unless a name is empty, has a ustar prefix, a leading
                # "./" or a trailing "/" (a v7 directory): those are special.
                if (size >= 0 and i and not h[345] and h[i - 1] != 0x2F
                        and not (h[0] == 0x2E and h[1] == 0x2F)):
                    name = h[:i].decode("utf-8", "surrogateescape")
                    need = BLOCK + size + (-size % BLOCK)
                    if end - pos >= need:
                        data = mv[pos + BLOCK:pos + BLOCK + size].tobytes()
                        pos += need
                    else:
                        data, pos, end = self.member_data(pos, end, size, name, hoff)
                    yield name, data, hoff
                    continue
            name, data, pos, end = self.special(h, hoff, pos, end)
            plain = self.plain
            if data is not None:
                yield name, data, hoff

    # ---- the slow path

    def special(self, h: bytes, hoff: int, pos: int,
                end: int) -> tuple[str, bytes | None, int, int]:
        """Every header the fast path leaves: long names, pax records, prefixed or
        v7 names, base-256 sizes, non-regular members.  Returns (name, data or None
        if there is no member to yield, pos, end)."""
        try:
            size = _header_size(h)
        except ValueError:
            raise TarFormatError(self.url, "bad size field in tar header",
                                 member=_header_name(h), offset=hoff) from None
        kind = h[156]
        if kind == _T_LONGNAME or kind == _T_LONGLINK:
            data, pos, end = self.meta_data(pos, end, size, hoff, "GNU long name")
            if kind == _T_LONGNAME:
                self.longname = _decode_name(_nts(data))
                self.plain = False
            return "", None, pos, end
        if kind in _PAX:
            data, pos, end = self.meta_data(pos, end, size, hoff, "pax")
            self.pax_header(kind, pax_items(data, self.url, hoff), hoff)
            return "", None, pos, end
        sparse = self.sparse
        name, size = self.pending(h, size, hoff)
        if kind == _T_SPARSE:
            return self.old_gnu_sparse(h, name, size, hoff, pos, end)
        if kind in _UNSUPPORTED:
            raise TarFormatError(self.url, f"unsupported tar member type {chr(kind)!r}",
                                 member=name, offset=hoff)
        if kind not in _REGULAR or not name or name[-1:] == "/":  # v7 directories too
            pos, end = self.skip_data(pos, end, size, name, hoff)
            return name, None, pos, end
        info = None if sparse is None else self.sparse_records(*sparse, name, hoff)
        data, pos, end = self.member_data(pos, end, size, name, hoff)
        if info is not None:
            data = self.pax_sparse(info, data, name, hoff)
        return name, data, pos, end

    def pax_header(self, kind: int, items: list[tuple[str, str]], hoff: int) -> None:
        records = dict(items)
        if any(k.startswith("GNU.sparse.") for k in records):
            if kind == _T_PAX_GLOBAL:
                raise TarFormatError(self.url, "GNU sparse records in a global pax header",
                                     offset=hoff)
            self.sparse = records, items  # checked with the member's header
        if kind == _T_PAX_GLOBAL:
            self.gpax = {k: v for k, v in {**self.gpax, **records}.items() if v}
        else:
            self.pax = records
        self.plain = False

    def pending(self, h: bytes, size: int, hoff: int) -> tuple[str, int]:
        """The member's name and size after pending long-name and pax records (consumed)."""
        merged = {**self.gpax, **self.pax}
        if merged.get("path"):
            name = _decode_name(merged["path"].encode("utf-8", "surrogateescape"))
        elif self.longname is not None:
            name = self.longname
        else:
            name = _header_name(h)
        if self.sparse is not None:
            real = self.sparse[0].get("GNU.sparse.name")
            if real:  # pax 0.1/1.0: the header and any path record hold a made-up name
                name = _decode_name(real.encode("utf-8", "surrogateescape"))
            self.sparse = None
        self.longname, self.pax = None, {}
        self.plain = not self.gpax
        if merged.get("size"):
            try:
                size = int(merged["size"])
            except ValueError:
                raise TarFormatError(self.url, "bad pax size record", member=name,
                                     offset=hoff) from None
        return name, size

    def expected_sum(self, chk: bytes) -> int:
        """The byte sum of a header block whose checksum field is ``chk``, if below 65520."""
        try:
            exp = _number(chk) - 256 + sum(chk)
        except ValueError:
            return -2
        if not 0 <= exp < 65520:
            exp = -2  # never matches the fast test: check_header() decides exactly
        if len(self.sums) > 1 << 16:
            self.sums.clear()
        self.sums[chk] = exp
        return exp

    def check_header(self, h: bytes, hoff: int) -> None:
        """Raise unless ``h`` passes the full checksum test (signed sums too)."""
        try:
            stored: int | str = _number(h[148:156])
        except ValueError:
            stored = repr(h[148:156])
        sums = _checksums(h)
        if stored in sums:
            return
        name = None
        raw = _nts(h[:100])
        if raw and raw.isascii() and raw.decode().isprintable():
            name = _header_name(h)
        hint = " (not a tar stream?)" if hoff == 0 else ""
        span = compressed_span(self.stream)
        if span is not None and hoff:  # a corrupt compressed stream may decode to garbage
            hint = (f" (the compressed data may be corrupt at or before compressed byte "
                    f"{span[1]:,}: gzip -t or zstd -t checks it)")
        raise TarFormatError(
            self.url, f"bad tar header checksum: stored {stored}, computed {sums[0]}{hint}",
            member=name, offset=hoff)

    def truncated(self, name: str | None, hoff: int, size: int, got: int) -> TarFormatError:
        return TarFormatError(
            self.url, f"truncated member: the stream ends after {got} of its {size} bytes",
            member=name, offset=hoff)

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

    def fill_header(self, pos: int, end: int) -> int:
        """Refill so that a header is at 0: the new end, or 0 for an empty stream."""
        end = self.fill(pos, end, BLOCK)
        if end == 0:
            if self.base == 0:
                return 0  # an empty object: an empty shard
            # Every tar writer ends with zero blocks; without them the object
            # was cut short on a block boundary, and samples are missing.
            raise TarFormatError(self.url, "truncated tar: the stream ends without the "
                                 "end-of-archive marker", offset=self.base)
        if end < BLOCK:
            raise TarFormatError(self.url, "truncated tar: the stream ends inside a header",
                                 offset=self.base)
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


# --------------------------------------------------------------------------- public


def iter_members(stream: BinaryIO, url: str = "") -> Iterator[tuple[str, bytes, int]]:
    """(name, data, header offset) of each regular member of an uncompressed tar stream.

    Names are UTF-8 (surrogateescape for undecodable bytes) with any leading
    ``./`` removed.  Stops at the end-of-archive zero block or a clean EOF on a
    header boundary.  Use :func:`open_stream_reader` first for compressed input.
    """
    return _Scanner(stream, url).members()


def read_samples(stream: BinaryIO, url: str = "") -> Iterator[dict]:
    """WebDataset samples of a tar stream: consecutive members with one key form a sample.

    Each sample is ``{"__key__": key, "__url__": url, field: bytes, ...}``; a
    member name without a dot in its basename gives the field ``""``.  A field
    repeated within a sample is a :class:`TarFormatError` naming the URL, key,
    member and offset; so is every stream error (corrupt or truncated tar,
    undecodable compression), raised where the stream goes wrong.
    """
    url = hide_credentials(url)  # it lands in messages and in every sample's __url__
    sample: dict = {}
    key: str | None = None  # None before the first member
    for name, data, hoff in _Scanner(stream, url).members():
        dot = name.find(".", name.rfind("/") + 1)  # split_key, inlined
        if dot < 0:
            k, field = name, ""
        else:
            k, field = name[:dot], name[dot + 1:]
        if k != key:
            if key is not None:
                yield sample
            key = k
            if field == "__key__" or field == "__url__":  # would overwrite the reserved one
                raise _repeated(url, k, field, name, hoff)
            sample = {"__key__": k, "__url__": url, field: data}
        elif field in sample:
            raise _repeated(url, k, field, name, hoff)
        else:
            sample[field] = data
    if key is not None:
        yield sample


def _repeated(url: str, key: str, field: str, name: str, hoff: int) -> TarFormatError:
    why = ("reserved field name" if field in ("__key__", "__url__")
           else f"field {field!r} repeated within one sample")
    return TarFormatError(url, why, key=key, member=name, offset=hoff)
