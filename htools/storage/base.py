"""What every storage backend shares: the interface, the retry policy, the atomic
:class:`RangeReader` (the atomic :class:`~htools.storage.writer.Writer` is in
:mod:`htools.storage.writer`).

Retries work the same way for every protocol.  A backend method makes ONE attempt and
raises :class:`Transient` for a fault worth retrying (connection reset/refused, a
timeout, HTTP 408/425/429/5xx, a truncated body); :func:`with_retries` runs it again
with exponential backoff under :func:`retry_policy`.  The public functions of
:mod:`htools.storage` wrap every backend call that way; inside an open stream,
:class:`RangeReader` reopens at the offset reached, and a :class:`Writer` of a backend
that can start an upload again (HTTP, S3, GCS: ``replayable``) keeps a replayable copy
of the body (:class:`Spool`: in memory up to ``$HTOOLS_SPOOL_MEMORY`` bytes, beyond that
in an unlinked file under ``$HTOOLS_SPOOL_DIR`` or the temp dir) and, after a transient
fault mid-body or at the commit, uploads it again as a new request under the same
policy.  Only when that gives up does the task that wrote run again from its input.
Permanent faults (403, 404, a bad URL) are never retried.
"""

from __future__ import annotations

import io
import os
import random
import socket
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from htools.errors import TRANSIENT_STATUS, StorageError, hide_credentials  # noqa: F401

if TYPE_CHECKING:
    from htools.storage.writer import Writer

T = TypeVar("T")

CHUNK = 1 << 20      # buffer size of readers and writers
RETRY_OPTIONS = ("retries", "backoff", "backoff_cap")   # accepted in any protocol's options


# --------------------------------------------------------------------------- retries

@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient faults are retried."""

    retries: int = 5
    backoff: float = 0.5
    cap: float = 20.0

    def delays(self) -> Iterator[float]:
        for attempt in range(self.retries):
            delay = min(self.cap, self.backoff * (2 ** attempt))
            yield delay * (0.5 + random.random() / 2)


def retry_policy(opts: Mapping[str, Any] | None = None) -> RetryPolicy:
    """The retry policy from one protocol's options (``retries``, ``backoff``,
    ``backoff_cap``), else the environment (``HTOOLS_RETRIES``,
    ``HTOOLS_RETRY_BACKOFF``, ``HTOOLS_RETRY_CAP``), read at call time."""
    opts = opts or {}
    env = os.environ
    return RetryPolicy(
        retries=int(opts.get("retries", env.get("HTOOLS_RETRIES", 5))),
        backoff=float(opts.get("backoff", env.get("HTOOLS_RETRY_BACKOFF", 0.5))),
        cap=float(opts.get("backoff_cap", env.get("HTOOLS_RETRY_CAP", 20.0))),
    )


class Transient(Exception):
    """A fault worth retrying (connection trouble, 408/425/429/5xx, a short body).
    Backends raise it; :func:`with_retries` and :class:`RangeReader` catch it.  It never
    leaves :mod:`htools.storage`: when retries run out it becomes a StorageError."""

    def __init__(self, why: str, status: int | None = None):
        super().__init__(why)
        self.why = why
        self.status = status

    def error(self, url: str, why: str | None = None) -> StorageError:
        """The StorageError to raise when this fault is not (or no longer) retried."""
        return StorageError(hide_credentials(url), why or self.why, self.status, transient=True)


def unresolvable(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is a failed host name lookup: a typo in a
    host or endpoint does not heal with retries, so it is never transient."""
    return _caused_by(exc, lambda e: isinstance(e, socket.gaierror)
                      and e.errno != socket.EAI_AGAIN)


def untrusted(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is a TLS certificate the client does not
    trust: retries do not change a certificate."""
    return _caused_by(exc, lambda e: isinstance(e, ssl.SSLCertVerificationError))


def _caused_by(exc: BaseException | None, test: Callable[[BaseException], bool]) -> bool:
    """Whether ``test`` holds for ``exc`` or one of the exceptions it came from."""
    for _ in range(6):
        if exc is None:
            return False
        if test(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def connection_fault(url: str, why: str, exc: BaseException) -> Exception:
    """The exception for a connection-level failure (``why`` describes it): a permanent
    StorageError when the host name does not resolve or the server's certificate is not
    trusted, else :class:`Transient`."""
    if unresolvable(exc):
        return StorageError(hide_credentials(url), f"{why} (the host name does not resolve: "
                            "check the URL or the endpoint)", transient=False)
    if untrusted(exc):
        return StorageError(hide_credentials(url), f"{why} (the server's certificate is not "
                            "trusted: fix it, or set the storage option http.verify to false)",
                            transient=False)
    return Transient(why)


def with_retries(url: str, policy: RetryPolicy, attempt: Callable[[], T]) -> T:
    """Run ``attempt`` until it does not raise :class:`Transient`, with backoff."""
    delays = policy.delays()
    tries = 0
    while True:
        tries += 1
        try:
            return attempt()
        except Transient as exc:
            delay = next(delays, None)
            if delay is None:
                raise exc.error(url, f"{exc.why} (gave up after {tries} "
                                f"attempt{'s' if tries > 1 else ''})") from None
            time.sleep(delay)


# --------------------------------------------------------------------------- reader

class RangeReader(io.RawIOBase):
    """A raw reader of bytes [start, end) of one object (``end=None``: to its end).

    Backends implement ``_open()`` (one attempt to start a stream at ``self._pos``; it
    may narrow ``self._end`` and returns False when nothing is left to read),
    ``_read(view)`` and ``_drop()``; both raise :class:`Transient` for faults worth
    retrying.  A read that fails that way reopens at the offset reached and goes on
    (each ``readinto`` call gets the policy's retries afresh).  With ``exact_end`` set
    (the backend learnt the object's real length), an early EOF is a truncated body and
    is retried too.  The first open is one attempt: storage's retry wrapper retries it.
    ``can_seek`` backends (local files) also seek, to absolute offsets.
    """

    exact_end = False
    can_seek = False

    def __init__(self, url: str, start: int, end: int | None, policy: RetryPolicy):
        super().__init__()
        self.url = url
        self.name = hide_credentials(url)
        self._policy = policy
        self._pos = start
        self._end = end
        self._live = False
        if end is not None and end <= start:
            self._end = start
        elif not self._start_stream():
            self._end = self._pos

    # -- what backends implement
    @abstractmethod
    def _open(self) -> bool: ...

    @abstractmethod
    def _read(self, view: memoryview) -> int: ...

    @abstractmethod
    def _drop(self) -> None: ...

    def _length(self) -> int:
        """The object's length, for seeks from the end of an open-ended range."""
        raise io.UnsupportedOperation("seek from the end of an open-ended range")

    def _reposition(self) -> None:
        """After a seek: by default drop the stream; it reopens at the new offset."""
        self._stop_stream()

    # -- shared
    def _start_stream(self) -> bool:
        self._live = self._open()
        return self._live

    def _stop_stream(self) -> None:
        self._live = False
        self._drop()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self.can_seek and not self.closed

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if not self.can_seek:
            raise io.UnsupportedOperation("seek")
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            offset += self._length() if self._end is None else self._end
        elif whence != io.SEEK_SET:
            raise ValueError(f"invalid whence {whence}")
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        if offset != self._pos:
            self._pos = offset
            self._reposition()
        return self._pos

    def readinto(self, buffer: Any) -> int:
        whole = memoryview(buffer).cast("B")
        delays = self._policy.delays()
        tries = 0
        while True:
            tries += 1
            if not whole.nbytes or (self._end is not None and self._pos >= self._end):
                return 0
            try:
                if not self._live and not self._start_stream():
                    self._end = self._pos
                    return 0
                view = whole if self._end is None else whole[: max(0, self._end - self._pos)]
                if not view.nbytes:  # the open learnt that the object ends here
                    return 0
                n = self._read(view)
                if n == 0 and self.exact_end and self._end is not None and self._pos < self._end:
                    raise Transient(f"body ended {self._end - self._pos} bytes short")
            except Transient as exc:
                self._stop_stream()
                delay = next(delays, None)
                if delay is None:
                    raise StorageError(self.name, f"read failed at offset {self._pos}: "
                                       f"{exc.why} (gave up after {tries} attempts)",
                                       transient=True) from None
                time.sleep(delay)
                continue
            self._pos += n
            if n == 0:  # end of the object: known from now on
                self._stop_stream()
                self._end = self._pos
            return n

    def readall(self) -> bytes:
        if self._end is not None:
            out = bytearray(self._end - self._pos)
            view = memoryview(out)
            got = 0
            while got < len(out):
                n = self.readinto(view[got:])
                if not n:
                    break
                got += n
            return bytes(out) if got == len(out) else bytes(view[:got])
        chunks = []
        while True:
            chunk = bytearray(CHUNK)
            n = self.readinto(chunk)
            if not n:
                return b"".join(chunks)
            chunks.append(bytes(chunk[:n]))

    def close(self) -> None:
        if not self.closed:
            self._stop_stream()
        super().close()


def buffered(raw: io.RawIOBase) -> BinaryIO:
    """The buffered reader every backend hands out."""
    return io.BufferedReader(raw, buffer_size=CHUNK)  # type: ignore[return-value]


# --------------------------------------------------------------------------- backends

class Backend(ABC):
    """One storage protocol.  The registry makes one instance per protocol.

    Every method takes the URL and this protocol's options (a plain dict, already
    resolved) and makes ONE attempt: it raises :class:`Transient` for faults worth
    retrying, :class:`~htools.errors.NotFound` / :class:`~htools.errors.StorageError`
    otherwise.  :mod:`htools.storage` adds the retries (:func:`with_retries`).
    ``open_read(url)`` is ``open_range(url, 0, None)``.
    """

    @abstractmethod
    def open_range(self, url: str, start: int, end: int | None,
                   opts: Mapping[str, Any]) -> BinaryIO:
        """A buffered streaming reader of bytes [start, end) (``end=None``: to the end)."""

    @abstractmethod
    def open_write(self, url: str, opts: Mapping[str, Any]) -> Writer:
        """A :class:`Writer`: committed whole on ``commit()``, absent after ``abort()``."""

    @abstractmethod
    def exists(self, url: str, opts: Mapping[str, Any]) -> bool: ...

    @abstractmethod
    def size(self, url: str, opts: Mapping[str, Any]) -> int: ...

    def read_range(self, url: str, start: int, end: int, opts: Mapping[str, Any]) -> bytes:
        """Bytes [start, end), fewer if the object ends first (``start < end``)."""
        with self.open_range(url, start, end, opts) as f:
            return f.read()

    @abstractmethod
    def delete(self, url: str, opts: Mapping[str, Any], missing_ok: bool) -> None: ...

    @abstractmethod
    def delete_prefix(self, url: str, opts: Mapping[str, Any]) -> None:
        """Delete a "directory" and everything under it; absent is fine."""

    @abstractmethod
    def listdir(self, url: str, opts: Mapping[str, Any]) -> list[str]:
        """Full URLs of the entries directly under ``url`` (sorted, no trailing ``/``)."""

    def remove_partials(self, urls: list[str], opts: Mapping[str, Any]) -> int:
        """Delete what killed writers of ``urls`` left behind; how many were removed.
        Only backends whose partial writes are visible have anything to do."""
        return 0
