"""HTTP servers that the reader and writer must not trust blindly: a resumed read of an
object replaced or shortened meanwhile (no ETag, a weak one), a server that ignores
Range, an untrusted TLS certificate, a WebDAV MOVE whose answer is lost, and the
temporary objects of put_mode="move" that killed writers leave."""

from __future__ import annotations

import datetime
import http.server
import random
import ssl
import threading
import time
from collections.abc import Iterator

import pytest

from htools import storage
from htools.errors import StorageError


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTOOLS_RETRIES", "3")
    monkeypatch.setenv("HTOOLS_RETRY_BACKOFF", "0.01")
    monkeypatch.delenv("HTOOLS_STORAGE_OPTIONS", raising=False)


def _url(server, path: str = "/blob") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


@pytest.mark.parametrize("etag", [None, 'W/"weak"', '"strong"'])
@pytest.mark.parametrize("shorter", [False, True])
def test_a_resumed_read_of_a_replaced_object_fails_instead_of_mixing(faulty_server, etag,
                                                                     shorter):
    """The connection drops halfway and the object is replaced before the read resumes:
    the read fails, naming the change, whatever validator the server gives (before: with
    no ETag or a weak one, the bytes of two versions came back as one object, or a
    shorter new version ended the read early without an error)."""
    s = faulty_server
    s.etag = etag
    s.replacement = bytes(len(s.blob) // (4 if shorter else 1))
    s.faults = ["replace"]
    with pytest.raises(StorageError, match="object changed while it was being read") as info:
        storage.open_read(_url(s)).read()
    assert info.value.status == 412


def test_a_resumed_read_of_the_same_object_still_resumes(faulty_server):
    s = faulty_server
    s.etag = None
    s.faults = ["drop", "drop"]
    assert storage.open_read(_url(s)).read() == s.blob
    assert len(s.requests) == 3


def test_an_open_ended_range_on_a_server_that_ignores_range(faulty_server):
    """A server that answers 200 with the whole object to a Range request: the reader
    skips to the offset; the object's end is its Content-Length, not offset + length
    (before: every open-ended range past offset 0 failed as "body ended short",
    retried, as htupload's re-sharding of tar inputs reads)."""
    s = faulty_server
    s.ranges = False
    with storage.open_range(_url(s), 1000, None) as f:
        assert f.read() == s.blob[1000:]
    with storage.open_range(_url(s), 1000, 5000) as f:
        assert f.read() == s.blob[1000:5000]


def _self_signed(tmp_path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


@pytest.fixture
def tls_server(tmp_path) -> Iterator[str]:
    """An HTTPS server of ``tmp_path/served`` with a self-signed certificate."""
    root = tmp_path / "served"
    root.mkdir()
    (root / "x.bin").write_bytes(b"secret bytes")
    handler = type("H", (http.server.SimpleHTTPRequestHandler,),
                   {"log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*_self_signed(tmp_path))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_untrusted_certificate_is_permanent_and_says_how_to_proceed(tls_server,
                                                                     monkeypatch):
    """A certificate does not change with retries: each operation fails at once, not
    after a minute of backoff, and the shard is not retried (transient False)."""
    monkeypatch.setenv("HTOOLS_RETRY_BACKOFF", "2")
    for op in (lambda: storage.size(f"{tls_server}/x.bin"),
               lambda: storage.open_read(f"{tls_server}/x.bin").read(),
               lambda: storage.open_write(f"{tls_server}/y.bin")):
        start = time.monotonic()
        with pytest.raises(StorageError, match="certificate is not trusted.*http.verify") as info:
            op()
        assert info.value.transient is False and time.monotonic() - start < 1.5
    opts = {"http": {"verify": False}}
    assert storage.open_read(f"{tls_server}/x.bin", opts).read() == b"secret bytes"


def test_a_move_whose_answer_was_lost_is_a_commit(faulty_server):
    """put_mode="move": the server carries out the MOVE but its answer never arrives;
    the retry finds no temporary object (404), sees the output complete, and the commit
    succeeds (before: a permanent error naming the temporary name, and --overwrite then
    deleted the good output)."""
    s = faulty_server
    data = random.Random(3).randbytes(5000)
    s.faults = ["ok", "lost"]  # the PUT, then the MOVE
    with storage.open_write(_url(s, "/out.tar"), {"http": {"put_mode": "move"}}) as w:
        w.write(data)
    assert s.objects == {"/out.tar": data}
    assert s.requests == ["PUT", "MOVE", "MOVE", "HEAD"]


def test_a_lost_move_with_no_output_sends_the_body_again(faulty_server):
    """The retried MOVE finds no temporary object and no output of the body's size (the
    output was deleted at once): the body is sent again as a new PUT and MOVE, and the
    output is the body (before: a permanent error naming the temporary name)."""
    s = faulty_server
    data = random.Random(4).randbytes(3000)
    s.faults = ["ok", "vanish"]
    with storage.open_write(_url(s, "/out.tar"), {"http": {"put_mode": "move"}}) as w:
        w.write(data)
    assert s.objects == {"/out.tar": data}
    assert s.requests == ["PUT", "MOVE", "MOVE", "HEAD", "PUT", "MOVE"]


def test_remove_partials_deletes_move_modes_temporary_objects(nginx_server):
    """What a killed put_mode="move" writer leaves (``NAME.tmp-<uuid>``) is deleted after
    the job, and nothing else (another output's, a name that only looks alike)."""
    opts = {"http": {"put_mode": "move"}}
    base = f"{nginx_server.url}/partials"
    left = [f"{base}/a.tar.tmp-{'0' * 32}", f"{base}/a.tar.tmp-{'f' * 32}"]
    kept = [f"{base}/b.tar.tmp-{'1' * 32}", f"{base}/a.tar.tmp-old", f"{base}/a.tar"]
    for url in left + kept:
        with storage.open_write(url) as w:
            w.write(b"partial")
    assert storage.remove_partials([f"{base}/a.tar"], opts) == 2
    assert storage.listdir(base) == sorted(kept)
    assert storage.remove_partials([f"{base}/b.tar"]) == 0  # direct PUTs leave nothing
