"""Stream compression for shards: gzip (through ``isal.igzip``) and zstd.

The codec is chosen by URL suffix (``.tgz``/``.tar.gz``/``.gz`` gzip,
``.tar.zst``/``.tzst``/``.zst`` zstd, anything else plain) and, when reading,
by the stream's magic bytes, which win over the suffix: a gzip stream named
``x.tar`` is still decompressed, and a plain tar named ``x.tgz`` is read as
plain (recognised by the ``ustar`` magic of its first header).

Writers are deterministic: the gzip header carries mtime 0 and no file name,
and zstd is single-threaded.  Closing a stream returned by
:func:`open_stream_writer` finishes the compressed stream but never closes the
raw stream underneath; closing a stream from :func:`open_stream_reader` does
not close it either.
"""

from __future__ import annotations

import gzip as _stdgzip
import io
import zlib
from typing import Any, BinaryIO

import zstandard

try:  # isal's igzip is a drop-in for gzip and several times faster
    from isal import igzip as _gzip
    from isal import isal_zlib as _isal_zlib

    GZIP_BACKEND = "isal"
    _GZIP_LEVELS = (0, 3)
    _GZIP_DEFAULT_LEVEL = 2
    _ISAL_ERRORS: tuple[type[BaseException], ...] = (_isal_zlib.error,)
except ImportError:  # pragma: no cover - isal is a dependency
    _gzip = _stdgzip  # type: ignore[assignment]
    GZIP_BACKEND = "gzip"
    _GZIP_LEVELS = (0, 9)
    _GZIP_DEFAULT_LEVEL = 6
    _ISAL_ERRORS = ()

__all__ = [
    "DECODE_ERRORS",
    "GZIP_BACKEND",
    "NoClose",
    "compressed_span",
    "compression_for",
    "open_stream_reader",
    "open_stream_writer",
    "sniff",
]

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_DEFAULT_LEVEL = 3

#: Exceptions a decompressing stream raises on corrupt or truncated input.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    zlib.error,
    _stdgzip.BadGzipFile,
    zstandard.ZstdError,
    *_ISAL_ERRORS,
)

_SUFFIXES = (
    (".tar.gz", "gzip"),
    (".tgz", "gzip"),
    (".gz", "gzip"),
    (".tar.zst", "zstd"),
    (".tzst", "zstd"),
    (".zst", "zstd"),
)

_PEEK = 512  # enough to see a compression magic or the ustar magic at 257


def compression_for(url: str) -> str | None:
    """``"gzip"``, ``"zstd"`` or ``None`` (plain) by the suffix of ``url``.

    A query string or fragment of a ``scheme://`` URL is ignored.
    """
    path = url
    if "://" in path:
        path = path.split("?", 1)[0].split("#", 1)[0]
    path = path.lower()
    for suffix, kind in _SUFFIXES:
        if path.endswith(suffix):
            return kind
    return None


def sniff(head: bytes) -> str | None:
    """``"gzip"``, ``"zstd"``, ``"tar"`` or ``None`` from the first bytes of a stream."""
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if head[:4] == ZSTD_MAGIC:
        return "zstd"
    if head[257:262] == b"ustar":
        return "tar"
    return None


class _Prefixed(io.RawIOBase):
    """A non-seekable stream with some already-read bytes put back in front."""

    def __init__(self, prefix: bytes, raw: BinaryIO):
        super().__init__()
        self._prefix = memoryview(prefix)
        self._raw = raw
        self._raw_readinto = getattr(raw, "readinto", None)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        if self._raw_readinto is not None:
            return self._raw_readinto(b)
        data = self._raw.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:  # never closes the raw stream
        super().close()


def _peek(raw: BinaryIO, n: int) -> tuple[bytes, BinaryIO]:
    """The first ``n`` bytes of ``raw`` (fewer at EOF) and a stream still starting at them."""
    seekable = False
    try:
        seekable = raw.seekable()
    except (AttributeError, OSError, ValueError):
        pass
    if seekable:
        pos = raw.tell()
        head = raw.read(n) or b""
        raw.seek(pos)
        return head, raw
    parts = []
    got = 0
    while got < n:
        chunk = raw.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    head = b"".join(parts)
    return head, _Prefixed(head, raw)  # type: ignore[return-value]


def open_stream_reader(raw: BinaryIO, url: str = "") -> BinaryIO:
    """Wrap ``raw`` with the decompression its magic bytes (or else its URL suffix) call for.

    Magic bytes win: gzip (``1f 8b``) and zstd (``28 b5 2f fd``) are recognised
    whatever the name, and a plain tar (``ustar`` magic) is read as plain even
    under a ``.tgz`` name.  When neither magic is recognised the suffix decides,
    so a corrupt ``.tgz`` fails as a corrupt gzip stream rather than as a bad tar.
    """
    head, raw = _peek(raw, _PEEK)
    kind = sniff(head)
    if kind is None and head:
        kind = compression_for(url)
    if kind not in ("gzip", "zstd"):
        return raw
    counted = _Counted(raw)
    if kind == "gzip":
        out: Any = _gzip.GzipFile(fileobj=counted, mode="rb")
    else:
        out = _Buffered(_ZstdReader(counted), _ZSTD_BUFFER)
    out.htools_compressed = counted  # where a decode error is: compressed_offset()
    return out  # type: ignore[no-any-return]


def compressed_span(stream: Any) -> tuple[int, int] | None:
    """The compressed bytes ``[start, end)`` of the decoder's last read from its source,
    for a reader from :func:`open_stream_reader` (None for a plain stream): a decode
    error lies in that span."""
    counted = getattr(stream, "htools_compressed", None)
    return None if counted is None else (counted.count - counted.last, counted.count)


class _Buffered(io.BufferedReader):
    """A BufferedReader that can carry the ``htools_compressed`` counter."""


class _Counted(io.RawIOBase):
    """``raw`` read through, counting the bytes taken (no copy: ``read`` hands on the
    source's own bytes)."""

    def __init__(self, raw: BinaryIO):
        super().__init__()
        self._raw = raw
        self.count = 0  # bytes taken so far
        self.last = 0  # bytes of the last read

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        data = self._raw.read(n)
        self.last = len(data)
        self.count += self.last
        return data

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self._raw.read(len(b))
        n = self.last = len(data)
        b[:n] = data
        self.count += n
        return n

    def close(self) -> None:  # never closes the raw stream
        super().close()


_ZSTD_CHUNK = 256 << 10  # compressed bytes per decompress call (output stays cache-sized)
_ZSTD_BUFFER = 1 << 20


class _ZstdReader(io.RawIOBase):
    """Decompress a stream of zstd frames; a stream that ends inside a frame is an EOFError.

    (``ZstdDecompressor.stream_reader`` reports a truncated frame as a clean EOF,
    which would turn a truncated ``.tar.zst`` into a shorter, valid-looking tar.)
    """

    def __init__(self, raw: BinaryIO):
        super().__init__()
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj = self._dctx.decompressobj()
        self._in_frame = False
        self._pending = memoryview(b"")
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._pending:
            if self._eof:
                return 0
            chunk = self._raw.read(_ZSTD_CHUNK)
            if not chunk:
                self._eof = True
                if self._in_frame:
                    raise EOFError("truncated zstd stream: it ends inside a frame")
                return 0
            self._pending = memoryview(self._decompress(chunk))
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _decompress(self, chunk: bytes) -> bytes:
        out = []
        while chunk:
            self._in_frame = True
            out.append(self._dobj.decompress(chunk))
            if not self._dobj.eof:
                break
            chunk = self._dobj.unused_data  # the next frame starts here
            self._dobj = self._dctx.decompressobj()
            self._in_frame = False
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self) -> None:  # never closes the raw stream
        super().close()


class NoClose(io.RawIOBase):
    """``raw`` passed through, reads and writes; ``close()`` flushes it but never closes
    it.  For a stream whose owner closes it: stdin/stdout under a storage reader or
    writer, and a storage writer under plain (uncompressed) output, which its ``with``
    block commits."""

    def __init__(self, raw: BinaryIO, name: str | None = None):
        super().__init__()
        self._raw = raw
        if name is not None:
            self.name = name
        self.write = raw.write  # type: ignore[method-assign]  # no extra frame per write

    def readable(self) -> bool:
        return bool(getattr(self._raw, "readable", lambda: False)())

    def writable(self) -> bool:
        return bool(getattr(self._raw, "writable", lambda: False)())

    def readinto(self, b) -> int:  # type: ignore[override]
        return self._raw.readinto(b) or 0

    def flush(self) -> None:  # io's close() calls this once
        if not self.closed:
            self._raw.flush()


def open_stream_writer(raw: BinaryIO, url: str = "", level: int | None = None, *,
                       compress: str | bool | None = "auto") -> BinaryIO:
    """A stream that compresses into ``raw``: by ``url`` suffix when ``compress="auto"``.

    ``compress`` may also be ``"gzip"``, ``"zstd"``, ``None``/``False``/``"none"``
    (plain) or ``True`` (gzip unless the suffix says zstd).
    ``level`` is codec-specific: isal gzip takes 0-3 (default 2; larger values are
    clamped to 3), stdlib gzip 0-9, zstd 1-22 (default 3).  Closing the returned
    stream finishes compression and never closes ``raw``.
    """
    if compress is True:  # webdataset's spelling: compress, gzip unless the suffix says zstd
        kind = compression_for(url) or "gzip"
    else:
        kind = compression_for(url) if compress == "auto" else compress
    if kind in (None, False, "none", "", "tar"):
        return NoClose(raw)  # type: ignore[return-value]
    if kind in ("gzip", "gz"):
        lo, hi = _GZIP_LEVELS
        lvl = _GZIP_DEFAULT_LEVEL if level is None else max(lo, min(hi, int(level)))
        return _gzip.GzipFile(filename="", fileobj=raw, mode="wb",  # type: ignore[return-value]
                              compresslevel=lvl, mtime=0)
    if kind in ("zstd", "zst"):
        lvl = ZSTD_DEFAULT_LEVEL if level is None else int(level)
        cctx = zstandard.ZstdCompressor(level=lvl, write_checksum=True)
        return cctx.stream_writer(raw, closefd=False)  # type: ignore[return-value]
    raise ValueError(f"unknown compression {compress!r} (expected 'auto', 'gzip', 'zstd' or None)")
