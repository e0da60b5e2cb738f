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

Faults: s3fs and gcsfs retry some faults themselves first (botocore only an upload's
parts: :meth:`S3Backend._make`).  What still comes
out carrying HTTP 408/425/429/5xx (botocore ``ClientError``, gcsfs ``HttpError``,
aiohttp ``ClientResponseError``, or s3fs's translation of 500/503 to
``EREMOTEIO``/``EBUSY``) or is a connection error or timeout is :class:`Transient`
and retried by htools' policy like on every other protocol; 403/404 are not.

Here are the backends; :mod:`.objectio` holds the reader and writer of one object,
:mod:`.objectfaults` the classification of the client libraries' exceptions.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, BinaryIO

from htools.errors import NotFound, StorageError, hide_credentials
from htools.storage.base import RETRY_OPTIONS, Backend, buffered, retry_policy
from htools.storage.objectfaults import classified_errors
from htools.storage.objectio import GCSReader, ObjectReader, ObjectWriter, bucket_path
from htools.storage.writer import Writer


class ObjectStoreBackend(Backend):
    """An fsspec object store; subclasses name the package and build the filesystem."""

    package = ""
    reader: type[ObjectReader] = ObjectReader

    def __init__(self) -> None:
        self._module = importlib.import_module(self.package)  # ImportError: registry says
        self._lock = threading.Lock()                          # what to pip install
        self._cache: dict[str, Any] = {}
        self._pid = os.getpid()

    def _make(self, kwargs: dict[str, Any], uploads: bool) -> Any:
        raise NotImplementedError

    def filesystem(self, opts: Mapping[str, Any], uploads: bool = False) -> Any:
        """The cached filesystem for ``opts`` in this process; ``uploads``: the one a
        writer sends its parts through (see :meth:`S3Backend._make`)."""
        kwargs = {k: v for k, v in opts.items() if k not in RETRY_OPTIONS}
        key = json.dumps([kwargs, uploads], sort_keys=True, default=str)
        with self._lock:
            if os.getpid() != self._pid:
                self._cache.clear()
                self._pid = os.getpid()
            fs = self._cache.get(key)
            if fs is None:
                kwargs.setdefault("skip_instance_cache", True)
                kwargs.setdefault("use_listings_cache", False)  # other processes write too
                fs = self._cache[key] = self._make(kwargs, uploads)
            return fs

    def open_range(self, url: str, start: int, end: int | None,
                   opts: Mapping[str, Any]) -> BinaryIO:
        return buffered(self.reader(url, self.filesystem(opts), start, end, opts))

    def open_write(self, url: str, opts: Mapping[str, Any]) -> Writer:
        return ObjectWriter(url, self.filesystem(opts, uploads=True), bucket_path(url),
                            retry_policy(opts))

    def exists(self, url: str, opts: Mapping[str, Any]) -> bool:
        fs = self.filesystem(opts)
        with classified_errors(url):
            return bool(fs.exists(bucket_path(url)))

    def size(self, url: str, opts: Mapping[str, Any]) -> int:
        fs = self.filesystem(opts)
        with classified_errors(url):
            info = fs.info(bucket_path(url))
        if info.get("type") == "directory":
            raise StorageError(hide_credentials(url), "is a directory")
        return int(info["size"])

    def read_range(self, url: str, start: int, end: int, opts: Mapping[str, Any]) -> bytes:
        fs = self.filesystem(opts)
        path = bucket_path(url)
        with classified_errors(url):
            total = fs.info(path)["size"]
            if start >= total:
                return b""
            return fs.cat_file(path, start=start, end=min(end, total))

    def delete(self, url: str, opts: Mapping[str, Any], missing_ok: bool) -> None:
        fs = self.filesystem(opts)
        path = bucket_path(url)
        with classified_errors(url):
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
        with classified_errors(url):
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
        with classified_errors(url):
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

    def _make(self, kwargs: dict[str, Any], uploads: bool) -> Any:
        """botocore retries every request itself (legacy mode: 5 attempts, ~5 s when the
        endpoint is down), and htools' policy retries the same request again around it:
        one ``exists`` against a stopped endpoint took 46-54 s to fail.  A read resumes at
        its offset and a listing or a metadata call is one request, so htools' policy is
        their request-level retry, and botocore makes one attempt for them.  A multipart
        upload's part keeps botocore's retries: htools would replay the whole body
        (:class:`~.objectio.ObjectWriter`).  A ``config_kwargs`` with ``retries`` of the
        user's own wins for both."""
        config = dict(kwargs.get("config_kwargs") or {})
        if not uploads and "retries" not in config:
            kwargs = {**kwargs, "config_kwargs": {**config,
                                                  "retries": {"total_max_attempts": 1}}}
        return self._module.S3FileSystem(**kwargs)


class _GivenUp(logging.Filter):
    """Drops gcsfs's ERROR record, with its traceback, of a request it gave up on (out of
    its retries, or not retriable): the error goes on to htools, which retries it or
    reports it in one line.  Unfiltered, a stopped endpoint printed six tracebacks an
    ``exists`` (one a gcsfs give-up), from the client and from every worker."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (" out of retries on exception: " in msg
                    or " non-retriable exception: " in msg)


class GCSBackend(ObjectStoreBackend):
    """``gs://`` (and ``gcs://``) through gcsfs."""

    package = "gcsfs"
    reader = GCSReader

    def __init__(self) -> None:
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        super().__init__()
        logger = logging.getLogger("gcsfs")
        if not any(isinstance(f, _GivenUp) for f in logger.filters):
            logger.addFilter(_GivenUp())

    def _make(self, kwargs: dict[str, Any], uploads: bool) -> Any:
        return self._module.GCSFileSystem(**kwargs)
