"""Storage: the one package that knows protocols.

URLs: plain paths and ``file://``, ``http(s)://`` (nginx WebDAV), ``s3://bucket/key``,
``gs://bucket/key``, ``pipe:COMMAND`` (read its stdout / write its stdin) and ``-``
(stdin / stdout).  Options are per protocol, plain picklable dicts::

    {"s3": {"endpoint_url": ..., "key": ..., "secret": ...},   # -> s3fs.S3FileSystem
     "gs": {"endpoint_url": ..., "token": "anon"},             # -> gcsfs.GCSFileSystem
     "http": {"headers": {...}, "auth": {"user": ..., "password": ...},
              "put_mode": "direct" | "move", "timeout": 60, "verify": True},
     "file": {"fsync": True}}

merged over ``HTOOLS_STORAGE_OPTIONS`` (JSON) by :func:`resolve_options`.  Any
protocol's options may also hold ``retries``, ``backoff`` and ``backoff_cap``.

Writes are atomic: an object is complete or absent (local temp file + rename, HTTP
chunked PUT spooled by nginx, S3 multipart, GCS resumable upload).  Pipes and stdout
cannot be atomic: what was written is out.

Transient faults (connection reset/refused, timeouts, HTTP 408/425/429/5xx, truncated
bodies) are retried with exponential backoff the same way on every protocol
(``HTOOLS_RETRIES``, ``HTOOLS_RETRY_BACKOFF``, ``HTOOLS_RETRY_CAP``, read at call time;
``HTOOLS_RETRIES=0`` turns retrying off): every function below runs its backend call
through :func:`~htools.storage.base.with_retries`, and readers resume at the offset
reached.  Permanent faults (401, 403, 404, ...) are not retried.  Errors are
:class:`~htools.errors.StorageError` / :class:`~htools.errors.NotFound` naming the URL
without credentials.

Layout: :mod:`.base` (the :class:`~.base.Backend` interface, the retry policy, the
resuming reader), :mod:`.writer` (the atomic :class:`Writer` and the spool that makes an
upload replayable), one module per backend (:mod:`.local`, :mod:`.http`,
:mod:`.objectstore` for s3/gs (with :mod:`.objectio` and :mod:`.objectfaults`),
:mod:`.pipe`) and :mod:`.registry`, which maps protocols to backends.  Adding a
protocol takes one module with a ``Backend`` subclass and one line in ``registry.REGISTRY``::

    "az": Entry("htools.storage.azure:AzureBackend", ("az", "abfs"), pip="adlfs"),
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, TypeVar

from htools import shards
from htools.errors import NotFound, PatternError, StorageError, hide_credentials
from htools.storage.base import (
    CHUNK,
    RETRY_OPTIONS,
    Backend,
    retry_policy,
    with_retries,
)
from htools.storage.httpconn import PASSWORD_ENV, USER_ENV
from htools.storage.registry import OPTION_KEYS, REGISTRY, backend, protocol
from htools.storage.writer import Writer

__all__ = [
    "Options", "Writer", "open_read", "open_write", "exists", "size", "read_range",
    "open_range", "delete", "delete_prefix", "listdir", "glob", "remove_partials", "join", "protocol",
    "resolve_options", "CHUNK", "is_stream",
]

T = TypeVar("T")
Options = Mapping[str, Mapping[str, Any]]
STREAMS = ("pipe", "stdio")  # the protocols that are streams, not stored objects


# --------------------------------------------------------------------------- URLs, options

def resolve_options(options: Options | None = None) -> dict[str, dict[str, Any]]:
    """Per-protocol options: ``HTOOLS_STORAGE_OPTIONS`` (JSON) merged with ``options``
    (which wins, key by key).  Plain dicts, safe to pickle to Dask workers."""
    merged: dict[str, dict[str, Any]] = {}
    env = os.environ.get("HTOOLS_STORAGE_OPTIONS", "").strip()
    layers: list[Mapping[str, Any]] = []
    if env:
        try:
            layers.append(json.loads(env))
        except ValueError as exc:
            raise StorageError("HTOOLS_STORAGE_OPTIONS", f"not valid JSON: {exc}") from None
    if options:
        layers.append(options)
    for layer in layers:
        if not isinstance(layer, Mapping):
            raise StorageError("storage options", "must map a protocol to a dict of options")
        for proto, opts in layer.items():
            if proto not in OPTION_KEYS:
                raise StorageError("storage options", f"unknown protocol {proto!r}; options "
                                   f"are given per protocol: {', '.join(sorted(OPTION_KEYS))}")
            if opts is not None and not isinstance(opts, Mapping):
                raise StorageError("storage options", f"{proto!r} must map option names "
                                   "to values")
            key = OPTION_KEYS[proto]
            _check_names(key, opts or {})
            merged.setdefault(key, {}).update(copy.deepcopy(dict(opts or {})))
    _env_credentials(merged)
    return merged


def _env_credentials(merged: dict[str, dict[str, Any]]) -> None:
    """``$HTOOLS_HTTP_USER``/``$HTOOLS_HTTP_PASSWORD`` become the ``http.auth`` option when
    none is given, so they travel with the job to workers that lack them (a user:password@
    in a URL still comes first, as it does at the request)."""
    user = os.environ.get(USER_ENV)
    if user and not merged.get("http", {}).get("auth"):
        merged.setdefault("http", {})["auth"] = {"user": user,
                                                 "password": os.environ.get(PASSWORD_ENV, "")}


_AUTH_KEYS = ("user", "password")


def _check_names(proto: str, opts: Mapping[str, Any]) -> None:
    """Refuse option names a backend would silently ignore (a typo like ``passwd``)."""
    known = REGISTRY[proto].options
    if known is None:
        return  # s3fs / gcsfs take them and check their own
    allowed = set(known) | set(RETRY_OPTIONS)
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise StorageError("storage options", f"unknown {proto} option(s) "
                           f"{', '.join(map(repr, unknown))}; valid: "
                           f"{', '.join(sorted(allowed))}")
    auth = opts.get("auth")
    if isinstance(auth, Mapping) and set(auth) - set(_AUTH_KEYS):
        bad = sorted(set(auth) - set(_AUTH_KEYS))
        raise StorageError("storage options", f"unknown {proto}.auth key(s) "
                           f"{', '.join(map(repr, bad))}; valid: user, password")


def is_stream(url: str) -> bool:
    """``pipe:COMMAND`` or ``-``: a stream, with no existence, size, range or atomic write."""
    return protocol(url) in STREAMS


def join(base_url: str, name: str) -> str:
    """``name`` inside the directory/prefix ``base_url``."""
    if protocol(base_url) == "file" and "://" not in base_url:
        return os.path.join(base_url, name)
    return base_url.rstrip("/") + "/" + name.lstrip("/")


def _run(url: str, options: Options | None, call: Callable[[Backend, dict[str, Any]], T]) -> T:
    """``call(backend, opts)`` for the backend of ``url``, retried on Transient faults."""
    proto = protocol(url)
    found = backend(proto, url)
    opts = resolve_options(options).get(proto, {})
    return with_retries(url, retry_policy(opts), lambda: call(found, opts))


# --------------------------------------------------------------------------- public API

def open_read(url: str, options: Options | None = None) -> BinaryIO:
    """A streaming binary reader (a context manager); NotFound if absent."""
    return open_range(url, 0, None, options)


def open_range(url: str, start: int, end: int | None, options: Options | None = None
               ) -> BinaryIO:
    """A streaming reader of bytes [start, end) (``end=None``: to the end)."""
    start = max(0, int(start))
    return _run(url, options, lambda b, opts: b.open_range(url, start, end, opts))


def open_write(url: str, options: Options | None = None) -> Writer:
    """An atomic streaming writer: committed on clean exit/``commit()``/``close()``,
    discarded on an exception/``abort()``.  Only opening is retried."""
    return _run(url, options, lambda b, opts: b.open_write(url, opts))


def exists(url: str, options: Options | None = None) -> bool:
    return _run(url, options, lambda b, opts: b.exists(url, opts))


def size(url: str, options: Options | None = None) -> int:
    return _run(url, options, lambda b, opts: b.size(url, opts))


def read_range(url: str, start: int, end: int, options: Options | None = None) -> bytes:
    """Bytes [start, end) (fewer if the object ends first)."""
    if end <= start:
        if not exists(url, options):
            raise NotFound(hide_credentials(url), "no such object", 404)
        return b""
    return _run(url, options, lambda b, opts: b.read_range(url, start, end, opts))


def delete(url: str, options: Options | None = None, missing_ok: bool = True) -> None:
    _run(url, options, lambda b, opts: b.delete(url, opts, missing_ok))


def delete_prefix(url: str, options: Options | None = None) -> None:
    """Delete a "directory" and everything under it; absent is fine."""
    _run(url, options, lambda b, opts: b.delete_prefix(url, opts))


def listdir(url: str, options: Options | None = None) -> list[str]:
    """Full URLs of the entries directly under ``url`` (sorted, no trailing ``/``)."""
    return _run(url, options, lambda b, opts: b.listdir(url, opts))


def glob(pattern: str, options: Options | None = None) -> list[str]:
    """The URLs a glob in the last path component names (``crawl/*.tar``,
    ``s3://b/train-*.tar``), listed from its folder, sorted; ``?`` and ``[...]`` as in
    :mod:`fnmatch` (in a ``scheme://`` URL the query after ``?`` stays on every URL)."""
    query = ""
    if "://" in pattern and "?" in pattern:
        pattern, query = pattern.split("?", 1)
        query = "?" + query
    folder, _, name = pattern.rpartition("/")
    try:
        entries = listdir(folder + "/" if folder else ".", options)
    except NotFound:
        return []
    except StorageError as e:
        raise PatternError(pattern, f"cannot list its folder: {e}") from None
    return sorted(e + query for e in entries if fnmatch.fnmatchcase(e.rsplit("/", 1)[-1], name))


shards.set_lister(glob)


def remove_partials(urls: list[str], options: Options | None = None) -> int:
    """Delete what writers of ``urls`` left behind when their process was killed.

    Local writes leave a hidden ``.NAME.tmp-*`` file, which is deleted; an unfinished S3
    multipart upload of one of ``urls`` (invisible, but stored and billed) is aborted;
    HTTP ``put_mode="move"``'s ``NAME.tmp-<uuid>`` objects are deleted; HTTP direct PUTs
    and GCS resumable uploads never leave a partial object.  Returns
    how many leftovers were removed.
    """
    by_proto: dict[str, list[str]] = {}
    for url in urls:
        if url:
            by_proto.setdefault(protocol(url), []).append(url)
    resolved = resolve_options(options)
    return sum(backend(proto, group[0]).remove_partials(group, resolved.get(proto, {}))
               for proto, group in by_proto.items())
