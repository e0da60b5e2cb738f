"""HTTP(S) object storage: an nginx server with WebDAV PUT/DELETE/MOVE and JSON listings.

* streaming GET that resumes at the offset reached (``Range`` + ``If-Match`` on the
  ETag) when a connection drops or a body comes back short;
* a streaming chunked PUT writer: bytes go to the socket as they are written (bounded
  memory), ``commit()`` sends the last chunk and checks the answer, ``abort()`` drops
  the connection so the server discards the partial body;
* HEAD, ranged GET, DELETE, WebDAV MOVE and nginx ``autoindex_format json`` listings.

Any server that answers GET with ``Range`` can be read from; writing needs PUT (and
MOVE for ``put_mode="move"``), deleting needs DELETE, listing needs nginx's JSON
autoindex.  Options (``options["http"]``): ``headers``, ``auth``, ``put_mode``
(``"direct"`` | ``"move"``), ``timeout``, ``verify``, and the retry options.
"""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import struct
import uuid
from collections.abc import Mapping
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from htools.errors import (
    TRANSIENT_STATUS,
    NotFound,
    SizeUnknown,
    StorageError,
    hide_credentials,
)
from htools.storage.base import (
    CHUNK,
    Backend,
    RangeReader,
    Transient,
    buffered,
    connection_fault,
    retry_policy,
    with_retries,
)
from htools.storage.httpconn import (
    Target,
    describe,
    new_connection,
    request,
    socket_buffer,
    status_error,
    target,
)
from htools.storage.writer import Writer

CONTINUE_WAIT = 1.0        # seconds to wait for "100 Continue" before sending anyway


class HTTPBackend(Backend):
    """``http://`` and ``https://`` URLs."""

    def open_range(self, url: str, start: int, end: int | None,
                   opts: Mapping[str, Any]) -> BinaryIO:
        return buffered(_HTTPReader(url, opts, start, end))

    def open_write(self, url: str, opts: Mapping[str, Any]) -> Writer:
        return HTTPWriter(url, opts)

    def head(self, url: str, opts: Mapping[str, Any]) -> tuple[int, Any]:
        """(status, headers) of a HEAD; 404 comes back as a status, not an error."""
        status, headers, _ = request(target(url, opts), "HEAD", ok=lambda s: s < 400 or s == 404)
        return status, headers

    def exists(self, url: str, opts: Mapping[str, Any]) -> bool:
        return self.head(url, opts)[0] != 404

    def size(self, url: str, opts: Mapping[str, Any]) -> int:
        status, headers = self.head(url, opts)
        if status == 404:
            raise NotFound(hide_credentials(url), "no such object (HEAD answered 404)", 404)
        length = headers.get("Content-Length")
        if length is None:  # some servers and proxies omit it on HEAD: ask a 1-byte range
            status, answer, _ = request(target(url, opts), "GET", {"Range": "bytes=0-0"},
                                        ok=lambda s: s < 300 or s == 416)
            total = re.match(r"bytes (?:\d+-\d+|\*)/(\d+)", answer.get("Content-Range", ""))
            if total is None:
                raise SizeUnknown(hide_credentials(url), "the server tells no length (no "
                                  "Content-Length, no Content-Range); it is read as a stream")
            return int(total.group(1))
        return int(length)

    def read_range(self, url: str, start: int, end: int, opts: Mapping[str, Any]) -> bytes:
        """One ranged GET on a kept-alive connection (a short body is Transient)."""
        headers = {"Range": f"bytes={start}-{end - 1}"}
        status, answer, body = request(target(url, opts), "GET", headers,
                                       ok=lambda s: s < 300 or s == 416)
        length = answer.get("Content-Length")
        if length is not None and len(body) != int(length):
            raise Transient(f"body ended {int(length) - len(body)} bytes short")
        if status == 416:
            return b""
        if status == 200:  # the server ignored Range
            return body[start:end]
        got = re.match(r"bytes (\d+)-", answer.get("Content-Range", ""))
        if got is None or int(got.group(1)) != start:
            raise StorageError(hide_credentials(url), f"asked for bytes {start}-{end - 1}, got "
                               f"{answer.get('Content-Range')!r}", status)
        return body[: end - start]

    def delete(self, url: str, opts: Mapping[str, Any], missing_ok: bool) -> None:
        status, _, _ = request(target(url, opts), "DELETE", ok=lambda s: s < 300 or s == 404)
        if status == 404 and not missing_ok:
            raise NotFound(hide_credentials(url), "no such object (DELETE answered 404)", 404)

    def delete_prefix(self, url: str, opts: Mapping[str, Any]) -> None:
        """WebDAV DELETE of a collection (recursive on nginx)."""
        url = url if url.endswith("/") else url + "/"
        request(target(url, opts), "DELETE", {"Depth": "infinity"},
                ok=lambda s: s < 300 or s == 404)

    def listdir(self, url: str, opts: Mapping[str, Any]) -> list[str]:
        """Entries of a directory from an nginx ``autoindex_format json`` listing."""
        base = url if url.endswith("/") else url + "/"
        _, _, body = request(target(base, opts), "GET", {"Accept": "application/json"})
        try:
            entries = json.loads(body)
            names = [str(e["name"]) for e in entries]
        except (ValueError, TypeError, KeyError):
            raise StorageError(hide_credentials(url), "listing is not JSON (nginx needs "
                               "'autoindex on; autoindex_format json;')") from None
        return sorted((base + name).rstrip("/") for name in names)


def move(src: str, dst: str, opts: Mapping[str, Any] | None = None) -> None:
    """WebDAV MOVE ``src`` onto ``dst`` (overwriting), retried like everything else."""
    t = target(src, opts)
    headers = {"Destination": target(dst, opts).absolute(), "Overwrite": "T"}
    with_retries(src, retry_policy(opts), lambda: request(t, "MOVE", headers))


# --------------------------------------------------------------------------- streaming GET

class _HTTPReader(RangeReader):
    """Streaming GET of [start, end); a resumed GET carries ``If-Match`` with the first
    answer's strong ETag, so a changed object fails (412) instead of mixing versions."""

    exact_end = True

    def __init__(self, url: str, opts: Mapping[str, Any] | None, start: int, end: int | None):
        self._t = target(url, opts)
        self._etag: str | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._resp: http.client.HTTPResponse | None = None
        super().__init__(url, start, end, retry_policy(opts))

    def _open(self) -> bool:
        headers = dict(self._t.headers)
        if self._pos > 0 or self._end is not None:
            last = "" if self._end is None else str(self._end - 1)
            headers["Range"] = f"bytes={self._pos}-{last}"
        if self._etag:
            headers["If-Match"] = self._etag
        conn = new_connection(self._t)
        try:
            conn.connect()
            socket_buffer(conn, socket.SO_RCVBUF)
            conn.request("GET", self._t.path, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise connection_fault(self._t.url, f"GET failed: {describe(exc)}", exc) from None
        if resp.status == 416:  # range starts at or past the end: nothing to read
            conn.close()
            return False
        if resp.status == 412:
            conn.close()
            raise StorageError(self.name, "object changed while it was being read", 412)
        if resp.status >= 300:
            conn.close()
            raise status_error(self._t, "GET", resp.status, resp.reason)
        self._conn, self._resp = conn, resp
        if resp.status == 200 and self._pos > 0:
            self._skip(resp, self._pos)  # the server ignored Range
        etag = resp.getheader("ETag")
        if self._etag is None and etag and not etag.startswith("W/"):
            self._etag = etag  # strong ETags only: If-Match never matches a weak one
        length = resp.getheader("Content-Length")
        if length is not None and "Content-Encoding" not in resp.headers:
            known_end = self._pos + int(length)
            self._end = known_end if self._end is None else min(self._end, known_end)
        return True

    @staticmethod
    def _skip(resp: http.client.HTTPResponse, count: int) -> None:
        while count > 0:
            try:
                got = resp.read(min(count, CHUNK))
            except (OSError, http.client.HTTPException) as exc:
                raise Transient(f"GET failed: {describe(exc)}") from None  # mid-body
            if not got:
                raise Transient("short body while skipping to the resume offset")
            count -= len(got)

    def _read(self, view: memoryview) -> int:
        try:
            return self._resp.readinto(view)  # type: ignore[union-attr]
        except (OSError, http.client.HTTPException) as exc:
            raise Transient(describe(exc)) from None

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = self._resp = None


# --------------------------------------------------------------------------- streaming PUT

class HTTPWriter(Writer):
    """Streaming chunked PUT.

    ``put_mode="direct"`` (default) PUTs straight to the final URL: nginx's dav module
    spools the body to ``client_body_temp_path`` and renames it into place only when
    the body is complete, so the object never shows partially and a dropped upload
    leaves nothing.  ``put_mode="move"`` PUTs to ``<name>.tmp-<uuid>`` and WebDAV-MOVEs
    it onto the final name on commit, for servers that write PUT bodies in place.
    The body is streamed and kept in a spool (:class:`~htools.storage.writer.Writer`): a
    reset, a timeout or a 5xx mid-body or at the commit sends it again as a new PUT.
    """

    replayable = True

    def __init__(self, url: str, opts: Mapping[str, Any] | None = None):
        super().__init__(url, retry_policy(opts))
        self._opts = opts or {}
        self._mode = str(self._opts.get("put_mode", "direct"))
        if self._mode not in ("direct", "move"):
            raise StorageError(self.name, f"unknown http put_mode {self._mode!r}")
        self._restart()

    def _restart(self) -> None:
        """A new PUT (to a new temporary name in move mode)."""
        if self._mode == "move":
            parts = urlsplit(self.url)
            self._tmp_url = urlunsplit(parts._replace(path=f"{parts.path}.tmp-{uuid.uuid4().hex}"))
        else:
            self._tmp_url = self.url
        self._t: Target = target(self._tmp_url, self._opts)
        self._buf = bytearray()
        self._conn = self._start()

    def _start(self) -> http.client.HTTPConnection:
        t = self._t
        conn = new_connection(t)
        try:
            conn.connect()
            socket_buffer(conn, socket.SO_SNDBUF)
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
        except (StorageError, Transient):
            conn.close()
            self.closed = True  # nothing to abort: no body byte was sent
            raise
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self.closed = True
            raise connection_fault(self.url, f"PUT failed: {describe(exc)}", exc) from None
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
        raise status_error(self._t, "PUT", resp.status, resp.reason)

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
            self._fail(f"upload failed after {self._pos} bytes: {describe(exc)}")

    def _fail(self, why: str) -> None:
        status = None
        try:  # the server may have answered (e.g. 401, 413, 507) before hanging up
            self._conn.sock.settimeout(2)
            resp = self._conn.getresponse()
            status, why = resp.status, f"{why}; server answered {resp.status} {resp.reason}"
        except Exception:  # noqa: BLE001 - no answer to report
            pass
        if status == 404:
            raise NotFound(self.name, why, status)
        if status is None or status in TRANSIENT_STATUS:
            # no answer (a dropped connection) or a 5xx/429: the spool sends it again
            raise Transient(why, status)
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
            raise Transient(f"upload failed at commit: {describe(exc)}") from None
        finally:
            self._conn.close()
        if resp.status >= 300:  # a Transient (5xx, 429) is sent again from the spool
            raise status_error(target(self.url, self._opts), "PUT", resp.status, resp.reason)
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
            try:  # one attempt, best effort: the body never completed
                HTTPBackend().delete(self._tmp_url, self._opts, missing_ok=True)
            except Exception:  # noqa: BLE001
                pass
