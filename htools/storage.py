"""Storage: the one module that knows protocols.

URLs: plain paths and ``file://``, ``http(s)://`` (nginx WebDAV), ``s3://bucket/key``,
``gs://bucket/key``, ``pipe:COMMAND`` (read its stdout / write its stdin) and ``-``
(stdin / stdout).  Options are per protocol, plain picklable dicts::

    {"s3": {"endpoint_url": ..., "key": ..., "secret": ...},   # -> s3fs.S3FileSystem
     "gs": {"endpoint_url": ..., "token": "anon"},             # -> gcsfs.GCSFileSystem
     "http": {"headers": {...}, "auth": {"user": ..., "password": ...},
              "put_mode": "direct" | "move", "retries": 5, "backoff": 0.5,
              "timeout": 60, "verify": True},
     "file": {"fsync": True}}

merged over ``HTOOLS_STORAGE_OPTIONS`` (JSON) by :func:`resolve_options`.

Writes are atomic: an object is complete or absent.  Local files go to a temp file
in the same dir, fsync, ``os.replace``; HTTP streams a chunked PUT (see
:mod:`htools.httpstore`); S3 is a multipart upload completed on commit and aborted
on abort; GCS is a resumable upload finalised on commit and cancelled on abort.
Pipes and stdout cannot be atomic: what was written is out.

Transient faults are retried with exponential backoff (``HTOOLS_RETRIES``,
``HTOOLS_RETRY_BACKOFF``); HTTP reads resume at the offset reached.  Errors are
:class:`~htools.errors.StorageError` / :class:`~htools.errors.NotFound` naming the
redacted URL.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from htools import httpstore
from htools.errors import NotFound, StorageError
from htools.httpstore import Writer, redact

__all__ = [
    "Options", "Writer", "open_read", "open_write", "exists", "size", "read_range",
    "open_range", "delete", "delete_prefix", "listdir", "remove_partials", "join", "protocol",
    "resolve_options", "redact",
]

Options = Mapping[str, Mapping[str, Any]]

PART_SIZE = 16 << 20        # S3 multipart part / GCS resumable chunk
READ_BLOCK = 8 << 20        # fsspec read-ahead block for S3/GCS reads
CHUNK = httpstore.CHUNK     # buffer size of readers and local writers
_SCHEMES = {"file": "file", "http": "http", "https": "http", "s3": "s3", "s3a": "s3",
            "gs": "gs", "gcs": "gs"}
_OPTION_ALIASES = {"https": "http", "s3a": "s3", "gcs": "gs", "local": "file"}


# --------------------------------------------------------------------------- URLs, options

def protocol(url: str) -> str:
    """``"file"``, ``"http"``, ``"s3"``, ``"gs"``, ``"pipe"`` or ``"stdio"``."""
    if url == "-":
        return "stdio"
    if url.startswith("pipe:"):
        return "pipe"
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if not scheme:
        return "file"
    try:
        return _SCHEMES[scheme]
    except KeyError:
        raise StorageError(redact(url), f"unsupported URL scheme {scheme!r} (use file, "
                           "http(s), s3, gs, pipe: or -)") from None


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
            key = _OPTION_ALIASES.get(proto, proto)
            merged.setdefault(key, {}).update(copy.deepcopy(dict(opts or {})))
    return merged


def _opts(url: str, options: Options | None) -> dict[str, Any]:
    return resolve_options(options).get(protocol(url), {})


def join(base_url: str, name: str) -> str:
    """``name`` inside the directory/prefix ``base_url``."""
    if protocol(base_url) == "file" and "://" not in base_url:
        return os.path.join(base_url, name)
    return base_url.rstrip("/") + "/" + name.lstrip("/")


def _local_path(url: str) -> str:
    if url.startswith("file://"):
        return unquote(urlsplit(url).path)
    return url


def _bucket_path(url: str) -> str:
    """``bucket/key`` of an s3:// or gs:// URL."""
    path = url.split("://", 1)[1].rstrip("/")
    if not path:
        raise StorageError(redact(url), "no bucket in URL")
    return path


# --------------------------------------------------------------------------- fsspec (s3, gs)

_fs_lock = threading.Lock()
_fs_cache: dict[tuple[str, str], Any] = {}
_fs_pid = os.getpid()


def _filesystem(proto: str, opts: Mapping[str, Any]) -> Any:
    """A cached s3fs/gcsfs instance for (protocol, options) in this process.
    The cache is dropped in a forked child (fsspec instances do not survive fork)."""
    global _fs_pid
    key = (proto, json.dumps(opts, sort_keys=True, default=str))
    with _fs_lock:
        if os.getpid() != _fs_pid:
            _fs_cache.clear()
            _fs_pid = os.getpid()
        fs = _fs_cache.get(key)
        if fs is None:
            fs = _fs_cache[key] = _make_filesystem(proto, dict(opts))
        return fs


def _make_filesystem(proto: str, kwargs: dict[str, Any]) -> Any:
    kwargs.setdefault("skip_instance_cache", True)
    kwargs.setdefault("use_listings_cache", False)  # other processes write too
    if proto == "s3":
        try:
            import s3fs
        except ImportError:
            raise StorageError("s3://", "s3 needs the s3fs package (pip install s3fs)") from None
        return s3fs.S3FileSystem(**kwargs)
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    try:
        import gcsfs
    except ImportError:
        raise StorageError("gs://", "gs needs the gcsfs package (pip install gcsfs)") from None
    return gcsfs.GCSFileSystem(**kwargs)


@contextmanager
def _fs_errors(url: str) -> Iterator[None]:
    """Turn s3fs/gcsfs/botocore exceptions into StorageError / NotFound."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError:
        raise NotFound(redact(url), "no such object", 404) from None
    except PermissionError as exc:
        raise StorageError(redact(url), f"permission denied: {exc}", 403) from None
    except Exception as exc:  # noqa: BLE001 - botocore/aiohttp/gcsfs errors vary
        status = getattr(exc, "code", None) or getattr(exc, "status", None)
        status = status if isinstance(status, int) else None
        raise StorageError(redact(url), f"{type(exc).__name__}: {exc}", status) from None


class _FSReader(io.RawIOBase):
    """Raw reader over an fsspec file, limited to [start, end), mapping errors."""

    def __init__(self, url: str, f: Any, start: int, end: int | None):
        super().__init__()
        self._url, self._f, self._end = url, f, end
        self._pos = start
        if start:
            with _fs_errors(url):
                f.seek(start)

    @property
    def name(self) -> str:
        return redact(self._url)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._end is not None:
            view = view[: max(0, self._end - self._pos)]
        if not view.nbytes:
            return 0
        with _fs_errors(self._url):
            data = self._f.read(view.nbytes)
        n = len(data)
        view[:n] = data
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class _FSWriter(Writer):
    """S3 multipart / GCS resumable upload through an fsspec file opened with
    ``autocommit=False``: parts go out as they fill, ``commit()`` completes the
    upload (the object appears), ``discard()`` aborts it (nothing appears)."""

    def __init__(self, url: str, fs: Any, path: str):
        super().__init__(url)
        self._fs, self._path = fs, path
        with _fs_errors(url):
            self._f = fs.open(path, "wb", block_size=PART_SIZE, autocommit=False)

    def _write(self, data: memoryview) -> None:
        with _fs_errors(self.url):
            self._f.write(data)

    def _commit(self) -> None:
        with _fs_errors(self.url):
            self._f.close()     # uploads the last part; does not commit (autocommit=False)
            self._f.commit()
            self._fs.invalidate_cache(self._path)

    def _abort(self) -> None:
        # Best effort: an upload never completed/finalised never shows as an object.
        # S3 may keep the parts of an incomplete multipart upload until a bucket
        # lifecycle rule removes them; GCS expires unfinalised resumable sessions
        # (its emulator does not implement cancelling them).
        location = getattr(self._f, "location", None)
        if isinstance(location, str) and location.startswith("http"):
            # gcsfs resumable session: cancel with one plain DELETE of the session
            # URI (it authenticates itself); gcsfs's own discard() retries for ~30 s.
            self._f.location = None
            httpstore.delete_once(location.replace("&ifGenerationMatch=0", ""))
        else:
            try:
                self._f.discard()
            except Exception:  # noqa: BLE001
                pass
        self._f.closed = True


# --------------------------------------------------------------------------- local files

class _LocalWriter(Writer):
    """Temp file next to the target, fsync, ``os.replace`` on commit."""

    def __init__(self, url: str, path: str, fsync: bool = True):
        super().__init__(url)
        self._path = os.path.abspath(path)
        self._fsync = fsync
        folder, base = os.path.split(self._path)
        self._tmp = os.path.join(folder, f".{base}.tmp-{uuid.uuid4().hex}")
        try:
            os.makedirs(folder, exist_ok=True)
            self._f = open(self._tmp, "xb", buffering=CHUNK)
        except OSError as exc:
            raise StorageError(url, f"cannot create: {exc.strerror or exc}") from None

    def _write(self, data: memoryview) -> None:
        try:
            self._f.write(data)
        except OSError as exc:
            raise StorageError(self.name, f"write failed: {exc.strerror or exc}") from None

    def _commit(self) -> None:
        try:
            self._f.flush()
            if self._fsync:
                os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self._tmp, self._path)
            if self._fsync:
                _fsync_dir(os.path.dirname(self._path))
        except OSError as exc:
            raise StorageError(self.name, f"commit failed: {exc.strerror or exc}") from None

    def _abort(self) -> None:
        self._f.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass



def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _local_errors(url: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise NotFound(url, "no such file") from None
    except IsADirectoryError:
        raise StorageError(url, "is a directory") from None
    except PermissionError as exc:
        raise StorageError(url, f"permission denied: {exc.strerror}", 403) from None
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        raise StorageError(url, exc.strerror or str(exc)) from None


class _Limited(io.RawIOBase):
    """A raw reader of at most ``count`` bytes from ``f``; closes ``f`` on close."""

    def __init__(self, f: BinaryIO, count: int, name: str):
        super().__init__()
        self._f, self._left, self.name = f, count, name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[: self._left]
        if not view.nbytes:
            return 0
        n = self._f.readinto(view) or 0
        self._left -= n
        return n

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


# --------------------------------------------------------------------------- pipe:, -

class _PipeReader(io.RawIOBase):
    """stdout of a shell command; a non-zero exit at EOF is a StorageError."""

    def __init__(self, url: str):
        super().__init__()
        self.name = redact(url)
        self._cmd = url[len("pipe:"):]
        self._eof = False
        try:
            self._proc = subprocess.Popen(self._cmd, shell=True, stdout=subprocess.PIPE)
        except OSError as exc:
            raise StorageError(self.name, f"cannot run command: {exc}") from None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._eof:
            return 0
        n = self._proc.stdout.readinto(buffer)
        if not n:
            self._eof = True
            self._finish()
        return n

    def _finish(self) -> None:
        status = self._proc.wait()
        if status != 0:
            raise StorageError(self.name, f"command exited with status {status}")

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self._proc.stdout.close()
        if not self._eof:  # closed early: the command may get SIGPIPE; that is fine
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


class _PipeWriter(Writer):
    """stdin of a shell command; commit waits for it and checks its exit status."""

    def __init__(self, url: str):
        super().__init__(url)
        try:
            self._proc = subprocess.Popen(url[len("pipe:"):], shell=True, stdin=subprocess.PIPE)
        except OSError as exc:
            raise StorageError(self.name, f"cannot run command: {exc}") from None

    def _write(self, data: memoryview) -> None:
        try:
            self._proc.stdin.write(data)
        except OSError as exc:
            status = self._proc.poll()
            raise StorageError(self.name, f"command stopped reading ({exc}); "
                               f"exit status {status}") from None

    def _commit(self) -> None:
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        status = self._proc.wait()
        if status != 0:
            raise StorageError(self.name, f"command exited with status {status}")

    def _abort(self) -> None:
        self._proc.kill()
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        self._proc.wait()


class _StdoutWriter(Writer):
    def __init__(self) -> None:
        super().__init__("-")
        self._out = sys.stdout.buffer

    def _write(self, data: memoryview) -> None:
        self._out.write(data)

    def _commit(self) -> None:
        self._out.flush()

    def _abort(self) -> None:
        self._out.flush()


class _NoClose(io.RawIOBase):
    """stdin that is not closed with the reader."""

    name = "-"

    def __init__(self, f: BinaryIO):
        super().__init__()
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._f.readinto(buffer) or 0


def _no_stream_ops(url: str, what: str) -> StorageError:
    return StorageError(redact(url), f"{what} is not possible on a pipe or stdin/stdout")


# --------------------------------------------------------------------------- public API

def open_read(url: str, options: Options | None = None) -> BinaryIO:
    """A streaming binary reader (a context manager); NotFound if absent."""
    return open_range(url, 0, None, options)


def open_range(url: str, start: int, end: int | None, options: Options | None = None
               ) -> BinaryIO:
    """A streaming reader of bytes [start, end) (``end=None``: to the end)."""
    proto = protocol(url)
    start = max(0, int(start))
    if proto == "http":
        return httpstore.open_read(url, _opts(url, options), start, end)
    if proto in ("s3", "gs"):
        fs = _filesystem(proto, _opts(url, options))
        with _fs_errors(url):
            f = fs.open(_bucket_path(url), "rb", block_size=READ_BLOCK, cache_type="readahead")
        return io.BufferedReader(_FSReader(url, f, start, end), buffer_size=CHUNK)
    if proto == "file":
        with _local_errors(url):
            f = open(_local_path(url), "rb", buffering=0)
        if start:
            f.seek(start)
        if end is None:
            return io.BufferedReader(f, buffer_size=CHUNK)
        return io.BufferedReader(_Limited(f, max(0, end - start), url), buffer_size=CHUNK)
    if start or end is not None:
        raise _no_stream_ops(url, "a range read")
    if proto == "pipe":
        return io.BufferedReader(_PipeReader(url), buffer_size=CHUNK)
    return io.BufferedReader(_NoClose(sys.stdin.buffer), buffer_size=CHUNK)


def open_write(url: str, options: Options | None = None) -> Writer:
    """An atomic streaming writer: committed on clean exit/``commit()``/``close()``,
    discarded on an exception/``abort()``."""
    proto = protocol(url)
    if proto == "http":
        return httpstore.open_write(url, _opts(url, options))
    if proto in ("s3", "gs"):
        return _FSWriter(url, _filesystem(proto, _opts(url, options)), _bucket_path(url))
    if proto == "file":
        fsync = bool(_opts(url, options).get("fsync", True))
        return _LocalWriter(url, _local_path(url), fsync)
    if proto == "pipe":
        return _PipeWriter(url)
    return _StdoutWriter()


def exists(url: str, options: Options | None = None) -> bool:
    proto = protocol(url)
    if proto == "http":
        return httpstore.exists(url, _opts(url, options))
    if proto in ("s3", "gs"):
        fs = _filesystem(proto, _opts(url, options))
        with _fs_errors(url):
            return bool(fs.exists(_bucket_path(url)))
    if proto == "file":
        return os.path.exists(_local_path(url))
    raise _no_stream_ops(url, "exists()")


def size(url: str, options: Options | None = None) -> int:
    proto = protocol(url)
    if proto == "http":
        return httpstore.size(url, _opts(url, options))
    if proto in ("s3", "gs"):
        fs = _filesystem(proto, _opts(url, options))
        with _fs_errors(url):
            info = fs.info(_bucket_path(url))
        if info.get("type") == "directory":
            raise StorageError(redact(url), "is a directory")
        return int(info["size"])
    if proto == "file":
        with _local_errors(url):
            return os.stat(_local_path(url)).st_size
    raise _no_stream_ops(url, "size()")


def read_range(url: str, start: int, end: int, options: Options | None = None) -> bytes:
    """Bytes [start, end) (fewer if the object ends first)."""
    if end <= start:
        if not exists(url, options):
            raise NotFound(redact(url), "no such object", 404)
        return b""
    proto = protocol(url)
    if proto == "http":
        return httpstore.read_range(url, start, end, _opts(url, options))
    if proto in ("s3", "gs"):
        fs = _filesystem(proto, _opts(url, options))
        with _fs_errors(url):
            total = fs.info(_bucket_path(url))["size"]
            if start >= total:
                return b""
            return fs.cat_file(_bucket_path(url), start=start, end=min(end, total))
    with open_range(url, start, end, options) as f:
        return f.read()


def delete(url: str, options: Options | None = None, missing_ok: bool = True) -> None:
    proto = protocol(url)
    if proto == "http":
        return httpstore.delete(url, _opts(url, options), missing_ok)
    if proto in ("s3", "gs"):
        fs = _filesystem(proto, _opts(url, options))
        with _fs_errors(url):
            if not fs.exists(_bucket_path(url)):
                if missing_ok:
                    return None
                raise NotFound(redact(url), "no such object", 404)
            fs.rm_file(_bucket_path(url))
            fs.invalidate_cache(_bucket_path(url))
        return None
    if proto == "file":
        try:
            with _local_errors(url):
                os.unlink(_local_path(url))
        except NotFound:
            if not missing_ok:
                raise
        return None
    raise _no_stream_ops(url, "delete()")


def delete_prefix(url: str, options: Options | None = None) -> None:
    """Delete a "directory" and everything under it; absent is fine."""
    proto = protocol(url)
    if proto == "http":
        return httpstore.delete_prefix(url, _opts(url, options))
    if proto in ("s3", "gs"):
        fs = _filesystem(proto, _opts(url, options))
        path = _bucket_path(url)
        if "/" not in path:
            raise StorageError(redact(url), "refusing to delete a whole bucket")
        with _fs_errors(url):
            try:
                fs.rm(path + "/", recursive=True)
            except FileNotFoundError:
                pass
            fs.invalidate_cache(path)
        return None
    if proto == "file":
        path = _local_path(url)
        with _local_errors(url):
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.unlink(path)
        return None
    raise _no_stream_ops(url, "delete_prefix()")


def remove_partials(urls: list[str], options: Options | None = None) -> int:
    """Delete what writers of ``urls`` left behind when their process was killed.

    Only local writes leave anything visible (the hidden ``.NAME.tmp-*`` file of
    :class:`_LocalWriter`); HTTP direct PUTs, S3 multipart and GCS resumable
    uploads never show a partial object.  Returns how many files were removed.
    """
    by_folder: dict[str, set[str]] = {}
    for url in urls:
        if url and protocol(url) == "file":
            folder, base = os.path.split(_local_path(url))
            by_folder.setdefault(folder or ".", set()).add(f".{base}.tmp-")
    removed = 0
    for folder, prefixes in by_folder.items():
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.startswith(tuple(prefixes)):
                try:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
                except OSError:
                    pass
    return removed


def listdir(url: str, options: Options | None = None) -> list[str]:
    """Full URLs of the entries directly under ``url`` (sorted, no trailing ``/``)."""
    proto = protocol(url)
    if proto == "http":
        return [u.rstrip("/") for u in httpstore.listdir(url, _opts(url, options))]
    if proto in ("s3", "gs"):
        fs = _filesystem(proto, _opts(url, options))
        scheme = url.split("://", 1)[0]
        with _fs_errors(url):
            names = fs.ls(_bucket_path(url), detail=False)
        return sorted(f"{scheme}://{name.rstrip('/')}" for name in names)
    if proto == "file":
        with _local_errors(url):
            names = os.listdir(_local_path(url))
        return sorted(join(url, name) for name in names)
    raise _no_stream_ops(url, "listdir()")
