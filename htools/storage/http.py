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
from htools.storage.httpread import HTTPReader, range_total
from htools.storage.writer import Writer

CONTINUE_WAIT = 1.0        # seconds to wait for "100 Continue" before sending anyway


class HTTPBackend(Backend):
    """``http://`` and ``https://`` URLs."""

    def open_range(self, url: str, start: int, end: int | None,
                   opts: Mapping[str, Any]) -> BinaryIO:
        return buffered(HTTPReader(url, opts, start, end))

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
            total = range_total(answer.get("Content-Range"))
            if total is None:
                raise SizeUnknown(hide_credentials(url), "the server tells no length (no "
                                  "Content-Length, no Content-Range); it is read as a stream")
            return total
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

    def remove_partials(self, urls: list[str], opts: Mapping[str, Any]) -> int:
        """In ``put_mode="move"``, delete the ``NAME.tmp-<uuid>`` objects of ``urls``
        that killed writers (or aborts whose DELETE failed) left; one listing a folder,
        best effort.  Direct PUTs leave nothing."""
        if str(opts.get("put_mode", "direct")) != "move":
            return 0
        by_folder: dict[str, set[str]] = {}
        for url in urls:
            folder, _, name = url.rpartition("/")
            by_folder.setdefault(folder, set()).add(name)
        removed = 0
        for folder, names in by_folder.items():
            try:
                entries = self.listdir(folder, opts)
            except StorageError:
                continue
            for entry in entries:
                tmp = TMP_NAME.fullmatch(entry.rpartition("/")[2])
                if tmp is None or tmp.group(1) not in names:
                    continue
                try:
                    self.delete(entry, opts, missing_ok=True)
                    removed += 1
                except StorageError:
                    pass
        return removed

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


TMP_NAME = re.compile(r"(.+)\.tmp-[0-9a-f]{32}")  # put_mode="move"'s temporary names


def move(src: str, dst: str, opts: Mapping[str, Any] | None = None,
         size: int | None = None) -> None:
    """WebDAV MOVE ``src`` onto ``dst`` (overwriting), retried like everything else.

    A MOVE whose answer was lost may have been carried out: a retry that then finds no
    ``src`` (404) looks at ``dst``, and is done when it is there with ``size`` bytes;
    otherwise the failure is transient (the whole body is sent again), never a
    permanent error about a temporary name."""
    t = target(src, opts)
    headers = {"Destination": target(dst, opts).absolute(), "Overwrite": "T"}
    tried = [False]

    def attempt() -> None:
        retry, tried[0] = tried[0], True
        status, _, _ = request(t, "MOVE", headers, ok=lambda s: s < 300 or (retry and s == 404))
        if status == 404 and not _moved(dst, opts, size):
            raise StorageError(hide_credentials(src), "MOVE answered 404 on a retry and "
                               f"{hide_credentials(dst)} is not the uploaded object",
                               404, transient=True)

    with_retries(src, retry_policy(opts), attempt)


def _moved(dst: str, opts: Mapping[str, Any] | None, size: int | None) -> bool:
    """Whether ``dst`` exists with ``size`` bytes (any size when None)."""
    status, headers = HTTPBackend().head(dst, opts or {})
    length = headers.get("Content-Length")
    return status < 300 and (size is None or length is None or int(length) == size)


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
            try:
                move(self._tmp_url, self.url, self._opts, size=self._pos)
            except StorageError as exc:
                if exc.status == 404 and exc.transient:  # a lost MOVE: the body goes again
                    raise Transient(exc.why, 404) from None
                raise

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
