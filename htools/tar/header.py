"""The tar layout shared by :mod:`htools.tar.read` and :mod:`htools.tar.write`: block
sizes, the ustar magic, pax extended records, a fast byte sum for checksums, and the
field names of an encoded sample's headers (:func:`encoded_fields`)."""

from __future__ import annotations

from zlib import adler32

from htools.errors import TarFormatError

BLOCK = 512
RECORD = 10240  # GNU tar pads the archive to a multiple of 20 blocks
MAX_OCTAL_SIZE = 8**11 - 1  # the largest size an 11-digit octal field holds
USTAR_MAGIC = b"ustar\x00"
USTAR_POSIX = USTAR_MAGIC + b"00"  # magic + version


def byte_sum(data: bytes | bytearray) -> int:
    """``sum(data)``, computed in C, for data whose byte sum is below 65520.

    adler32's low 16 bits are ``(1 + sum(data)) % 65521``, so they are exactly the
    sum plus one while the sum stays below 65520: always for at most 256 bytes
    (256 * 255 = 65280), and for a 512-byte block that is ASCII (512 * 127) or has at
    least 256 NUL bytes.  Callers check that bound; header checksums are such sums.
    """
    return (adler32(data) & 0xFFFF) - 1


def parse_pax(data: bytes, url: str, offset: int) -> dict[str, str]:
    """pax extended header records ``"%d %s=%s\\n"`` (a repeated keyword: the last)."""
    return dict(pax_items(data, url, offset))


def pax_items(data: bytes, url: str, offset: int) -> list[tuple[str, str]]:
    """pax extended header records in order, repeated keywords too (sparse 0.0 needs them)."""
    items: list[tuple[str, str]] = []
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
        items.append((key.decode("utf-8", "surrogateescape"),
                      value.decode("utf-8", "surrogateescape")))
        pos = end
    return items


# --------------------------------------------------------------------------- GNU sparse
#
# GNU tar --sparse stores only the data regions of a file with holes, plus a map of
# (offset, numbytes) regions in the real file; the holes read back as zeros.  Four
# layouts, all read: old GNU type 'S' (map in the header at 386, then in extension
# blocks), and pax versions 0.0 (repeated GNU.sparse.offset/numbytes records), 0.1
# (GNU.sparse.map) and 1.0 (the map as decimal lines at the start of the data).
# The helpers raise ValueError with the reason; the reader names URL/member/offset.

SPARSE_OLD_OFFSET = 386  # the first of 4 (offset, numbytes) pairs in an 'S' header
SPARSE_OLD_EXTENDED = 482  # flag: an extension block of 21 pairs follows
SPARSE_OLD_REALSIZE = 483  # 12-byte real size field
SPARSE_EXT_ENTRIES = 21
SPARSE_EXT_EXTENDED = 504  # flag in an extension block: another one follows
MAX_SPARSE_REGIONS = 1 << 22  # more regions than this in one map is corrupt


def sparse_map_10(data: bytes) -> tuple[list[tuple[int, int]], int]:
    """The pax 1.0 map at the start of a member's data: (regions, where the data starts).

    ``count\\n`` then ``offset\\nnumbytes\\n`` per region, NUL-padded to a block boundary.
    """
    pos = 0

    def number() -> int:
        nonlocal pos
        nl = data.find(b"\n", pos, pos + 21)  # at most 20 digits
        digits = data[pos:nl]
        if nl < 0 or not digits.isdigit():
            raise ValueError(f"bad number {data[pos:pos + 20]!r} in the sparse map "
                             "(pax 1.0)")
        pos = nl + 1
        return int(digits)

    count = number()
    if count > MAX_SPARSE_REGIONS or 4 * count > len(data):
        raise ValueError(f"sparse map (pax 1.0) of {count} regions in {len(data)} bytes")
    regions = [(number(), number()) for _ in range(count)]
    return regions, pos + (-pos % BLOCK)


def sparse_pairs(numbers: list[int]) -> list[tuple[int, int]]:
    """``[o1, n1, o2, n2, ...]`` (pax 0.1's GNU.sparse.map) as regions."""
    if len(numbers) % 2:
        raise ValueError("sparse map with an odd count of numbers")
    return list(zip(numbers[::2], numbers[1::2]))


def sparse_expand(stored: bytes | memoryview, regions: list[tuple[int, int]],
                  realsize: int) -> bytes:
    """The real file: ``stored`` bytes laid at the regions' offsets, zeros between.

    The regions must be in order, not overlap, lie within ``realsize`` and take
    exactly the stored bytes (as GNU tar writes them).
    """
    if realsize < 0:
        raise ValueError(f"negative sparse real size {realsize}")
    view = memoryview(stored)
    parts: list[bytes | memoryview] = []
    at = got = 0  # end of the last region in the real file / in the stored data
    for offset, numbytes in regions:
        if offset < 0 or numbytes < 0 or offset + numbytes > realsize:
            raise ValueError(f"sparse region {offset}+{numbytes} outside the real size "
                             f"{realsize}")
        if not numbytes:
            continue  # GNU tar ends a map whose file ends in a hole with (realsize, 0)
        if offset < at:
            raise ValueError(f"sparse region at {offset} overlaps or precedes the one "
                             f"ending at {at}")
        if got + numbytes > len(view):
            raise ValueError(f"sparse map needs more than the {len(view)} stored bytes")
        if offset > at:
            parts.append(bytes(offset - at))
        parts.append(view[got:got + numbytes])
        got += numbytes
        at = offset + numbytes
    if got != len(view):
        raise ValueError(f"sparse map takes {got} of the {len(view)} stored bytes")
    if at < realsize:
        parts.append(bytes(realsize - at))
    return b"".join(parts)


def pax_records(records: dict[str, str]) -> bytes:
    """Encode pax records ``"%d %s=%s\\n"`` (the length counts itself)."""
    out = []
    for k, v in records.items():
        body = b" " + k.encode("utf-8") + b"=" + v.encode("utf-8", "surrogateescape") + b"\n"
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n = len(str(n)) + len(body)
        out.append(str(n).encode("ascii") + body)
    return b"".join(out)


def nts(field: bytes | bytearray) -> bytes:
    """A NUL-terminated header string field."""
    i = field.find(0)
    return bytes(field if i < 0 else field[:i])


def number(field: bytes | bytearray) -> int:
    """A numeric header field: octal (NUL/space padded) or GNU base-256."""
    if field[:1] in (b"\x80", b"\xff"):
        n = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:
            n -= 256 ** (len(field) - 1)
        return n
    digits = nts(field).strip()
    return int(digits, 8) if digits else 0


def encoded_fields(data: bytes | bytearray | memoryview) -> list[str]:
    """The field names of one sample as this module encodes it: ustar headers (the name
    split into prefix and name when long) and pax ``x`` headers carrying ``path``/``size``.
    A plain header (no prefix, no pax record) is read in place: its name field's bytes
    after the basename's first dot, and its size field, each looked up in a small cache."""
    mv = memoryview(data)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    pos, end = 0, len(mv)
    fields: list[str] = []
    names, sizes = _FIELD_NAMES, _SIZES
    while pos + BLOCK <= end:
        if mv[pos + 156] == 0x78 or mv[pos + 345]:  # pax record or prefix: the slow path
            return fields + _fields_from(mv, pos)
        raw = mv[pos:pos + 100].tobytes()
        nul = raw.find(0)
        if nul >= 0:
            raw = raw[:nul]
        dot = raw.find(b".", raw.rfind(b"/") + 1)
        tail = raw[dot + 1:] if dot >= 0 else b""
        field = names.get(tail)
        if field is None:
            field = remember(names, tail, tail.decode("utf-8", "surrogateescape"))
        fields.append(field)
        digits = mv[pos + 124:pos + 135].tobytes()
        size = sizes.get(digits)
        if size is None:
            size = remember(sizes, digits, int(digits or b"0", 8))
        pos += BLOCK + size + (-size % BLOCK)
    return fields


_FIELD_NAMES: dict[bytes, str] = {}  # a name field's bytes after the key's dot -> field
_SIZES: dict[bytes, int] = {}  # size field digits -> size
_CACHED = 4096  # entries of each cache, at most


def remember(cache: dict, key: bytes, value):
    """``cache[key] = value`` (returned), the cache emptied first when full: the
    readers' small caches of header fields (a member's are mostly those of one before)."""
    if len(cache) >= _CACHED:
        cache.clear()
    cache[key] = value
    return value


def _fields_from(mv: memoryview, pos: int) -> list[str]:
    """:func:`encoded_fields` of the headers from ``pos`` on, any header."""
    end = len(mv)
    fields: list[str] = []
    pending: dict[str, str] = {}
    while pos + BLOCK <= end:
        h = bytes(mv[pos:pos + BLOCK])
        size = int(pending.pop("size")) if "size" in pending else int(h[124:135] or b"0", 8)
        if h[156] == ord("x"):
            pending.update(parse_pax(bytes(mv[pos + BLOCK:pos + BLOCK + size]), "", pos))
        else:
            name = pending.pop("path", None)
            if name is None:
                raw = h[:100].split(b"\0", 1)[0]
                prefix = h[345:500].split(b"\0", 1)[0]
                name = ((prefix + b"/" + raw) if prefix else raw).decode("utf-8",
                                                                       "surrogateescape")
            base = name.rfind("/") + 1
            dot = name.find(".", base)
            fields.append(name[dot + 1:] if dot >= 0 else "")
        pos += BLOCK + size + (-size % BLOCK)
    return fields
