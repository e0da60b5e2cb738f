"""Servers that do not tell an object's length on HEAD (some servers and proxies omit
Content-Length there): the input is read as a stream, not refused.  Two servers: one that
answers a 1-byte Range with Content-Range (the length comes from there), one that ignores
Range and sends close-delimited bodies (the length is never known).  Also: an output or
input whose port has nothing listening fails at the pre-flight check in seconds."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import make_shards, read_wds, run

from htools import storage
from htools.errors import SizeUnknown


class _NoLengthHandler(http.server.SimpleHTTPRequestHandler):
    ranges = True

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        path = Path(self.translate_path(self.path))
        self.send_response(200 if path.is_file() else 404)
        self.send_header("Connection", "close")
        self.end_headers()  # no Content-Length

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng and self.ranges:
            start, _, end = rng.split("=")[1].partition("-")
            start, end = int(start), min(int(end or len(data) - 1), len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            self.wfile.write(data[start:end + 1])
            return
        self.send_response(200)  # a close-delimited body: no Content-Length either
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True


@pytest.fixture(params=["content-range", "no-length-at-all"])
def no_length_server(request, tmp_path) -> Iterator[tuple[str, Path, bool]]:
    root = tmp_path / "served"
    root.mkdir()
    handler = type("H", (_NoLengthHandler,), {"ranges": request.param == "content-range"})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root)))
    server.protocol_version = "HTTP/1.0"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, handler.ranges
    finally:
        server.shutdown()
        server.server_close()


def test_size_from_content_range_or_unknown(no_length_server):
    url, root, ranges = no_length_server
    (root / "x.bin").write_bytes(b"0123456789")
    if ranges:
        assert storage.size(f"{url}/x.bin") == 10
    else:
        with pytest.raises(SizeUnknown, match="read as a stream"):
            storage.size(f"{url}/x.bin")
    with storage.open_read(f"{url}/x.bin") as f:
        assert f.read() == b"0123456789"


def test_htmapper_reads_inputs_whose_length_is_not_told(no_length_server, tmp_path):
    url, root, _ = no_length_server
    data = make_shards(root, shards=2, per_shard=5)
    script = tmp_path / "id.py"
    script.write_text("def process_sample(s):\n    return s\n")
    p = run("htmapper", "-p", script, f"{url}/data-@2.tar", tmp_path / "out" / "o-@2.tar",
            "--workers", "1")
    assert p.returncode == 0, p.stderr
    got = read_wds(sorted((tmp_path / "out").glob("o-*.tar")))
    assert {s["__key__"]: s for s in got} == data


@pytest.mark.parametrize("tool,args", [
    ("htmapper", ["-p", "SCRIPT", "IN", "http://127.0.0.1:PORT/o-@2.tar"]),
    ("htmapper", ["-p", "SCRIPT", "http://127.0.0.1:PORT/in-@2.tar", "OUT"]),
    ("htsort", ["IN", "http://127.0.0.1:PORT/o-@2.tar", "--dry-run"]),
    ("htshuffle", ["IN", "http://127.0.0.1:PORT/o-@2.tar"]),
])
def test_nothing_listening_fails_in_seconds(tmp_path, tool, args):
    from fixtures.servers import free_port

    make_shards(tmp_path / "in", shards=2, per_shard=3)
    script = tmp_path / "id.py"
    script.write_text("def process_sample(s):\n    return s\n")
    port = str(free_port())
    args = [a.replace("SCRIPT", str(script)).replace("IN", str(tmp_path / "in" / "data-@2.tar"))
            .replace("OUT", str(tmp_path / "o-@2.tar")).replace("PORT", port) for a in args]
    t0 = time.monotonic()
    p = run(tool, *args)
    took = time.monotonic() - t0
    assert p.returncode != 0
    assert f"nothing listens at 127.0.0.1:{port} (connection refused)" in p.stderr
    assert took < 8, took  # was 13-16 s of retries
