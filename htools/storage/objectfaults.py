"""What an S3 or GCS client library's exception means (see :mod:`.objectstore`):
:func:`classify` turns s3fs/gcsfs/botocore/aiohttp errors into :class:`NotFound`,
:class:`Transient` (HTTP 408/425/429/5xx, connection errors, timeouts) or
:class:`StorageError`; :func:`classified_errors` raises them so."""

from __future__ import annotations

import asyncio
import errno
import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from htools.errors import NotFound, StorageError, hide_credentials
from htools.storage.base import TRANSIENT_STATUS, Transient, unresolvable

#: s3fs turns 503/SlowDown/ServiceUnavailable into EBUSY and 500/InternalError into
#: EREMOTEIO, sometimes dropping the botocore error: the status they stand for
#: (where the platform lacks EREMOTEIO, s3fs uses EIO, which says nothing)
_ERRNO_STATUS = {errno.EBUSY: 503}
if hasattr(errno, "EREMOTEIO"):
    _ERRNO_STATUS[errno.EREMOTEIO] = 500


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
def classified_errors(url: str) -> Iterator[None]:
    """Raise what an exception in the block means (:func:`classify`)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - botocore/aiohttp/gcsfs errors vary
        raise classify(url, exc) from None

