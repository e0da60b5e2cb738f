"""HTTP(S) object storage for :mod:`htools.storage`.

Plain ``http.client`` underneath, synchronous and thread-free (so it behaves the
same in the parent, in forked and in spawned Dask workers):

* streaming GET that resumes at the offset reached (``Range`` + ``If-Match`` on the
  ETag) when a connection drops or a body comes back short;
* a streaming chunked PUT writer: bytes go to the socket as they are written
  (bounded memory), ``commit()`` sends the last chunk and checks the answer,
  ``abort()`` drops the connection so the server discards the partial body;
* HEAD, ranged GET, DELETE, WebDAV MOVE and nginx JSON autoindex listings;
* basic auth from the URL's ``user:password@``, the ``auth`` option,
  ``$HTOOLS_HTTP_USER``/``$HTOOLS_HTTP_PASSWORD`` or ``~/.netrc`` (first found wins).

Also holds the pieces shared with storage.py: :class:`Writer`, the retry policy
and :func:`redact`.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import netrc
import os
import random
import re
import select
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from htools.errors import NotFound, StorageError, hide_credentials

T = TypeVar("T")

CHUNK = 1 << 20            # PUT chunk size and read buffer size
SOCKET_BUFFER = 4 << 20    # SO_RCVBUF / SO_SNDBUF of streaming connections
CONTINUE_WAIT = 1.0        # seconds to wait for "100 Continue" before sending anyway
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_ENV, PASSWORD_ENV = "HTOOLS_HTTP_USER", "HTOOLS_HTTP_PASSWORD"
AUTH_HINT = ("; credentials missing or rejected (give them as http://USER:PASSWORD@host/..., "
             f"in ~/.netrc, in ${USER_ENV}/${PASSWORD_ENV}, or as storage option "
             "http.auth)")


def redact(url: str) -> str:
    """``url`` without any ``user:password@`` part (safe for messages and logs)."""
    return hide_credentials(url)


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
    """The retry policy from ``opts`` (``retries``, ``backoff``, ``backoff_cap``),
    else the environment (``HTOOLS_RETRIES``, ``HTOOLS_RETRY_BACKOFF``,
    ``HTOOLS_RETRY_CAP``), read at call time."""
    opts = opts or {}
    env = os.environ
    return RetryPolicy(
        retries=int(opts.get("retries", env.get("HTOOLS_RETRIES", 5))),
        backoff=float(opts.get("backoff", env.get("HTOOLS_RETRY_BACKOFF", 0.5))),
        cap=float(opts.get("backoff_cap", env.get("HTOOLS_RETRY_CAP", 20.0))),
    )


class Transient(Exception):
    """Internal: a fault worth retrying (connection trouble, 429, 5xx, short body)."""

    def __init__(self, why: str, status: int | None = None):
        super().__init__(why)
        self.why = why
        self.status = status


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
                raise StorageError(redact(url), f"{exc.why} (gave up after {tries} "
                                   f"attempt{'s' if tries > 1 else ''})", exc.status) from None
            time.sleep(delay)


# --------------------------------------------------------------------------- writer base

class Writer:
    """An object being written.  ``write()`` streams bytes out; ``commit()`` makes the
    object appear whole; ``abort()`` (or an exception inside ``with``) leaves no object.
    ``close()`` is ``commit()``; ``flush()`` never commits."""

    mode = "wb"

    def __init__(self, url: str):
        self.url = url
        self.name = redact(url)
        self.closed = False
        self._pos = 0

    # -- what backends implement
    def _write(self, data: memoryview) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError

    # -- the file-like surface
    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.closed:
            raise ValueError(f"write to a closed writer ({self.name})")
        view = memoryview(data).cast("B")
        if view.nbytes:
            self._write(view)
            self._pos += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        """No-op: data is only guaranteed durable by ``commit()``."""

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def commit(self) -> None:
        """Finish the object and make it visible (atomic).  Aborts if that fails."""
        if self.closed:
            return
        self.closed = True
        try:
            self._commit()
        except BaseException:
            self._abort_quietly()
            raise

    def abort(self) -> None:
        """Discard everything written; the object is left absent (or unchanged)."""
        if self.closed:
            return
        self.closed = True
        self._abort()

    def close(self) -> None:
        self.commit()

    def _abort_quietly(self) -> None:
        try:
            self._abort()
        except Exception:  # noqa: BLE001 - best effort after another error
            pass

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self.closed = True
            self._abort_quietly()


# --------------------------------------------------------------------------- targets

@dataclass(frozen=True)
class Target:
    """Where one HTTP request goes: connection parameters, request path, headers."""

    url: str
    https: bool
    host: str
    port: int
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 60.0   # per socket operation (connect, each send/recv), not total
    verify: bool = True

    def with_path(self, path: str) -> Target:
        parts = urlsplit(self.url)
        url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        return replace(self, url=url, path=_quote_path(path))

    def absolute(self) -> str:
        """Absolute URL without credentials (for the WebDAV ``Destination`` header)."""
        scheme = "https" if self.https else "http"
        return f"{scheme}://{_netloc(self.host, self.port)}{self.path}"


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _quote_path(path: str) -> str:
    # Quote spaces and non-ASCII; keep reserved characters and existing %XX escapes.
    return quote(path or "/", safe="/%:@!$&'()*+,;=-._~")


def target(url: str, opts: Mapping[str, Any] | None = None) -> Target:
    """Parse an http(s) URL and the ``options["http"]`` dict into a :class:`Target`."""
    opts = opts or {}
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StorageError(redact(url), "not an http(s) URL")
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    headers = {str(k): str(v) for k, v in (opts.get("headers") or {}).items()}
    auth = _credentials(parts.username, parts.password, opts.get("auth"), parts.hostname)
    if auth is not None and not any(k.lower() == "authorization" for k in headers):
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    path = _quote_path(parts.path) + (f"?{parts.query}" if parts.query else "")
    return Target(url=url, https=https, host=parts.hostname, port=port, path=path,
                  headers=headers, timeout=float(opts.get("timeout", 60.0)),
                  verify=bool(opts.get("verify", True)))


def _credentials(user: str | None, password: str | None, auth: Any,
                 host: str) -> tuple[str, str] | None:
    """Basic-auth credentials, first found wins: the URL's ``user:password@``, the
    ``auth`` option, ``$HTOOLS_HTTP_USER``/``$HTOOLS_HTTP_PASSWORD``, ``~/.netrc``."""
    if user is not None:
        return unquote(user), unquote(password or "")
    if auth:
        if isinstance(auth, Mapping):
            return str(auth.get("user", "")), str(auth.get("password", ""))
        return str(auth[0]), str(auth[1])
    env_user = os.environ.get(USER_ENV)
    if env_user:
        return env_user, os.environ.get(PASSWORD_ENV, "")
    try:
        found = netrc.netrc().authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    if found is None:
        return None
    login, _account, secret = found
    return login or "", secret or ""


# --------------------------------------------------------------------------- connections

_pool = threading.local()


def _new_connection(t: Target) -> http.client.HTTPConnection:
    if t.https:
        context = ssl.create_default_context()
        if not t.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(t.host, t.port, timeout=t.timeout, context=context)
    return http.client.HTTPConnection(t.host, t.port, timeout=t.timeout)


def _socket_buffer(conn: http.client.HTTPConnection, which: int) -> None:
    """A larger kernel socket buffer for streaming (fewer syscalls per MiB)."""
    try:
        conn.sock.setsockopt(socket.SOL_SOCKET, which, SOCKET_BUFFER)
    except OSError:
        pass


def _connection(t: Target) -> tuple[http.client.HTTPConnection, bool]:
    """A kept-alive connection from this thread's pool (reused=True) or a new one."""
    idle: dict = getattr(_pool, "idle", None) or {}
    _pool.idle = idle
    if getattr(_pool, "pid", None) != os.getpid():
        idle.clear()
        _pool.pid = os.getpid()
    conns = idle.get((t.https, t.host, t.port))
    if conns:
        return conns.pop(), True
    return _new_connection(t), False


def _release(t: Target, conn: http.client.HTTPConnection) -> None:
    conns = _pool.idle.setdefault((t.https, t.host, t.port), [])
    if len(conns) < 4:
        conns.append(conn)
    else:
        conn.close()


def _status_error(t: Target, method: str, status: int, reason: str) -> Exception:
    """The exception for a non-success status: Transient, NotFound or StorageError."""
    why = f"{method} failed: {status} {reason}".strip()
    if status == 401:
        why += AUTH_HINT
    if status in TRANSIENT_STATUS:
        return Transient(why, status)
    if status == 404:
        return NotFound(redact(t.url), f"no such object ({method} answered 404)", 404)
    return StorageError(redact(t.url), why, status)


def request(t: Target, method: str, headers: Mapping[str, str] | None = None,
            ok: Callable[[int], bool] = lambda s: s < 300) -> tuple[int, Any, bytes]:
    """One request/response (body read whole; for small answers) on a pooled connection.
    Returns (status, headers, body) when ``ok(status)``; raises otherwise."""
    all_headers = {**t.headers, **(headers or {})}
    for _ in range(2):  # a second go only when a kept-alive connection went stale
        conn, reused = _connection(t)
        try:
            conn.request(method, t.path, headers=all_headers)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if reused:
                continue
            raise Transient(f"{method} failed: {_describe(exc)}") from None
        if resp.will_close:
            conn.close()
        else:
            _release(t, conn)
        if not ok(resp.status):
            raise _status_error(t, method, resp.status, resp.reason)
        return resp.status, resp.headers, body
    raise Transient(f"{method} failed: connection lost")  # pragma: no cover


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


# --------------------------------------------------------------------------- simple ops

def head(url: str, opts: Mapping[str, Any] | None = None) -> tuple[int, Any]:
    """(status, headers) of a HEAD; 404 comes back as a status, not an error."""
    t = target(url, opts)
    status, headers, _ = with_retries(url, retry_policy(opts), lambda: request(
        t, "HEAD", ok=lambda s: s < 400 or s == 404))
    return status, headers


def exists(url: str, opts: Mapping[str, Any] | None = None) -> bool:
    return head(url, opts)[0] != 404


def size(url: str, opts: Mapping[str, Any] | None = None) -> int:
    status, headers = head(url, opts)
    if status == 404:
        raise NotFound(redact(url), "no such object (HEAD answered 404)", 404)
    length = headers.get("Content-Length")
    if length is None:
        raise StorageError(redact(url), "server sent no Content-Length")
    return int(length)


def read_range(url: str, start: int, end: int, opts: Mapping[str, Any] | None = None) -> bytes:
    """Bytes [start, end) in one ranged GET on a kept-alive connection (a short or
    dropped body is retried whole)."""
    if end <= start:
        return b""
    t = target(url, opts)
    headers = {"Range": f"bytes={start}-{end - 1}"}

    def attempt() -> tuple[int, Any, bytes]:
        status, answer, body = request(t, "GET", headers, ok=lambda s: s < 300 or s == 416)
        length = answer.get("Content-Length")
        if length is not None and len(body) != int(length):
            raise Transient(f"body ended {int(length) - len(body)} bytes short")
        return status, answer, body

    status, answer, body = with_retries(url, retry_policy(opts), attempt)
    if status == 416:
        return b""
    if status == 200:  # the server ignored Range
        return body[start:end]
    got = re.match(r"bytes (\d+)-", answer.get("Content-Range", ""))
    if got is None or int(got.group(1)) != start:
        raise StorageError(redact(url), f"asked for bytes {start}-{end - 1}, got "
                           f"{answer.get('Content-Range')!r}", status)
    return body[: end - start]


def delete(url: str, opts: Mapping[str, Any] | None = None, missing_ok: bool = True) -> None:
    t = target(url, opts)
    status, _, _ = with_retries(url, retry_policy(opts), lambda: request(
        t, "DELETE", ok=lambda s: s < 300 or s == 404))
    if status == 404 and not missing_ok:
        raise NotFound(redact(url), "no such object (DELETE answered 404)", 404)


def delete_once(url: str, timeout: float = 10.0) -> int | None:
    """One DELETE, any answer accepted, no error raised (best-effort cleanup).
    Returns the status, or None when there was no answer."""
    try:
        t = replace(target(url, {"timeout": timeout}), headers={})
        return request(t, "DELETE", ok=lambda s: True)[0]
    except Exception:  # noqa: BLE001 - best effort
        return None


def delete_prefix(url: str, opts: Mapping[str, Any] | None = None) -> None:
    """WebDAV DELETE of a collection (recursive on nginx); absent is fine."""
    url = url if url.endswith("/") else url + "/"
    t = target(url, opts)
    with_retries(url, retry_policy(opts), lambda: request(
        t, "DELETE", {"Depth": "infinity"}, ok=lambda s: s < 300 or s == 404))


def move(src: str, dst: str, opts: Mapping[str, Any] | None = None) -> None:
    """WebDAV MOVE ``src`` onto ``dst`` (overwriting)."""
    t = target(src, opts)
    headers = {"Destination": target(dst, opts).absolute(), "Overwrite": "T"}
    with_retries(src, retry_policy(opts), lambda: request(t, "MOVE", headers))


def listdir(url: str, opts: Mapping[str, Any] | None = None) -> list[str]:
    """Entries of a directory from an nginx ``autoindex_format json`` listing."""
    base = url if url.endswith("/") else url + "/"
    t = target(base, opts)
    _, _, body = with_retries(url, retry_policy(opts), lambda: request(
        t, "GET", {"Accept": "application/json"}))
    try:
        entries = json.loads(body)
        names = [str(e["name"]) for e in entries]
    except (ValueError, TypeError, KeyError):
        raise StorageError(redact(url), "listing is not JSON (nginx needs "
                           "'autoindex on; autoindex_format json;')") from None
    return sorted(base + name for name in names)


# --------------------------------------------------------------------------- streaming GET

class _Reader(io.RawIOBase):
    """Raw streaming GET of [start, end) that resumes where it stopped on faults."""

    def __init__(self, url: str, opts: Mapping[str, Any] | None, start: int, end: int | None):
        super().__init__()
        self._url = url
        self._t = target(url, opts)
        self._policy = retry_policy(opts)
        self._pos = start
        self._end = end
        self._etag: str | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._resp: http.client.HTTPResponse | None = None
        if end is None or end > start:
            with_retries(url, self._policy, self._connect)
        else:
            self._end = start

    @property
    def name(self) -> str:
        return redact(self._url)

    def readable(self) -> bool:
        return True

    def _connect(self) -> None:
        self._drop()
        headers = dict(self._t.headers)
        if self._pos > 0 or self._end is not None:
            last = "" if self._end is None else str(self._end - 1)
            headers["Range"] = f"bytes={self._pos}-{last}"
        if self._etag:
            headers["If-Match"] = self._etag
        conn = _new_connection(self._t)
        try:
            conn.connect()
            _socket_buffer(conn, socket.SO_RCVBUF)
            conn.request("GET", self._t.path, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise Transient(f"GET failed: {_describe(exc)}") from None
        if resp.status == 416:  # range starts at or past the end: nothing to read
            conn.close()
            self._end = self._pos
            return
        if resp.status == 412:
            conn.close()
            raise StorageError(redact(self._url), "object changed while it was being read", 412)
        if resp.status >= 300:
            conn.close()
            raise _status_error(self._t, "GET", resp.status, resp.reason)
        if resp.status == 200 and self._pos > 0:
            self._skip(resp, self._pos)  # the server ignored Range
        self._conn, self._resp = conn, resp
        etag = resp.getheader("ETag")
        if self._etag is None and etag and not etag.startswith("W/"):
            self._etag = etag  # strong ETags only: If-Match never matches a weak one
        length = resp.getheader("Content-Length")
        if length is not None and "Content-Encoding" not in resp.headers:
            known_end = self._pos + int(length)
            self._end = known_end if self._end is None else min(self._end, known_end)

    @staticmethod
    def _skip(resp: http.client.HTTPResponse, count: int) -> None:
        while count > 0:
            got = resp.read(min(count, CHUNK))
            if not got:
                raise Transient("short body while skipping to the resume offset")
            count -= len(got)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = self._resp = None

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._end is not None:
            view = view[: max(0, self._end - self._pos)]
        if not view.nbytes:
            return 0
        delays = self._policy.delays()
        tries = 0
        while True:
            tries += 1
            try:
                if self._resp is None:
                    self._connect()
                    if self._resp is None:
                        return 0
                n = self._resp.readinto(view)
                if n == 0 and self._end is not None and self._pos < self._end:
                    raise Transient(f"body ended {self._end - self._pos} bytes short")
            except (OSError, http.client.HTTPException, Transient) as exc:
                if isinstance(exc, StorageError):
                    raise
                self._drop()
                delay = next(delays, None)
                why = exc.why if isinstance(exc, Transient) else _describe(exc)
                if delay is None:
                    raise StorageError(self.name, f"read failed at offset {self._pos}: {why} "
                                       f"(gave up after {tries} attempts)") from None
                time.sleep(delay)
                continue
            self._pos += n
            if n == 0:
                self._drop()
            return n

    def readall(self) -> bytes:
        chunks = []
        if self._end is not None:
            out = bytearray(self._end - self._pos)
            view = memoryview(out)
            got = 0
            while got < len(out):
                n = self.readinto(view[got:])
                if not n:
                    break
                got += n
            return bytes(out[:got])
        while True:
            chunk = bytearray(CHUNK)
            n = self.readinto(chunk)
            if not n:
                return b"".join(chunks)
            chunks.append(bytes(chunk[:n]))

    def close(self) -> None:
        self._drop()
        super().close()


def open_read(url: str, opts: Mapping[str, Any] | None = None, start: int = 0,
              end: int | None = None) -> io.BufferedReader:
    """A buffered streaming reader of ``url`` bytes [start, end)."""
    return io.BufferedReader(_Reader(url, opts, start, end), buffer_size=CHUNK)


# --------------------------------------------------------------------------- streaming PUT

class HTTPWriter(Writer):
    """Streaming chunked PUT.

    ``mode="direct"`` (default) PUTs straight to the final URL: nginx's dav module
    spools the body to ``client_body_temp_path`` and renames it into place only when
    the body is complete, so the object never shows partially and a dropped upload
    leaves nothing.  ``mode="move"`` PUTs to ``<name>.tmp-<uuid>`` and WebDAV-MOVEs it
    onto the final name on commit, for servers that write PUT bodies in place.
    Only the connection setup (before the first body byte) is retried: the body is
    streamed and not kept, so a fault mid-body fails the write (the caller reruns it).
    """

    def __init__(self, url: str, opts: Mapping[str, Any] | None = None):
        super().__init__(url)
        self._opts = opts or {}
        self._policy = retry_policy(opts)
        final = target(url, opts)
        self._mode = str(self._opts.get("put_mode", "direct"))
        if self._mode not in ("direct", "move"):
            raise StorageError(self.name, f"unknown http put_mode {self._mode!r}")
        if self._mode == "move":
            parts = urlsplit(url)
            self._tmp_url = urlunsplit(parts._replace(path=f"{parts.path}.tmp-{uuid.uuid4().hex}"))
            self._t = target(self._tmp_url, opts)
        else:
            self._tmp_url = url
            self._t = final
        self._buf = bytearray()
        self._conn: http.client.HTTPConnection = with_retries(url, self._policy, self._start)

    def _start(self) -> http.client.HTTPConnection:
        t = self._t
        conn = _new_connection(t)
        try:
            conn.connect()
            _socket_buffer(conn, socket.SO_SNDBUF)
            conn.putrequest("PUT", t.path, skip_accept_encoding=True)
            headers = {"Content-Type": "application/octet-stream", **t.headers,
                       "Transfer-Encoding": "chunked"}
            if not t.https:
                headers["Expect"] = "100-continue"
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.endheaders()
            if not t.https:
                self._await_continue(conn)
        except StorageError:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise Transient(f"PUT failed: {_describe(exc)}") from None
        return conn

    def _await_continue(self, conn: http.client.HTTPConnection) -> None:
        """Wait briefly for ``100 Continue`` so auth/permission errors come back before
        any body is sent; a final answer instead raises (Transient for 5xx/429)."""
        sock = conn.sock
        ready, _, _ = select.select([sock], [], [], CONTINUE_WAIT)
        if not ready:
            return
        head_ = sock.recv(4096, socket.MSG_PEEK)
        if not head_:
            raise ConnectionResetError("server closed the connection")
        if re.match(rb"HTTP/1\.[01] 100", head_):
            end = head_.find(b"\r\n\r\n")
            if end < 0:
                raise http.client.HTTPException("malformed 100 Continue")
            sock.recv(end + 4)
            return
        resp = conn.getresponse()
        resp.read()
        conn.close()
        raise _status_error(self._t, "PUT", resp.status, resp.reason)

    def _write(self, data: memoryview) -> None:
        if len(self._buf) + data.nbytes >= CHUNK and self._buf:
            self._send_chunk(self._buf)
            self._buf = bytearray()
        if data.nbytes >= CHUNK:
            self._send_chunk(data)  # big writes go out as they are, no copy
        else:
            self._buf += data

    def _send_chunk(self, data: bytes | bytearray | memoryview) -> None:
        sock = self._conn.sock
        try:
            sock.sendall(b"%X\r\n" % len(data))
            sock.sendall(data)
            sock.sendall(b"\r\n")
        except OSError as exc:
            self._fail(f"upload failed after {self._pos} bytes: {_describe(exc)}")

    def _fail(self, why: str) -> None:
        status = None
        try:  # the server may have answered (e.g. 401, 413, 507) before hanging up
            self._conn.sock.settimeout(2)
            resp = self._conn.getresponse()
            status, why = resp.status, f"{why}; server answered {resp.status} {resp.reason}"
        except Exception:  # noqa: BLE001 - no answer to report
            pass
        self.closed = True
        self._abort_quietly()
        if status == 404:
            raise NotFound(self.name, why, status)
        raise StorageError(self.name, why, status)

    def _commit(self) -> None:
        if self._buf:
            self._send_chunk(self._buf)
            self._buf = bytearray()
        try:
            self._conn.sock.sendall(b"0\r\n\r\n")
            resp = self._conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise StorageError(self.name, f"upload failed at commit: {_describe(exc)}") from None
        finally:
            self._conn.close()
        if resp.status >= 300:
            error = _status_error(target(self.url, self._opts), "PUT", resp.status, resp.reason)
            if isinstance(error, Transient):  # the body is gone: cannot retry here
                error = StorageError(self.name, error.why, error.status)
            raise error
        if self._mode == "move":
            move(self._tmp_url, self.url, self._opts)

    def _abort(self) -> None:
        conn = self._conn
        if conn.sock is not None:
            try:  # RST, so the server sees an incomplete body at once and drops it
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        conn.close()
        self._buf = bytearray()
        if self._mode == "move":
            try:
                delete(self._tmp_url, {**self._opts, "retries": 0})
            except Exception:  # noqa: BLE001 - best effort: the body never completed
                pass


def open_write(url: str, opts: Mapping[str, Any] | None = None) -> HTTPWriter:
    return HTTPWriter(url, opts)
