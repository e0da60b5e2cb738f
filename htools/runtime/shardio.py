"""The two I/O steps every task function uses: read a shard, write a shard.

``read_shard`` opens a shard at any storage URL, counts its (compressed) bytes into the
task's result, decompresses by suffix and yields its samples; ``write_shard`` opens an
output atomically (complete or absent), counts and (for the shard index) hashes the bytes
it writes, and on success records the output's sha256 and field counts in the result.
A task that reads or writes shards any other way is a bug waiting to happen: the counts,
the hashing and the atomic commit live here once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from htools import storage, tar
from htools.runtime.streams import Counting
from htools.summary import ShardResult


@contextmanager
def read_shard(url: str, options: dict | None, result: ShardResult, *,
               digest: bool = False) -> Iterator[Iterator[dict]]:
    """The samples of the shard ``url``; its bytes count as ``result.bytes_in``.

    With ``digest``, the whole file (padding after the end-of-archive marker included) is
    hashed once the samples are consumed, and ``result.sha256`` set on a clean exit.
    """
    with storage.open_read(url, options) as raw:
        counted = Counting(raw, result, "bytes_in", digest=digest)
        yield tar.read_samples(tar.open_stream_reader(counted, url), url)
        if digest:
            while counted.read(1 << 20):  # the padding after the end-of-archive marker
                pass
            result.sha256 = counted.hexdigest()


@contextmanager
def write_shard(url: str, options: dict | None, result: ShardResult, *,
                mtime: float | None = 0, index: bool = True) -> Iterator[tar.TarWriter]:
    """A :class:`~htools.tar.TarWriter` onto the output ``url``, committed when the block
    ends without an exception (nothing is left behind otherwise).  Bytes written count as
    ``result.bytes_out``; ``result.fields`` gets the fields written and, when ``index``,
    ``result.sha256`` the output's digest (hashed on a thread while the bytes go out)."""
    with storage.open_write(url, options) as out:
        counted = Counting(out, result, "bytes_out", digest=index,
                           gather=not getattr(out, "retains", True))
        with tar.TarWriter(counted, url=url, mtime=mtime, count_fields=True) as writer:
            counted.handed = handed_over(writer)
            yield writer
        counted.flush()  # (the writer's close flushes it too)
        result.fields = dict(writer.fields)
    # after the commit: the hashing thread finishes while the commit (fsync) runs
    result.sha256 = counted.hexdigest()


def handed_over(writer: tar.TarWriter) -> Callable[[object], bool]:
    """Whether bytes ``writer`` writes are its own buffer, which it hands over
    (:meth:`~htools.tar.TarWriter.hands_over`: it never changes one it wrote,
    tests/unit/test_hash_choice.py holds it to that), so the output's hasher keeps
    it rather than copy it (a copy of every byte of fields under 64 KiB: ~0.1 ms of
    the task thread a MB at 1 and 16 KiB); a field's value written as it is, or the
    compressor's output, is not it.  Called once a written buffer, not a sample."""
    return writer.hands_over
