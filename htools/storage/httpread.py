"""Streaming HTTP GET of a byte range (:class:`HTTPReader`, for
:class:`htools.storage.http.HTTPBackend`): resumed at the offset reached when a
connection drops or a body comes back short, and only from the same object."""

from __future__ import annotations

import http.client
import re
import socket
from collections.abc import Mapping
from typing import Any

from htools.errors import StorageError
from htools.storage.base import CHUNK, RangeReader, Transient, connection_fault, retry_policy
from htools.storage.httpconn import describe, new_connection, socket_buffer, status_error, target


class HTTPReader(RangeReader):
    """Streaming GET of [start, end).  A resumed GET must be of the object the first
    answer came from: it carries ``If-Match`` with that answer's strong ETag, or, without
    one, ``If-Unmodified-Since`` with its ``Last-Modified``, and its answer must tell the
    same total length and start where the read stopped; otherwise the read fails (412,
    "object changed") instead of mixing two versions or ending early without an error."""

    exact_end = True

    def __init__(self, url: str, opts: Mapping[str, Any] | None, start: int, end: int | None):
        self._t = target(url, opts)
        self._etag: str | None = None
        self._modified: str | None = None
        self._total: int | None = None  # the object's length, as the first answer told it
        self._tags: tuple[str | None, str | None] = (None, None)  # its ETag, Last-Modified
        self._opened = False
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
        elif self._modified:
            headers["If-Unmodified-Since"] = self._modified
        conn = new_connection(self._t)
        try:
            conn.connect()
            socket_buffer(conn, socket.SO_RCVBUF)
            conn.request("GET", self._t.path, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise connection_fault(self._t.url, f"GET failed: {describe(exc)}", exc) from None
        if resp.status == 412 or (resp.status < 300 or resp.status == 416) \
                and not self._same_object(resp):
            conn.close()
            raise StorageError(self.name, "object changed while it was being read", 412)
        if resp.status == 416:  # range starts at or past the end: nothing to read
            conn.close()
            return False
        if resp.status >= 300:
            conn.close()
            raise status_error(self._t, "GET", resp.status, resp.reason)
        self._conn, self._resp = conn, resp
        if resp.status == 200 and self._pos > 0:
            self._skip(resp, self._pos)  # the server ignored Range
        length = resp.getheader("Content-Length")
        if length is not None and "Content-Encoding" not in resp.headers:
            # a 200 (Range ignored) tells the whole object's length, a 206 the range's
            known_end = int(length) if resp.status == 200 else self._pos + int(length)
            self._end = known_end if self._end is None else min(self._end, known_end)
        return True

    def _same_object(self, resp: http.client.HTTPResponse) -> bool:
        """Whether a 2xx or 416 answer is of the object the first answer came from, and
        a 206 starts where the read stopped (the first answer: noted, and True)."""
        total = _total_length(resp)
        tags = (resp.getheader("ETag"), resp.getheader("Last-Modified"))
        if not self._opened:
            self._opened = True
            etag = tags[0]
            if etag and not etag.startswith("W/"):
                self._etag = etag  # strong ETags only: If-Match never matches a weak one
            self._modified = tags[1]
            self._tags, self._total = tags, total
            return True
        if any(first and now and now != first for first, now in zip(self._tags, tags)):
            return False  # a server that ignores If-Match / If-Unmodified-Since
        if resp.status == 206:
            start = re.match(r"bytes (\d+)-", resp.getheader("Content-Range") or "")
            if start is None or int(start.group(1)) != self._pos:
                return False
        if resp.status == 416 and self._end is not None and self._pos < self._end:
            return False  # the object now ends before the bytes the first answer promised
        return total is None or self._total is None or total == self._total

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


def _total_length(resp: http.client.HTTPResponse) -> int | None:
    """The whole object's length an answer tells: ``Content-Range``'s ``/N`` (206, 416),
    or a 200's ``Content-Length`` (not when the body is encoded)."""
    if resp.status == 200:
        length = resp.getheader("Content-Length")
        return int(length) if length and "Content-Encoding" not in resp.headers else None
    return range_total(resp.getheader("Content-Range"))


def range_total(content_range: str | None) -> int | None:
    """``N`` of a ``Content-Range: bytes A-B/N`` (or ``bytes */N``) header."""
    total = re.match(r"bytes (?:\d+-\d+|\*)/(\d+)", content_range or "")
    return int(total.group(1)) if total else None
