"""Reading and writing one S3 or GCS object (see :mod:`.objectstore`): ranged reads
pinned to the object's version (:class:`ObjectReader`, :class:`GCSReader`) and atomic
uploads (:class:`ObjectWriter`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from htools.errors import NotFound, StorageError, hide_credentials
from htools.storage.base import RangeReader, RetryPolicy, retry_policy
from htools.storage.httpconn import delete_once
from htools.storage.objectfaults import classified_errors
from htools.storage.writer import Writer

PART_SIZE = 16 << 20        # S3 multipart part / GCS resumable chunk
READ_BLOCK = 8 << 20        # fsspec read-ahead block


def bucket_path(url: str) -> str:
    """``bucket/key`` of an s3:// or gs:// URL."""
    path = url.split("://", 1)[1].rstrip("/")
    if not path:
        raise StorageError(hide_credentials(url), "no bucket in URL")
    return path


class ObjectReader(RangeReader):
    """Bytes [start, end) of an object through an fsspec file with read-ahead (s3fs pins
    each block's GET to the object's ETag)."""

    exact_end = True

    def __init__(self, url: str, fs: Any, start: int, end: int | None, opts: Mapping[str, Any]):
        self._fs, self._path = fs, bucket_path(url)
        self._f: Any = None
        self._version: tuple[Any, Any] | None = None
        super().__init__(url, start, end, retry_policy(opts))

    def _open(self) -> bool:
        with classified_errors(self.url):
            self._f = f = self._fs.open(self._path, "rb", block_size=READ_BLOCK,
                                        cache_type="readahead")
            details = getattr(f, "details", None) or {}
            if not self._pinned(f.size, details.get("ETag") or details.get("etag")
                                or details.get("generation")):
                return False
            if self._pos:
                f.seek(self._pos)
        return True

    def _pinned(self, size: int, tag: Any) -> bool:
        """Note the object's version at the first open, and fail a later open of another
        (412); clip the range to the object: whether any of it is left to read."""
        version = (size, tag)
        if self._version is None:
            self._version = version
        elif version != self._version:
            raise StorageError(self.name, "object changed while it was being read", 412)
        self._end = size if self._end is None else min(self._end, size)
        if self._pos >= self._end:
            self._drop()
            return False
        return True

    def _read(self, view: memoryview) -> int:
        with classified_errors(self.url):
            data = self._f.read(view.nbytes)
        n = len(data)
        view[:n] = data
        return n

    def _drop(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except Exception:  # noqa: BLE001 - a read-only file has nothing to lose
                pass


class GCSReader(ObjectReader):
    """gcsfs's read-ahead file GETs each block of whatever generation is live then, so
    an object overwritten during a read gave the bytes of two versions: here each block
    is a GET of the generation the first open saw (:data:`READ_BLOCK` bytes at a time),
    and one of a generation gone (replaced, deleted) fails as "object changed"."""

    _block = b""
    _block_at = 0

    def _open(self) -> bool:
        with classified_errors(self.url):
            info = self._fs.info(self._path)
        self._f = None
        return self._pinned(int(info["size"]), info.get("generation"))

    def _read(self, view: memoryview) -> int:
        offset = self._pos - self._block_at
        if not 0 <= offset < len(self._block):
            end = min(self._pos + READ_BLOCK, self._end)  # type: ignore[type-var]
            try:
                with classified_errors(self.url):
                    self._block = self._fs.cat_file(self._path, start=self._pos, end=end,
                                                    generation=self._version[1])  # type: ignore[index]
            except NotFound:
                raise StorageError(self.name, "object changed while it was being read (its "
                                   "generation is gone)", 412) from None
            self._block_at, offset = self._pos, 0
        n = min(view.nbytes, len(self._block) - offset)
        view[:n] = memoryview(self._block)[offset:offset + n]
        return n

    def _drop(self) -> None:
        self._block = b""


class ObjectWriter(Writer):
    """S3 multipart / GCS resumable upload through an fsspec file opened with
    ``autocommit=False``: parts go out as they fill, ``commit()`` completes the
    upload (the object appears), ``abort()`` aborts it (nothing appears)."""

    replayable = True  # a failed part or completion: the body goes again from the spool

    def __init__(self, url: str, fs: Any, path: str, policy: RetryPolicy | None = None):
        super().__init__(url, policy)
        self._fs, self._path = fs, path
        self._f: Any = None
        self._restart()

    def _restart(self) -> None:
        """A new multipart upload (S3) / resumable session (GCS)."""
        self._f = None
        with classified_errors(self.url):
            self._f = self._fs.open(self._path, "wb", block_size=PART_SIZE, autocommit=False)

    def _write(self, data: memoryview) -> None:
        with classified_errors(self.url):
            self._f.write(data)

    def _commit(self) -> None:
        with classified_errors(self.url):
            self._f.close()     # uploads the last part; does not commit (autocommit=False)
            self._f.commit()
            self._fs.invalidate_cache(self._path)

    def _abort(self) -> None:
        # Best effort: an upload never completed/finalised never shows as an object.
        # S3 may keep the parts of an incomplete multipart upload until a bucket
        # lifecycle rule removes them; GCS expires unfinalised resumable sessions
        # (its emulator does not implement cancelling them).  Uploads of killed writers
        # are aborted by remove_partials / delete_prefix (S3).
        if self._f is None:
            return
        location = getattr(self._f, "location", None)
        if isinstance(location, str) and location.startswith("http"):
            # gcsfs resumable session: cancel with one plain DELETE of the session
            # URI (it authenticates itself); gcsfs's own discard() retries for ~30 s.
            self._f.location = None
            delete_once(location.replace("&ifGenerationMatch=0", ""))
        else:
            try:
                self._f.discard()
            except Exception:  # noqa: BLE001
                pass
        self._f.closed = True

