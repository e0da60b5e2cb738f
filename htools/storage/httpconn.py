"""HTTP plumbing for :mod:`htools.storage.http`: targets, credentials, connections.

Plain ``http.client`` underneath, synchronous and thread-free (so it behaves the same
in the parent, in forked and in spawned Dask workers).  Basic auth comes from the
URL's ``user:password@``, the ``auth`` option, ``$HTOOLS_HTTP_USER`` /
``$HTOOLS_HTTP_PASSWORD`` or ``~/.netrc`` (first found wins).  Kept-alive connections
are pooled per thread and dropped in a forked child.
"""

from __future__ import annotations

import base64
import http.client
import netrc
import os
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from htools.errors import NotFound, StorageError, hide_credentials
from htools.storage.base import TRANSIENT_STATUS, Transient, connection_fault

SOCKET_BUFFER = 4 << 20    # SO_RCVBUF / SO_SNDBUF of streaming connections
USER_ENV, PASSWORD_ENV = "HTOOLS_HTTP_USER", "HTOOLS_HTTP_PASSWORD"
AUTH_HINT = ("; credentials missing or rejected (give them as http://USER:PASSWORD@host/..., "
             f"in ~/.netrc, in ${USER_ENV}/${PASSWORD_ENV}, or as storage option "
             "http.auth)")


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
        raise StorageError(hide_credentials(url), "not an http(s) URL")
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


def new_connection(t: Target) -> http.client.HTTPConnection:
    if t.https:
        context = ssl.create_default_context()
        if not t.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(t.host, t.port, timeout=t.timeout, context=context)
    return http.client.HTTPConnection(t.host, t.port, timeout=t.timeout)


def socket_buffer(conn: http.client.HTTPConnection, which: int) -> None:
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
    return new_connection(t), False


def _release(t: Target, conn: http.client.HTTPConnection) -> None:
    conns = _pool.idle.setdefault((t.https, t.host, t.port), [])
    if len(conns) < 4:
        conns.append(conn)
    else:
        conn.close()


def status_error(t: Target, method: str, status: int, reason: str) -> Exception:
    """The exception for a non-success status: Transient, NotFound or StorageError."""
    why = f"{method} failed: {status} {reason}".strip()
    if status == 401:
        why += AUTH_HINT + _on_worker_hint()
    if status in TRANSIENT_STATUS:
        return Transient(why, status)
    if status == 404:
        return NotFound(hide_credentials(t.url), f"no such object ({method} answered 404)", 404)
    return StorageError(hide_credentials(t.url), why, status)


def _on_worker_hint() -> str:
    """On a Dask worker without credentials: ~/.netrc is read there, not on the client."""
    if os.environ.get(USER_ENV):
        return ""
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return ""
    return ("; this ran on a Dask worker, where ~/.netrc is read: put it on every worker, "
            f"or give the credentials in the URL, in ${USER_ENV}/${PASSWORD_ENV} or in "
            "--storage-options on the client, which travel with the job")


def request(t: Target, method: str, headers: Mapping[str, str] | None = None,
            ok: Callable[[int], bool] = lambda s: s < 300) -> tuple[int, Any, bytes]:
    """One request/response (body read whole; for small answers) on a pooled connection.
    Returns (status, headers, body) when ``ok(status)``; raises otherwise (Transient
    for connection trouble and 408/425/429/5xx)."""
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
            raise connection_fault(t.url, f"{method} failed: {describe(exc)}", exc) from None
        if resp.will_close:
            conn.close()
        else:
            _release(t, conn)
        if not ok(resp.status):
            raise status_error(t, method, resp.status, resp.reason)
        return resp.status, resp.headers, body
    raise Transient(f"{method} failed: connection lost")  # pragma: no cover


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


def delete_once(url: str, timeout: float = 10.0) -> int | None:
    """One DELETE, any answer accepted, no error raised (best-effort cleanup).
    Returns the status, or None when there was no answer."""
    try:
        t = replace(target(url, {"timeout": timeout}), headers={})
        return request(t, "DELETE", ok=lambda s: True)[0]
    except Exception:  # noqa: BLE001 - best effort
        return None
