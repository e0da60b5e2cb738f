"""S3 and GCS object stores through fsspec (s3fs, gcsfs).

Options (``options["s3"]`` / ``options["gs"]``) go to ``s3fs.S3FileSystem`` /
``gcsfs.GCSFileSystem`` as keyword arguments (minus the retry options).  One
filesystem is cached per (protocol, options) in each process and the cache is dropped
in a forked child (fsspec instances do not survive fork).

Writes are atomic: S3 is a multipart upload completed on commit and aborted on abort;
GCS is a resumable upload finalised on commit and cancelled on abort.  Reads are
ranged and resume at the offset reached after a transient fault, failing instead if
the object changed meanwhile (size or ETag).  There are no directories: ``listdir``
lists a prefix and ``delete_prefix`` removes every object under it (never a bucket).

Faults: s3fs/botocore and gcsfs retry some faults themselves first.  What still comes
out carrying HTTP 408/425/429/5xx (botocore ``ClientError``, gcsfs ``HttpError``,
aiohttp ``ClientResponseError``, or s3fs's translation of 500/503 to
``EREMOTEIO``/``EBUSY``) or is a connection error or timeout is :class:`Transient`
and retried by htools' policy like on every other protocol; 403/404 are not.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, BinaryIO

from htools.errors import NotFound, StorageError, hide_credentials
from htools.storage.base import (
    RETRY_OPTIONS,
    TRANSIENT_STATUS,
    Backend,
    RangeReader,
    RetryPolicy,
    Transient,
    buffered,
    retry_policy,
    unresolvable,
)
from htools.storage.httpconn import delete_once
from htools.storage.writer import Writer

PART_SIZE = 16 << 20        # S3 multipart part / GCS resumable chunk
READ_BLOCK = 8 << 20        # fsspec read-ahead block
#: s3fs turns 503/SlowDown/ServiceUnavailable into EBUSY and 500/InternalError into
#: EREMOTEIO, sometimes dropping the botocore error: the status they stand for
#: (where the platform lacks EREMOTEIO, s3fs uses EIO, which says nothing)
_ERRNO_STATUS = {errno.EBUSY: 503}
if hasattr(errno, "EREMOTEIO"):
    _ERRNO_STATUS[errno.EREMOTEIO] = 500


# --------------------------------------------------------------------------- faults

def _optional_types(module: str, *names: str) -> tuple[type[BaseException], ...]:
    try:
        found = importlib.import_module(module)
    except ImportError:
        return ()
    return tuple(getattr(found, name) for name in names if hasattr(found, name))


#: connection trouble and timeouts, whichever client library raised them
_CONNECTION_FAULTS = (
    ConnectionError, TimeoutError, asyncio.TimeoutError,
    *_optional_types("botocore.exceptions", "ConnectionError", "HTTPClientError",
                     "IncompleteReadError"),
    *_optional_types("aiohttp", "ClientConnectionError", "ClientPayloadError"),
    *_optional_types("requests.exceptions", "ConnectionError", "Timeout",
                     "ChunkedEncodingError"),
)
#: ... except certificate problems, which do not go away
_PERMANENT = (
    *_optional_types("ssl", "SSLCertVerificationError"),
    *_optional_types("botocore.exceptions", "SSLError"),
    *_optional_types("aiohttp", "ClientConnectorCertificateError"),
)


def _chain(exc: BaseException, depth: int = 4) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) <= depth:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an s3fs/gcsfs/botocore/aiohttp error carries, if any."""
    for e in _chain(exc):
        response = getattr(e, "response", None)
        if isinstance(response, Mapping):  # botocore ClientError
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, int):
                return status
        elif response is not None and isinstance(getattr(response, "status_code", None), int):
            return response.status_code  # requests
        status = getattr(e, "status", None)  # aiohttp ClientResponseError
        if not isinstance(status, int):
            status = getattr(e, "code", None)  # gcsfs HttpError
        if isinstance(status, str) and status.isdigit():
            status = int(status)
        if isinstance(status, int) and 100 <= status < 600:
            return status
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _ERRNO_STATUS:
            return _ERRNO_STATUS[e.errno]
    return None


def _server_reason(exc: BaseException) -> str:
    """The server's own words for a missing object or bucket (botocore's error code and
    message, e.g. ``NoSuchBucket: The specified bucket does not exist``), if any."""
    for e in _chain(exc):
        response = getattr(e, "response", None)
        if isinstance(response, Mapping):
            err = response.get("Error", {})
            if err.get("Code"):
                return f"{err['Code']}: {err.get('Message', '')}".rstrip(": ")
    return ""


def classify(url: str, exc: BaseException) -> Exception:
    """What an s3fs/gcsfs exception means: NotFound, Transient or StorageError."""
    name = hide_credentials(url)
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, FileNotFoundError):
        reason = _server_reason(exc)
        return NotFound(name, f"no such object ({reason})" if reason else "no such object", 404)
    if isinstance(exc, PermissionError):
        return StorageError(name, f"permission denied: {exc}", 403)
    status = http_status(exc)
    why = f"{type(exc).__name__}: {exc}"
    if unresolvable(exc):
        return StorageError(name, f"{why} (the endpoint's host name does not resolve: check "
                            "the endpoint_url storage option)", transient=False)
    if status in TRANSIENT_STATUS or (status is None and isinstance(exc, _CONNECTION_FAULTS)
                                      and not isinstance(exc, _PERMANENT)):
        return Transient(why, status)
    return StorageError(name, why, status)


@contextmanager
def _errors(url: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - botocore/aiohttp/gcsfs errors vary
        raise classify(url, exc) from None


def bucket_path(url: str) -> str:
    """``bucket/key`` of an s3:// or gs:// URL."""
    path = url.split("://", 1)[1].rstrip("/")
    if not path:
        raise StorageError(hide_credentials(url), "no bucket in URL")
    return path


# --------------------------------------------------------------------------- reader, writer

class _ObjectReader(RangeReader):
    """Bytes [start, end) of an object through an fsspec file with read-ahead (s3fs pins
    each block's GET to the object's ETag)."""

    exact_end = True

    def __init__(self, url: str, fs: Any, start: int, end: int | None, opts: Mapping[str, Any]):
        self._fs, self._path = fs, bucket_path(url)
        self._f: Any = None
        self._version: tuple[Any, Any] | None = None
        super().__init__(url, start, end, retry_policy(opts))

    def _open(self) -> bool:
        with _errors(self.url):
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
        with _errors(self.url):
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


class _GCSReader(_ObjectReader):
    """gcsfs's read-ahead file GETs each block of whatever generation is live then, so
    an object overwritten during a read gave the bytes of two versions: here each block
    is a GET of the generation the first open saw (:data:`READ_BLOCK` bytes at a time),
    and one of a generation gone (replaced, deleted) fails as "object changed"."""

    _block = b""
    _block_at = 0

    def _open(self) -> bool:
        with _errors(self.url):
            info = self._fs.info(self._path)
        self._f = None
        return self._pinned(int(info["size"]), info.get("generation"))

    def _read(self, view: memoryview) -> int:
        offset = self._pos - self._block_at
        if not 0 <= offset < len(self._block):
            end = min(self._pos + READ_BLOCK, self._end)  # type: ignore[type-var]
            try:
                with _errors(self.url):
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


class _ObjectWriter(Writer):
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
        with _errors(self.url):
            self._f = self._fs.open(self._path, "wb", block_size=PART_SIZE, autocommit=False)

    def _write(self, data: memoryview) -> None:
        with _errors(self.url):
            self._f.write(data)

    def _commit(self) -> None:
        with _errors(self.url):
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


# --------------------------------------------------------------------------- backends

class ObjectStoreBackend(Backend):
    """An fsspec object store; subclasses name the package and build the filesystem."""

    package = ""
    reader: type[_ObjectReader] = _ObjectReader

    def __init__(self) -> None:
        self._module = importlib.import_module(self.package)  # ImportError: registry says
        self._lock = threading.Lock()                          # what to pip install
        self._cache: dict[str, Any] = {}
        self._pid = os.getpid()

    def _make(self, kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError

    def filesystem(self, opts: Mapping[str, Any]) -> Any:
        """The cached filesystem for ``opts`` in this process."""
        kwargs = {k: v for k, v in opts.items() if k not in RETRY_OPTIONS}
        key = json.dumps(kwargs, sort_keys=True, default=str)
        with self._lock:
            if os.getpid() != self._pid:
                self._cache.clear()
                self._pid = os.getpid()
            fs = self._cache.get(key)
            if fs is None:
                kwargs.setdefault("skip_instance_cache", True)
                kwargs.setdefault("use_listings_cache", False)  # other processes write too
                fs = self._cache[key] = self._make(kwargs)
            return fs

    def open_range(self, url: str, start: int, end: int | None,
                   opts: Mapping[str, Any]) -> BinaryIO:
        return buffered(self.reader(url, self.filesystem(opts), start, end, opts))

    def open_write(self, url: str, opts: Mapping[str, Any]) -> Writer:
        return _ObjectWriter(url, self.filesystem(opts), bucket_path(url), retry_policy(opts))

    def exists(self, url: str, opts: Mapping[str, Any]) -> bool:
        fs = self.filesystem(opts)
        with _errors(url):
            return bool(fs.exists(bucket_path(url)))

    def size(self, url: str, opts: Mapping[str, Any]) -> int:
        fs = self.filesystem(opts)
        with _errors(url):
            info = fs.info(bucket_path(url))
        if info.get("type") == "directory":
            raise StorageError(hide_credentials(url), "is a directory")
        return int(info["size"])

    def read_range(self, url: str, start: int, end: int, opts: Mapping[str, Any]) -> bytes:
        fs = self.filesystem(opts)
        path = bucket_path(url)
        with _errors(url):
            total = fs.info(path)["size"]
            if start >= total:
                return b""
            return fs.cat_file(path, start=start, end=min(end, total))

    def delete(self, url: str, opts: Mapping[str, Any], missing_ok: bool) -> None:
        fs = self.filesystem(opts)
        path = bucket_path(url)
        with _errors(url):
            if not fs.exists(path):
                if missing_ok:
                    return
                raise NotFound(hide_credentials(url), "no such object", 404)
            fs.rm_file(path)
            fs.invalidate_cache(path)

    def delete_prefix(self, url: str, opts: Mapping[str, Any]) -> None:
        fs = self.filesystem(opts)
        path = bucket_path(url)
        if "/" not in path:
            raise StorageError(hide_credentials(url), "refusing to delete a whole bucket")
        with _errors(url):
            try:
                fs.rm(path + "/", recursive=True)
            except FileNotFoundError:
                pass
            fs.invalidate_cache(path)
        bucket, _, prefix = path.partition("/")
        self._abort_uploads(fs, bucket, prefix + "/", lambda key: True)

    def remove_partials(self, urls: list[str], opts: Mapping[str, Any]) -> int:
        """Abort the unfinished uploads of ``urls`` that killed writers left (S3 keeps
        their parts, unseen but stored, until aborted): one listing per folder."""
        fs = self.filesystem(opts)
        by_folder: dict[tuple[str, str], set[str]] = {}
        for url in urls:
            bucket, _, key = bucket_path(url).partition("/")
            by_folder.setdefault((bucket, key.rpartition("/")[0]), set()).add(key)
        return sum(self._abort_uploads(fs, bucket, folder + "/" if folder else "",
                                       keys.__contains__)
                   for (bucket, folder), keys in by_folder.items())

    def _abort_uploads(self, fs: Any, bucket: str, prefix: str, chosen: Any) -> int:
        """Abort the unfinished uploads under ``prefix`` whose key is ``chosen``; best
        effort (how many were aborted)."""
        return 0

    def listdir(self, url: str, opts: Mapping[str, Any]) -> list[str]:
        fs = self.filesystem(opts)
        scheme = url.split("://", 1)[0]
        with _errors(url):
            names = fs.ls(bucket_path(url), detail=False)
        return sorted(f"{scheme}://{name.rstrip('/')}" for name in names)


class S3Backend(ObjectStoreBackend):
    """``s3://`` (and ``s3a://``) through s3fs."""

    package = "s3fs"

    def _abort_uploads(self, fs: Any, bucket: str, prefix: str, chosen: Any) -> int:
        aborted, marker = 0, {}
        try:
            while True:
                page = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix,
                                  **marker)
                for upload in page.get("Uploads") or []:
                    if chosen(upload["Key"]):
                        fs.call_s3("abort_multipart_upload", Bucket=bucket,
                                   Key=upload["Key"], UploadId=upload["UploadId"])
                        aborted += 1
                if not page.get("IsTruncated"):
                    return aborted
                marker = {"KeyMarker": page.get("NextKeyMarker", ""),
                          "UploadIdMarker": page.get("NextUploadIdMarker", "")}
        except Exception:  # noqa: BLE001 - clean-up is best effort; the job's result stands
            return aborted

    def _make(self, kwargs: dict[str, Any]) -> Any:
        return self._module.S3FileSystem(**kwargs)


class GCSBackend(ObjectStoreBackend):
    """``gs://`` (and ``gcs://``) through gcsfs."""

    package = "gcsfs"
    reader = _GCSReader

    def __init__(self) -> None:
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        super().__init__()

    def _make(self, kwargs: dict[str, Any]) -> Any:
        return self._module.GCSFileSystem(**kwargs)
