"""Streaming tar reader: members and WebDataset samples (see :mod:`htools.tar`).

Headers are parsed by hand out of a big reusable buffer (filled with
``readinto``), so a member costs a few slices and no system call.  A plain
regular member (ustar or GNU, name in the name field, octal size, no pending
long name or pax records) takes the fast path in :meth:`_Scanner._hot`, which
also groups members into samples (a member of the current sample is recognised by
its name's bytes); every other header takes the one slow path,
:meth:`~htools.tar.special.SpecialHeaders.special`.  GNU sparse members (old GNU 'S'
and pax 0.0/0.1/1.0) come out as the real file, holes as zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, BinaryIO
from zlib import adler32

from htools.errors import HtoolsError, TarFormatError, hide_credentials
from htools.tar.compress import DECODE_ERRORS, compressed_span
from htools.tar.header import BLOCK, remember
from htools.tar.special import SpecialHeaders

# Reader buffer: above storage's 1 MiB buffered reader, which then reads a plain stream
# straight into it (not into its own, then copied); a decoder is read DECODED at a time.
CHUNK, DECODED = 4 << 20, 1 << 20

_ZERO_BLOCK = bytes(BLOCK)
_NEVER = bytes(BLOCK + 1)  # a key prefix that no header starts with
_SPLIT = "\0split"  # a marker, compared by identity (see _Scanner._hot)
# Buffers of scanners that ended, for the next ones: a fresh CHUNK buffer costs page
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


# --------------------------------------------------------------------------- scanner


class _Scanner(SpecialHeaders):
    """State of one tar stream being scanned: a reusable buffer over ``stream``.

    ``buf[0]`` is at byte ``base`` of the tar stream.  :meth:`_hot` is the hot
    loop; the other methods are slow paths (refills, members larger than the
    buffer; non-plain headers and errors in :class:`SpecialHeaders`).
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
        self.grows = getattr(stream, "htools_compressed", None) is None  # plain: see fill
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
        return self._scan(False)  # type: ignore[return-value]

    def samples(self) -> Iterator[dict]:
        """WebDataset samples (see :func:`read_samples`)."""
        return self._scan(True)  # type: ignore[return-value]

    def _scan(self, group: bool) -> Iterator[Any]:
        """Members, or with ``group`` samples: a plain member whose name is the current
        key, a dot and a field without '/' joins its sample without its name being
        decoded or split.  Every member's data is a copy: the buffer serves the next
        scanner when this one ends."""
        try:
            yield from self._hot(group)
        finally:
            if len(_FREE_BUFFERS) < _KEEP_BUFFERS:
                _FREE_BUFFERS.append(self.buf)

    def _hot(self, group: bool) -> Iterator[Any]:
        url, mv, sums, zero_block = self.url, self.mv, self.sums, _ZERO_BLOCK
        base = pos = end = 0
        plain = True
        sample: dict = {}
        key: str | None = None  # None before the first member
        kdot, klen = _NEVER, 1  # key + b".": before the first member, no header starts so
        sizes: dict[bytes, int] = {}  # size field -> size (-1: not octal)
        fields: dict[bytes, str] = {}  # field bytes -> field
        tails: dict[bytes, str | bool] = {}  # name field after kdot -> field (False: none)
        split = _SPLIT  # as a name: this plain member's new key was split on the bytes
        while True:
            if end - pos < BLOCK:
                end = self.fill_header(pos, end)
                pos, base = 0, self.base
                if not end:
                    break
            h = mv[pos:pos + BLOCK].tobytes()
            if not h[0] and h == zero_block:
                break  # end-of-archive marker
            exp = sums.get(h[148:156])
            if exp is None:
                exp = self.expected_sum(h[148:156])
            # byte_sum(h), inlined; it may be inexact unless ASCII or half NUL
            if (adler32(h) & 0xFFFF) - 1 != exp or not (h.isascii() or h.count(0) >= 256):
                self.check_header(h, base + pos)
            kind = h[156]
            name = None
            # A plain member: no ustar prefix, an octal size (else the slow path)
            if plain and (kind == 0x30 or kind == 0) and not h[345]:
                size = sizes.get(h[124:136])
                if size is None:
                    size = _size(sizes, h[124:136])
                if size >= 0:
                    need = BLOCK + size + (-size % BLOCK)
                    field = None
                    if group and h.startswith(kdot):  # the current sample's, unless a '/'
                        field = tails.get(h[klen:100])
                        if field is None:
                            field = _tail(tails, h[klen:100])
                        if field is not False and end - pos >= need and field not in sample:
                            sample[field] = mv[pos + BLOCK:pos + BLOCK + size].tobytes()
                            pos += need
                            continue  # the common case: no name decoded, nothing split
                    hoff = base + pos
                    i = h.find(0)  # the name field's end: the first NUL, at most 100
                    if not 0 <= i < 100:
                        i = 100
                    # empty, "./" and v7 directory ("/" at the end) names are special
                    if i and h[i - 1] != 0x2F and not (h[0] == 0x2E and h[1] == 0x2F):
                        if end - pos >= need:
                            data = mv[pos + BLOCK:pos + BLOCK + size].tobytes()
                            pos += need
                        else:
                            data, pos, end = self.member_data(pos, end, size,
                                                              _decode(h, i), hoff)
                            base = self.base
                        # split_key() on the bytes: a new key (no dot: all key, the tail's)
                        if group and field is None and \
                                (dot := h.find(0x2E, h.rfind(0x2F, 0, i) + 1, i)) >= 0:
                            klen = dot + 1
                            kdot, raw = h[:klen], h[klen:i]
                            key = h[:dot].decode("utf-8", "surrogateescape")
                            field = fields.get(raw)
                            if field is None:
                                field = _field(fields, raw)
                            name = split
                        else:
                            name = h[:i].decode("utf-8", "surrogateescape")  # _decode, inlined
            if name is not split:
                if name is None:
                    hoff = base + pos
                    name, data, pos, end = self.special(h, hoff, pos, end)
                    plain, base = self.plain, self.base
                    if data is None:
                        continue
                if not group:
                    yield name, data, hoff
                    continue
                k, field = split_key(name)
                if k == key:  # a member of the current sample, past the fast path
                    if field in sample:
                        raise _repeated(url, k, field, name, hoff)
                    sample[field] = data
                    continue
                key, kdot = k, _key_prefix(k)
                klen = len(kdot)
            if sample:  # the last key's ({} before the first member)
                yield sample
            if field == "__key__" or field == "__url__":  # would overwrite the reserved one
                raise _repeated(url, key, field, _decode(h, i) if name is split else name, hoff)
            sample = {"__key__": key, "__url__": url, field: data}
        if group and key is not None:
            yield sample

    # ---- the slow path (see SpecialHeaders for the headers)

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
            mv[:rem] = mv[pos:end]  # one memmove (the ranges may overlap), no bytes made
        self.base += pos
        end = rem
        # how far to fill: DECODED, or for a plain stream up to a quarter of what was read
        # (a range read that stops early reads little past its end) and the whole buffer
        cap = max(need, min(len(buf), max(DECODED, self.base // 4)) if self.grows else DECODED)
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
    return _Scanner(stream, url).samples()


def _repeated(url: str, key: str, field: str, name: str, hoff: int) -> TarFormatError:
    why = ("reserved field name" if field in ("__key__", "__url__")
           else f"field {field!r} repeated within one sample")
    return TarFormatError(url, why, key=key, member=name, offset=hoff)


def _decode(h: bytes, i: int) -> str:
    """The name of a plain header whose name field ends at ``i``."""
    return h[:i].decode("utf-8", "surrogateescape")


# The hot loop's caches (:func:`~htools.tar.header.remember`: a few thousand entries at
# most): a member's header fields are mostly those of a member before it.


def _size(sizes: dict[bytes, int], raw: bytes) -> int:
    """An octal size field (its first 11 bytes, as tar readers take it), -1 if it is
    not one (base-256 and bad fields: the slow path decides)."""
    try:
        size = int(raw[:11], 8)
    except ValueError:
        size = -1
    return remember(sizes, raw, size)


def _field(fields: dict[bytes, str], raw: bytes) -> str:
    """``raw`` decoded, kept in ``fields``."""
    return remember(fields, raw, raw.decode("utf-8", "surrogateescape"))


def _tail(tails: dict[bytes, str | bool], tail: bytes) -> str | bool:
    """The field of a name that is the current key, a dot and ``tail`` (the rest of the
    name field, up to its first NUL); False if a '/' makes it another key's."""
    nul = tail.find(0)
    raw = tail if nul < 0 else tail[:nul]
    return remember(tails, tail,
                    False if b"/" in raw else raw.decode("utf-8", "surrogateescape"))


def _key_prefix(key: str) -> bytes:
    """``key`` + ``"."`` as header bytes: a plain member's name that starts with it (and
    has no '/' after it) belongs to the key's sample.  A key that no plain name can
    start with (a NUL in it, longer than the name field, or not encodable back) gets
    one that never matches."""
    try:
        prefix = key.encode("utf-8", "surrogateescape") + b"."
    except UnicodeEncodeError:
        return _NEVER
    return _NEVER if b"\0" in prefix or len(prefix) > 100 else prefix
