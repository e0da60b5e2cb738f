"""The parts of a tar member as :class:`~htools.tar.write.TarWriter` encodes them: the
checks of a sample's key and field names (:class:`SampleFormatError`), and the ustar
header: a template per type flag (:class:`HeaderEncoder`), the size and checksum fields
(cached), the ustar prefix split, the one-call layout of a short header
(:data:`SHORT_HEADER`) and the padding table the writer's loop uses."""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

from htools.errors import TarFormatError
from htools.tar.header import BLOCK, MAX_OCTAL_SIZE, RECORD, USTAR_POSIX, byte_sum

ZEROS = bytes(RECORD)
_NUL = b"\0"
PADS = tuple(bytes(n) for n in range(BLOCK))  # PADS[-size % BLOCK]: a member's padding
# A header with a short name and no prefix, in one call: name (NUL-padded), mode to
# size, size digits, mtime, checksum field, type flag to the end (prefix empty).
SHORT_HEADER = struct.Struct("100s24s11s13s8s356s")
MAX_CACHED = 4096  # field-name sets whose write plan a writer keeps


class SampleFormatError(TarFormatError, ValueError):
    """A sample that cannot be written as tar members (bad key, field or value)."""


# --------------------------------------------------------------------------- samples


def check_key(key: Any, url: str) -> str:
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


def check_field(field: Any, key: str, url: str) -> None:
    """Field names are str without '/' or NUL.  The empty field is a member named
    exactly the key (a dotless member on read), so such shards pass through."""
    if not isinstance(field, str) or "/" in field or "\0" in field:
        raise SampleFormatError(
            url, f"bad field name {field!r}: must be a str without '/' or NUL", key=key)


# --------------------------------------------------------------------------- headers


class HeaderEncoder:
    """Encodes ustar headers of one type flag around a fixed template."""

    def __init__(self, kind: bytes, mode: int, mtime: int, user: str, group: str):
        h = bytearray(BLOCK)
        h[100:108] = b"%07o\0" % (mode & 0o7777)
        h[108:116] = b"%07o\0" % 0
        h[116:124] = b"%07o\0" % 0
        h[136:148] = b"%011o\0" % (mtime & MAX_OCTAL_SIZE)
        h[148:156] = b"        "  # the checksum counts its own field as spaces
        h[156:157] = kind
        h[257:265] = USTAR_POSIX
        h[265:297] = user.encode("utf-8")[:31].ljust(32, _NUL)
        h[297:329] = group.encode("utf-8")[:31].ljust(32, _NUL)
        h[329:337] = b"%07o\0" % 0
        h[337:345] = b"%07o\0" % 0
        # Name, size digits, checksum and prefix are filled in per member.
        self.sum = sum(h)
        self.mode_to_size = bytes(h[100:124])
        self.size_end_to_chk = bytes(h[135:148])
        self.type_to_prefix = bytes(h[156:345])
        self.tail = bytes(h[500:])
        self.type_to_end = bytes(h[156:])  # with an empty prefix

    def encode(self, name: bytes, size: int, prefix: bytes = b"") -> bytes:
        """A header block for ``name`` (at most 100 bytes) and ``prefix`` (at most 155
        bytes); ``size`` is written as 0 beyond the octal field (a pax record holds it)."""
        size_f = b"%011o" % (size if size <= MAX_OCTAL_SIZE else 0)
        total = self.sum + byte_sum(name) + byte_sum(size_f)  # each field < 256 bytes
        if prefix:
            total += byte_sum(prefix)
        return b"".join((name.ljust(100, _NUL), self.mode_to_size, size_f, self.size_end_to_chk,
                         b"%06o\0 " % total, self.type_to_prefix, prefix.ljust(155, _NUL),
                         self.tail))


@lru_cache(maxsize=MAX_CACHED)
def size_field_of(size: int) -> tuple[bytes, int]:
    """A header's size field (11 octal digits) and its byte sum (files often share a size)."""
    size_f = b"%011o" % size
    return size_f, byte_sum(size_f)


@lru_cache(maxsize=4 * MAX_CACHED)
def checksum_field(total: int) -> bytes:
    """A header's checksum field (kept: formatting it costs a fifth of a short header)."""
    return b"%06o\0 " % total


def ustar_split(name: bytes) -> tuple[bytes, bytes] | None:
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
