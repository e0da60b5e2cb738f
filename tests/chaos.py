"""A fault-injecting HTTP proxy for the chaos tests (tests/test_chaos.py).

:class:`ChaosProxy` listens on 127.0.0.1 and a free port and forwards every request
(GET, HEAD, PUT, DELETE, MOVE, MKCOL, ...) to an upstream HTTP server — the tests'
nginx — one upstream connection per request, with the request body read whole first
(chunked or Content-Length; ``Expect: 100-continue`` is answered at once, as nginx
does).  Answers go back with a Content-Length and keep-alive, so the proxy is
transparent unless a fault is set with :meth:`ChaosProxy.inject`:

* ``"503"``   — every k-th GET, every k-th HEAD and every k-th PUT (one counter per
  method) is answered ``503 Service Unavailable`` instead of being forwarded; a PUT's
  whole body is read first, so the upload's commit is what fails.
* ``"reset"`` — every k-th GET that has a body: the headers and half the body, then a
  TCP reset (SO_LINGER 0).
* ``"short"`` — every k-th GET that has a body: the headers (with the full
  Content-Length) and half the body, then a clean close: a truncated body.
* ``"slow"``  — every request is answered ``delay`` seconds late, and every k-th one
  ``long_delay`` seconds late (after it was forwarded: a slow server that did the work
  but answers after the client's timeout).

``stats`` counts requests per method and faults injected.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "expect", "content-length"}
KINDS = ("503", "reset", "short", "slow")
#: the methods each fault hits (and counts for its "every k-th")
APPLIES = {"503": {"GET", "HEAD", "PUT"}, "reset": {"GET"}, "short": {"GET"},
           "slow": {"GET", "HEAD", "PUT", "DELETE", "MOVE", "MKCOL"}}


@dataclass
class Fault:
    kind: str | None = None     # one of KINDS, None: a transparent proxy
    every: int = 4              # the k of "every k-th request"
    delay: float = 0.0          # "slow": added to every answer
    long_delay: float = 0.0     # "slow": added to every k-th answer
    limits: dict | None = None  # method -> at most this many faults of that method


class ChaosProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.fault = Fault()
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._per_method: Counter[str] = Counter()
        self.log: list[tuple[str, str, str]] = []  # (fault, method, path) of each fault
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> ChaosProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def inject(self, kind: str | None, every: int = 4, delay: float = 0.0,
               long_delay: float = 0.0, limits: dict | None = None) -> None:
        """Set the fault (None: none) and reset the counters.  ``limits``: method -> the
        most faults of that method (e.g. ``{"PUT": 2}``: no more PUT faults than a
        shard's ``--retries``, so no shard can meet more than it may retry)."""
        assert kind is None or kind in KINDS, kind
        with self._lock:
            self.fault = Fault(kind, every, delay, long_delay, limits)
            self.stats.clear()
            self._per_method.clear()
            self.log = []

    def _kth(self, method: str, path: str) -> bool:
        """Count a request; whether the fault hits it (then it is logged as injected)."""
        with self._lock:
            self.stats[method] += 1
            f = self.fault
            if f.kind is None or method not in APPLIES[f.kind]:
                return False
            self._per_method[method] += 1
            if self._per_method[method] % f.every:
                return False
            limit = (f.limits or {}).get(method)
            if limit is not None and self.stats[f"injected {method}"] >= limit:
                return False
            self.stats["injected"] += 1
            self.stats[f"injected {method}"] += 1
            self.log.append((f.kind, method, path))
            return True


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up (they do: their uploads get aborted) are no news


class _Handler(BaseHTTPRequestHandler):
    owner: ChaosProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:
        pass

    # every method the tools use (and a few more) goes the same way
    def do_GET(self) -> None:
        self._proxy()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_MOVE = do_COPY = do_MKCOL = do_OPTIONS = \
        do_PROPFIND = do_GET

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                line = self.rfile.readline(1 << 16)
                if not line:
                    raise ConnectionError("request body cut short")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1 << 16) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                data = self.rfile.read(size)
                if len(data) < size:
                    raise ConnectionError("request body cut short")
                parts.append(data)
                self.rfile.readline(1 << 16)  # the CRLF after the chunk
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        if len(data) < length:
            raise ConnectionError("request body cut short")
        return data

    def _proxy(self) -> None:
        owner, fault, method = self.owner, self.owner.fault, self.command
        kth = owner._kth(method, self.path)
        try:
            body = self._body()
        except (OSError, ValueError):
            self.close_connection = True  # the client gave up mid-upload: nothing to forward
            return
        if kth and fault.kind == "503" and method in ("GET", "HEAD", "PUT"):
            payload = b"chaos: 503\n" if method != "HEAD" else b""
            self.send_response(503, "Service Unavailable")
            self.send_header("Content-Length", "11")
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(payload)
            return
        status, reason, headers, data = self._forward(method, body)
        if fault.kind == "slow":
            time.sleep(fault.long_delay if kth else fault.delay)
        cut = kth and fault.kind in ("reset", "short") and method == "GET" and len(data) >= 2
        self.send_response(status, reason)
        for key, value in headers:
            self.send_header(key, value)
        if method == "HEAD" or status in (204, 304) or status < 200:
            length = self._upstream_length
            if length is not None and method == "HEAD":
                self.send_header("Content-Length", length)
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not cut:
            self.wfile.write(data)
            return
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True
        sock = self.connection
        if fault.kind == "reset":
            time.sleep(0.02)  # let the client read some of it first
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST
        else:
            sock.shutdown(socket.SHUT_WR)  # FIN: the body just ends early

    def _forward(self, method: str, body: bytes):
        """The request to the upstream server; its answer read whole.  The upstream down
        (nginx restarting) is a 502, as a real proxy would answer."""
        conn = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
        self._upstream_length = None
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or method in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(method, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self._upstream_length = resp.getheader("Content-Length")
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP
                   and k.lower() not in ("date", "server")]
            return resp.status, resp.reason, out, data
        except (OSError, http.client.HTTPException) as exc:
            msg = f"chaos: upstream: {exc}\n".encode()
            return 502, "Bad Gateway", [("Content-Type", "text/plain")], msg
        finally:
            conn.close()
