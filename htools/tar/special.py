"""The tar reader's slow path (:mod:`htools.tar.read`): every header the fast path
leaves -- GNU long names, pax records (global ones too), ustar prefixes, v7 names,
base-256 sizes, non-regular members -- and the exact checksum test.  A mixin of the
reader's scanner, like :class:`~htools.tar.sparse.SparseReading`."""

from __future__ import annotations

from htools.errors import TarFormatError
from htools.tar.compress import compressed_span
from htools.tar.header import USTAR_MAGIC, pax_items
from htools.tar.header import nts as _nts
from htools.tar.header import number as _number
from htools.tar.sparse import SparseReading

_REGULAR = frozenset((0x30, 0x00, 0x37))  # '0', NUL (old), '7' (contiguous)
_T_LONGNAME, _T_LONGLINK = 0x4C, 0x4B  # GNU 'L', 'K'
_T_PAX_GLOBAL = 0x67  # 'g'
_PAX = frozenset((0x78, _T_PAX_GLOBAL, 0x58))  # 'x', 'g', 'X' (Solaris)
_T_SPARSE = 0x53  # old GNU 'S'
_UNSUPPORTED = frozenset((0x4D,))  # 'M' multi-volume continuation
_MAX_META = 1 << 24  # longname/pax payloads larger than this are corrupt


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


class SpecialHeaders(SparseReading):
    """The slow-path methods of the reader's scanner (state: ``longname``, ``pax``,
    ``gpax``, ``sparse``, ``plain``, ``sums``; set up by the scanner)."""

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

    def meta_data(self, pos: int, end: int, size: int, hoff: int,
                  what: str) -> tuple[bytes, int, int]:
        """The payload of a long-name/pax header: returns (data, pos, end)."""
        if size > _MAX_META:
            raise TarFormatError(self.url, f"{what} header of {size} bytes", offset=hoff)
        return self.member_data(pos, end, size, what, hoff)
