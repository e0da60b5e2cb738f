"""The tar layout shared by :mod:`htools.tarread` and :mod:`htools.tarwrite`: block
sizes, the ustar magic, pax extended records and a fast byte sum for checksums."""

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
