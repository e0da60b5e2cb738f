"""Streaming tar reader and writer of WebDataset samples: the hot path of htools.

Reading (:mod:`htools.tar.read`)
    :func:`iter_members` parses 512-byte headers by hand out of a big reusable
    buffer.  It reads what GNU tar (gnu, pax, ustar, v7), Python's tarfile and
    webdataset write: GNU ``././@LongLink`` names, pax ``x``/``g`` headers
    (``path``, ``linkpath``, ``size``), the ustar prefix field, base-256 sizes.
    Directories, links and other non-regular members are skipped with their
    data.  Every header checksum is verified; a bad checksum, a truncated
    member or an undecodable compressed stream is a :class:`TarFormatError`
    naming the URL, the member (when known) and the byte offset of the header
    in the (uncompressed) tar stream.  Nothing is dropped silently.

    :func:`read_samples` groups consecutive members with one key into samples
    (``{"__key__": key, "__url__": url, field: bytes, ...}``).

Writing (:mod:`htools.tar.write`, its header encoder in :mod:`htools.tar.members`)
    :class:`TarWriter` writes ustar headers with fixed mode/uid/gid/mtime, so
    the same samples give the same bytes (also gzip- or zstd-compressed).
    Names longer than 100 bytes use the ustar prefix split, else a pax ``path``
    record (so do non-ASCII names); members of 8 GiB and more get a pax ``size``.

Key rules (WebDataset): the key of ``a/b/n01.seg.png`` is ``a/b/n01`` and the
field ``seg.png`` -- the key ends at the first dot of the basename.  Hence the
writer refuses keys whose basename contains a dot (the reader would split the
member name differently) and fields that contain ``/``.
"""

from __future__ import annotations

from htools.tar.compress import open_stream_reader, open_stream_writer
from htools.tar.members import SampleFormatError
from htools.tar.read import iter_members, read_samples, split_key
from htools.tar.write import TarWriter, archive_size, member_size, write_samples

__all__ = [
    "SampleFormatError",
    "TarWriter",
    "archive_size",
    "iter_members",
    "member_size",
    "open_stream_reader",
    "open_stream_writer",
    "read_samples",
    "split_key",
    "write_samples",
]
