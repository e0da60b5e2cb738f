"""htools.storage against every backend (local files, nginx, moto S3, GCS emulator),
plus pipe:/-, the registry, retries of transient faults (one policy for every protocol,
real faults injected over HTTP and S3), 4xx and unreachable servers."""

from __future__ import annotations

import errno
import json
import multiprocessing
import pickle
import random
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from htools import storage
from htools.errors import NotFound, PatternError, StorageError, hide_credentials
from htools.storage import objectfaults, registry
from htools.storage.base import Transient


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTOOLS_RETRIES", "3")
    monkeypatch.setenv("HTOOLS_RETRY_BACKOFF", "0.01")
    monkeypatch.delenv("HTOOLS_STORAGE_OPTIONS", raising=False)


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def put(url: str, data: bytes, options=None) -> None:
    with storage.open_write(url, options) as w:
        w.write(data)


def listing_or_empty(url: str, options=None) -> list[str]:
    try:
        return storage.listdir(url, options)
    except NotFound:
        return []


# --------------------------------------------------------------------------- every backend

def test_round_trip_streamed(storage_backend):
    b = storage_backend
    data = payload((5 << 20) + 12345)
    url = b.url("deep/dir/shard-000000.tar")
    with storage.open_write(url, b.options) as w:
        for i in range(0, len(data), 300_001):
            assert w.write(data[i:i + 300_001]) == len(data[i:i + 300_001])
        assert w.tell() == len(data)
    assert storage.exists(url, b.options)
    assert storage.size(url, b.options) == len(data)
    got = bytearray()
    with storage.open_read(url, b.options) as f:
        while chunk := f.read(1 << 18):
            got += chunk
    assert got == data
    buf = bytearray(1000)
    with storage.open_read(url, b.options) as f:
        assert f.readinto(buf) == 1000
    assert buf == data[:1000]


def test_abort_leaves_nothing_and_nothing_visible_while_writing(storage_backend):
    b = storage_backend
    url = b.url("atomic.tar")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.open_write(url, b.options) as w:
            w.write(payload(18 << 20))  # more than one S3 part / GCS chunk
            assert not storage.exists(url, b.options)
            raise RuntimeError("boom")
    assert not storage.exists(url, b.options)
    assert listing_or_empty(b.base, b.options) == []


def test_commit_and_abort_methods(storage_backend):
    b = storage_backend
    url = b.url("x.bin")
    w = storage.open_write(url, b.options)
    w.write(b"first")
    assert not storage.exists(url, b.options)
    w.commit()
    assert storage.read_range(url, 0, 100, b.options) == b"first"
    w = storage.open_write(url, b.options)
    w.write(b"second version")
    w.abort()
    assert storage.read_range(url, 0, 100, b.options) == b"first"  # old object untouched
    with pytest.raises(ValueError):
        w.write(b"more")
    put(b.url("empty"), b"", b.options)
    assert storage.size(b.url("empty"), b.options) == 0


def test_object_operations(storage_backend):
    b = storage_backend
    data = payload(100_000, seed=1)
    for name in ("d/x1", "d/x2", "d/sub/y"):
        put(b.url(name), data, b.options)
    x1 = b.url("d/x1")
    assert storage.exists(x1, b.options)
    assert not storage.exists(b.url("d/nope"), b.options)
    assert storage.size(x1, b.options) == len(data)
    assert storage.read_range(x1, 10, 20, b.options) == data[10:20]
    assert storage.read_range(x1, 99_990, 200_000, b.options) == data[99_990:]
    assert storage.read_range(x1, 5, 5, b.options) == b""
    with storage.open_range(x1, 1000, 90_000, b.options) as f:
        assert f.read() == data[1000:90_000]
    with storage.open_range(x1, 50_000, None, b.options) as f:
        assert f.read(10) == data[50_000:50_010]
    assert storage.listdir(b.url("d"), b.options) == [b.url("d/sub"), x1, b.url("d/x2")]
    assert storage.listdir(b.url("d/"), b.options) == [b.url("d/sub"), x1, b.url("d/x2")]
    storage.delete(x1, b.options)
    assert not storage.exists(x1, b.options)
    storage.delete(x1, b.options)  # missing_ok
    with pytest.raises(NotFound):
        storage.delete(x1, b.options, missing_ok=False)
    storage.delete_prefix(b.url("d"), b.options)
    assert not storage.exists(b.url("d/sub/y"), b.options)
    assert not storage.exists(b.url("d/x2"), b.options)
    storage.delete_prefix(b.url("d"), b.options)  # already gone: fine


def test_not_found_names_the_url(storage_backend):
    b = storage_backend
    url = b.url("missing/shard.tar")
    with pytest.raises(NotFound) as info:
        with storage.open_read(url, b.options) as f:
            f.read()
    assert url in str(info.value)
    with pytest.raises(NotFound):
        storage.size(url, b.options)
    with pytest.raises(NotFound):
        storage.read_range(url, 0, 10, b.options)


def _read_all(url: str, options) -> bytes:
    with storage.open_read(url, options) as f:
        return f.read()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_works_in_worker_processes(storage_backend, method):
    b = storage_backend
    data = payload(300_000, seed=2)
    url = b.url("w.bin")
    put(url, data, b.options)  # the parent has a cached filesystem now
    ctx = multiprocessing.get_context(method)
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        got = pool.submit(_read_all, url, pickle.loads(pickle.dumps(b.options))).result(60)
    assert got == data


# --------------------------------------------------------------------------- options, names

def test_protocol_and_join():
    assert storage.protocol("/a/b.tar") == "file"
    assert storage.protocol("file:///a/b.tar") == "file"
    assert storage.protocol("https://h/x") == "http"
    assert storage.protocol("s3://b/k") == "s3"
    assert storage.protocol("gs://b/k") == "gs"
    assert storage.protocol("pipe:cat x") == "pipe"
    assert storage.protocol("-") == "stdio"
    with pytest.raises(StorageError):
        storage.protocol("ftp://h/x")
    assert storage.join("s3://b/p/", "x.tar") == "s3://b/p/x.tar"
    assert storage.join("http://h/p", "x.tar") == "http://h/p/x.tar"
    assert storage.join("/tmp/p", "x.tar") == "/tmp/p/x.tar"


def test_resolve_options_merges_env(monkeypatch):
    monkeypatch.setenv("HTOOLS_STORAGE_OPTIONS",
                       json.dumps({"s3": {"endpoint_url": "http://e", "key": "k"}}))
    got = storage.resolve_options({"s3": {"key": "k2"}, "gcs": {"token": "anon"}})
    assert got == {"s3": {"endpoint_url": "http://e", "key": "k2"}, "gs": {"token": "anon"}}
    assert pickle.loads(pickle.dumps(got)) == got
    monkeypatch.setenv("HTOOLS_STORAGE_OPTIONS", "{not json")
    with pytest.raises(StorageError):
        storage.resolve_options()


def test_hide_credentials_in_urls():
    assert hide_credentials("http://user:s3cret@host:8080/a/b") == "http://host:8080/a/b"
    assert hide_credentials("https://tok@host/a") == "https://host/a"
    assert hide_credentials("s3://bucket/key") == "s3://bucket/key"
    assert hide_credentials("pipe:curl -s http://u:pw@h/x") == "pipe:curl -s http://h/x"


# --------------------------------------------------------------------------- pipe:, -

def test_pipe_round_trip(tmp_path):
    data = payload(3 << 20, seed=3)
    target = tmp_path / "out.bin"
    with storage.open_write(f"pipe:cat > {target}") as w:
        w.write(data)
    assert target.read_bytes() == data
    assert _read_all(f"pipe:cat {target}", None) == data


def test_pipe_failure_names_the_command(tmp_path):
    with pytest.raises(StorageError, match="status 3") as info:
        _read_all("pipe:echo hi; exit 3", None)
    assert "exit 3" in str(info.value)
    with pytest.raises(StorageError, match="status 4"):
        with storage.open_write("pipe:cat > /dev/null; exit 4") as w:
            w.write(b"x")
    with pytest.raises(StorageError):
        storage.exists("pipe:true")


def test_stdin_stdout():
    code = ("from htools import storage\n"
            "data = storage.open_read('-').read()\n"
            "with storage.open_write('-') as w: w.write(data[::-1])\n")
    out = subprocess.run([sys.executable, "-c", code], input=b"abc\x00def", capture_output=True,
                         check=True, timeout=60)
    assert out.stdout == b"fed\x00cba"


# --------------------------------------------------------------------------- HTTP specifics

def test_http_move_mode(nginx_server):
    opts = {"http": {"put_mode": "move"}}
    url = f"{nginx_server.url}/move-mode/a.tar"
    data = payload(3 << 20, seed=4)
    with pytest.raises(RuntimeError):
        with storage.open_write(url, opts) as w:
            w.write(data)
            raise RuntimeError("stop")
    assert listing_or_empty(f"{nginx_server.url}/move-mode") == []
    with storage.open_write(url, opts) as w:
        w.write(data)
        assert listing_or_empty(f"{nginx_server.url}/move-mode") == []
    assert _read_all(url, None) == data
    assert storage.listdir(f"{nginx_server.url}/move-mode") == [url]


def test_http_wrong_auth_is_4xx_not_retried(nginx_auth_server):
    s = nginx_auth_server
    log = s.prefix / "access.log"
    before = log.read_text().count('"PUT ')
    url = f"http://{s.user}:wrong@127.0.0.1:{s.port}/auth/x.tar"
    with pytest.raises(StorageError) as info:
        with storage.open_write(url) as w:
            w.write(b"x" * 1000)
    assert info.value.status == 401
    assert "wrong" not in str(info.value)
    assert "/auth/x.tar" in str(info.value)
    deadline = time.monotonic() + 5  # nginx logs a request when it is finalised
    while log.read_text().count('"PUT ') < before + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    assert log.read_text().count('"PUT ') == before + 1
    # right credentials, from the URL and from options
    put(f"http://{s.user}:{s.password}@127.0.0.1:{s.port}/auth/x.tar", b"ok")
    auth = {"http": {"auth": {"user": s.user, "password": s.password}}}
    put(f"{s.url}/auth/y.tar", b"ok", auth)
    assert _read_all(f"{s.url}/auth/x.tar", None) == b"ok"  # reads need no auth


def test_http_read_resumes_after_drop_and_503(faulty_server):
    s = faulty_server
    s.faults = ["drop", "503", "drop", "ok"]
    url = f"http://127.0.0.1:{s.server_address[1]}/blob"
    assert _read_all(url, None) == s.blob
    assert len(s.requests) == 4
    assert s.requests[0] is None and s.requests[1].startswith("bytes=")
    assert int(s.requests[-1].split("=")[1].split("-")[0]) > len(s.blob) // 2


def test_http_retries_are_bounded(faulty_server):
    s = faulty_server
    s.faults = ["503"] * 50
    url = f"http://127.0.0.1:{s.server_address[1]}/blob"
    with pytest.raises(StorageError) as info:
        _read_all(url, None)
    assert info.value.status == 503
    assert len(s.requests) == 4  # 1 + HTOOLS_RETRIES=3


def test_unreachable_server_names_the_url():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://user:pw@127.0.0.1:{port}/shard.tar"
    for op in (lambda: _read_all(url, None), lambda: storage.exists(url),
               lambda: storage.open_write(url)):
        with pytest.raises(StorageError) as info:
            op()
        text = str(info.value)
        assert f"127.0.0.1:{port}/shard.tar" in text and "pw" not in text
        assert "gave up after 4 attempts" in text


def test_s3_with_its_endpoint_down_fails_in_htools_retries_not_botocores_too():
    """A stopped S3 endpoint: each of htools' attempts is one request (botocore's own 5
    attempts, ~5 s of them each time, had stacked under htools' policy: one ``exists``
    took 46-54 s to fail), and the error names the endpoint; an upload's parts keep
    botocore's retries, and a user's own ``config_kwargs.retries`` wins."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s3 = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s",
          "retries": 2, "backoff": 0.05}
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        storage.exists("s3://bkt/shard.tar", {"s3": s3})
    took = time.monotonic() - t0
    assert f"127.0.0.1:{port}" in str(info.value) and "gave up after 3 attempts" in str(info.value)
    assert took < 5, took  # botocore's retries under each attempt: ~15 s
    backend = registry.backend("s3")
    plain = {k: v for k, v in s3.items() if k not in ("retries", "backoff")}
    assert backend.filesystem(plain).config_kwargs["retries"]["total_max_attempts"] == 1
    assert "retries" not in backend.filesystem(plain, uploads=True).config_kwargs
    own = {**plain, "config_kwargs": {"retries": {"max_attempts": 3}}}
    assert backend.filesystem(own).config_kwargs["retries"]["max_attempts"] == 3
    assert "total_max_attempts" not in backend.filesystem(own).config_kwargs["retries"]


def test_http_aborted_upload_leaves_no_temp_file(nginx_server):
    # What atomic HTTP writes rely on: nginx spools a PUT body under
    # client_body_temp_path and renames it into place only once complete; a dropped
    # upload is discarded, temp file included.
    body_temp = nginx_server.prefix / "body_temp"
    url = f"{nginx_server.url}/dropped/a.tar"
    w = storage.open_write(url)
    w.write(payload(4 << 20, seed=6))
    assert not storage.exists(url)
    w.abort()
    deadline = time.monotonic() + 5
    while any(body_temp.rglob("*")) and any(p.is_file() for p in body_temp.rglob("*")):
        assert time.monotonic() < deadline, list(body_temp.rglob("*"))
        time.sleep(0.02)
    assert not (nginx_server.root / "dropped").exists()


def test_http_credentials_from_netrc(nginx_auth_server, tmp_path, monkeypatch):
    s = nginx_auth_server
    (tmp_path / ".netrc").write_text(f"machine 127.0.0.1 login {s.user} password {s.password}\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    put(f"{s.url}/auth/netrc.tar", b"via netrc")
    assert _read_all(f"{s.url}/auth/netrc.tar", None) == b"via netrc"


def test_file_urls(tmp_path):
    base = f"file://{tmp_path}/fu"
    put(f"{base}/a.bin", b"abc")
    assert storage.exists(f"{base}/a.bin") and storage.size(f"{base}/a.bin") == 3
    assert storage.listdir(base) == [f"{base}/a.bin"]
    assert (tmp_path / "fu" / "a.bin").read_bytes() == b"abc"
    storage.delete_prefix(base)
    assert not (tmp_path / "fu").exists()


def test_http_read_range_retries_short_body(faulty_server):
    s = faulty_server
    s.faults = ["drop", "503"]
    url = f"http://127.0.0.1:{s.server_address[1]}/blob"
    assert storage.read_range(url, 1000, 600_000) == s.blob[1000:600_000]
    assert len(s.requests) == 3 and all(r == "bytes=1000-599999" for r in s.requests)


def test_http_read_4xx_is_not_retried(faulty_server):
    s = faulty_server
    s.faults = ["403"] * 10
    url = f"http://127.0.0.1:{s.server_address[1]}/blob"
    with pytest.raises(StorageError) as info:
        _read_all(url, None)
    assert info.value.status == 403 and "/blob" in str(info.value)
    assert len(s.requests) == 1


def test_http_put_to_a_plain_server_and_5xx_at_commit(faulty_server):
    s = faulty_server
    url = f"http://127.0.0.1:{s.server_address[1]}/up"
    data = payload(3 << 20, seed=7)
    put(url, data)
    assert s.blob == data
    s.faults = ["500"]  # at the commit: the body goes again, as a new PUT
    put(url, b"y" * 10)
    assert s.blob == b"y" * 10 and s.requests.count("PUT") == 3


def test_http_put_replays_the_body_until_the_policy_gives_up(faulty_server, monkeypatch):
    """Every answer a 503: the upload is sent 1 + HTOOLS_RETRIES times as whole new
    requests, then fails naming the count; the object stays as it was."""
    s = faulty_server
    url = f"http://127.0.0.1:{s.server_address[1]}/up"
    before = s.blob
    monkeypatch.setenv("HTOOLS_RETRIES", "3")
    monkeypatch.setenv("HTOOLS_RETRY_BACKOFF", "0.01")
    s.faults = ["503"] * 10
    with pytest.raises(StorageError) as info:
        put(url, payload(100_000, seed=3))
    assert info.value.status == 503 and "gave up after 4 uploads" in str(info.value)
    assert s.requests.count("PUT") == 4 and s.blob == before


@pytest.mark.parametrize("spool_memory", ["0", str(64 << 20)])
def test_http_put_replay_sends_the_same_bytes_from_memory_or_a_spool_file(
        faulty_server, monkeypatch, tmp_path, spool_memory):
    """A body larger than the in-memory bound is replayed from an unlinked file under
    HTOOLS_SPOOL_DIR (nothing is left there); a smaller one from memory."""
    s = faulty_server
    url = f"http://127.0.0.1:{s.server_address[1]}/up"
    monkeypatch.setenv("HTOOLS_SPOOL_MEMORY", spool_memory)
    monkeypatch.setenv("HTOOLS_SPOOL_DIR", str(tmp_path))
    monkeypatch.setenv("HTOOLS_RETRY_BACKOFF", "0.01")
    data = payload(5 << 20, seed=11)
    s.faults = ["503", "502"]
    with storage.open_write(url) as w:
        for i in range(0, len(data), 300_000):
            w.write(data[i:i + 300_000])
    assert s.blob == data and s.requests.count("PUT") == 3 and w.replays == 2
    assert list(tmp_path.iterdir()) == []


def test_s3_commit_fault_is_replayed_as_a_new_upload(faulty_s3, s3_server, monkeypatch):
    """A 503 at the S3 upload (botocore's own retries off): the body goes again as a new
    upload, and the object is whole."""
    proxy, options = faulty_s3
    monkeypatch.setenv("HTOOLS_RETRY_BACKOFF", "0.01")
    url = f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:12]}/replayed"
    data = payload(300_000, seed=12)
    proxy.faults = ["503"]
    with storage.open_write(url, options) as w:
        w.write(data)
    assert w.replays == 1 and not proxy.faults
    assert _read_all(url, s3_server.options) == data


# --------------------------------------------------------------------------- registry

@pytest.mark.parametrize("url, proto, backend", [
    ("/a/b.tar", "file", "LocalBackend"),
    ("rel/b.tar", "file", "LocalBackend"),
    ("file:///a/b.tar", "file", "LocalBackend"),
    ("http://h/x", "http", "HTTPBackend"),
    ("HTTPS://h/x", "http", "HTTPBackend"),
    ("s3://b/k", "s3", "S3Backend"),
    ("s3a://b/k", "s3", "S3Backend"),
    ("gs://b/k", "gs", "GCSBackend"),
    ("gcs://b/k", "gs", "GCSBackend"),
    ("pipe:cat x", "pipe", "PipeBackend"),
    ("-", "stdio", "StdioBackend"),
])
def test_registry_picks_each_backend(url, proto, backend):
    assert storage.protocol(url) == proto
    found = registry.backend_for(url)
    assert type(found).__name__ == backend
    assert registry.backend_for(url) is found  # one instance per protocol


def test_unknown_scheme_is_a_clear_storage_error():
    url = "ftp://user:pw@h/x.tar"
    for op in (lambda: storage.protocol(url), lambda: storage.exists(url),
               lambda: storage.open_read(url), lambda: storage.open_write(url),
               lambda: storage.delete(url)):
        with pytest.raises(StorageError) as info:
            op()
        text = str(info.value)
        assert "unsupported URL scheme 'ftp'" in text and "s3" in text and "http" in text
        assert "pw" not in text and "ftp://h/x.tar" in text


def test_missing_optional_package_says_what_to_pip_install(monkeypatch):
    monkeypatch.setattr(registry, "_backends", {})
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs -> ImportError
    with pytest.raises(StorageError, match=r"pip install s3fs") as info:
        storage.exists("s3://bucket/key")
    assert "s3://bucket/key" in str(info.value)


# --------------------------------------------------------------------------- retries, every protocol

def _flaky(monkeypatch, proto: str, failures: int) -> list[int]:
    """Make the ``proto`` backend's exists() fail ``failures`` times with Transient."""
    calls: list[int] = []
    found = registry.backend(proto)

    def exists(url, opts):
        calls.append(1)
        if len(calls) <= failures:
            raise Transient("injected 503", 503)
        return True

    monkeypatch.setattr(found, "exists", exists)
    return calls


ALL_PROTOCOLS = ["file", "http", "s3", "gs", "pipe", "stdio"]
URLS = {"file": "/x/y", "http": "http://h/y", "s3": "s3://b/y", "gs": "gs://b/y",
        "pipe": "pipe:cat", "stdio": "-"}


@pytest.mark.parametrize("proto", ALL_PROTOCOLS)
def test_one_retry_wrapper_for_every_protocol(monkeypatch, proto):
    calls = _flaky(monkeypatch, proto, failures=2)
    assert storage.exists(URLS[proto]) is True
    assert len(calls) == 3
    calls = _flaky(monkeypatch, proto, failures=10)
    with pytest.raises(StorageError) as info:
        storage.exists(URLS[proto])
    assert len(calls) == 4 and info.value.status == 503  # 1 + HTOOLS_RETRIES=3
    assert "gave up after 4 attempts" in str(info.value)


@pytest.mark.parametrize("proto", ALL_PROTOCOLS)
def test_htools_retries_0_turns_retrying_off_everywhere(monkeypatch, proto):
    monkeypatch.setenv("HTOOLS_RETRIES", "0")
    calls = _flaky(monkeypatch, proto, failures=1)
    with pytest.raises(StorageError, match="gave up after 1 attempt"):
        storage.exists(URLS[proto])
    assert len(calls) == 1
    # a protocol's own options win over the environment
    calls = _flaky(monkeypatch, proto, failures=1)
    assert storage.exists(URLS[proto], {proto: {"retries": 1}}) is True
    assert len(calls) == 2


@dataclass
class FaultTarget:
    """A blob behind a server that answers ``server.faults`` ("503", "403", "ok", ...)
    to the next requests, in order, and logs every request in ``server.requests``."""

    url: str
    options: dict | None
    data: bytes
    server: Any


@pytest.fixture(params=["http", "s3"])
def fault_target(request, faulty_server) -> FaultTarget:
    if request.param == "http":
        s = faulty_server
        return FaultTarget(f"http://127.0.0.1:{s.server_address[1]}/blob", None, s.blob, s)
    proxy, options = request.getfixturevalue("faulty_s3")
    s3 = request.getfixturevalue("s3_server")
    data = payload(300_000, seed=8)
    url = f"s3://{s3.bucket}/{uuid.uuid4().hex[:12]}/blob"
    put(url, data, s3.options)
    return FaultTarget(url, options, data, proxy)


def test_503_twice_then_ok_is_retried_on_http_and_s3(fault_target):
    t = fault_target
    t.server.faults = ["503", "503"]
    assert storage.read_range(t.url, 1000, 200_000, t.options) == t.data[1000:200_000]
    assert not t.server.faults and len(t.server.requests) >= 3
    t.server.faults = ["503", "503"]
    assert _read_all(t.url, t.options) == t.data
    assert not t.server.faults


@pytest.mark.parametrize("status", ["403", "404"])
def test_permanent_error_is_not_retried_on_http_and_s3(fault_target, status):
    t = fault_target
    t.server.faults = [status]  # once only: a retry would succeed
    with pytest.raises(StorageError) as info:
        storage.read_range(t.url, 0, 100, t.options)
    assert info.value.status == int(status)
    assert isinstance(info.value, NotFound) == (status == "404")
    assert "gave up" not in str(info.value)
    assert storage.read_range(t.url, 0, 100, t.options) == t.data[:100]


def test_htools_retries_0_on_http_and_s3(fault_target, monkeypatch):
    t = fault_target
    monkeypatch.setenv("HTOOLS_RETRIES", "0")
    t.server.faults = ["503"]
    with pytest.raises(StorageError, match="gave up after 1 attempt") as info:
        storage.read_range(t.url, 0, 100, t.options)
    assert info.value.status == 503 and len(t.server.requests) == 1


def test_s3_read_resumes_at_the_offset_reached(faulty_s3, s3_server):
    proxy, options = faulty_s3
    data = payload(11 << 20, seed=9)  # more than one 8 MiB read-ahead block
    url = f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:12]}/big"
    put(url, data, s3_server.options)
    proxy.faults = ["ok", "ok", "503"]  # HEAD, first GET, then the second GET fails
    got = bytearray()
    with storage.open_read(url, options) as f:
        while chunk := f.read(1 << 20):
            got += chunk
    assert got == data
    failed = [i for i, (_m, _r, fault) in enumerate(proxy.requests) if fault == "503"]
    assert len(failed) == 1
    method, where, _ = proxy.requests[failed[0]]
    assert method == "GET" and not where.startswith("bytes=0-")
    resumed = next(r for m, r, _f in proxy.requests[failed[0] + 1:] if m == "GET")
    assert resumed == where  # the same bytes asked for again, not the object from 0


@pytest.mark.parametrize("exc, expected", [
    (ConnectionResetError("reset"), "transient"),
    (TimeoutError("timed out"), "transient"),
    (FileNotFoundError("k"), "notfound"),
    (PermissionError("no"), 403),
    (OSError(errno.EBUSY, "slow down"), "transient"),       # s3fs: 503 / SlowDown
    (ValueError("bad"), None),
])
def test_object_store_fault_classification(exc, expected):
    got = objectfaults.classify("s3://b/k", exc)
    if expected == "transient":
        assert isinstance(got, Transient)
    elif expected == "notfound":
        assert isinstance(got, NotFound)
    else:
        assert isinstance(got, StorageError) and not isinstance(got, NotFound)
        assert got.status == expected


def test_object_store_classifies_library_errors():
    import aiohttp
    import yarl
    from botocore.exceptions import ClientError, EndpointConnectionError
    from gcsfs.retry import HttpError

    where = yarl.URL("http://127.0.0.1/b/k")
    request = aiohttp.RequestInfo(where, "GET", {}, where)  # type: ignore[arg-type]

    def boto(status: int, code: str) -> OSError:
        err = OSError(errno.EIO, code)
        err.__cause__ = ClientError({"Error": {"Code": code, "Message": code},
                                     "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
        return err

    transient = [boto(503, "ServiceUnavailable"), boto(500, "InternalError"), boto(429, "x"),
                 HttpError({"code": 503, "message": "backend error"}),
                 HttpError({"code": 429, "message": "rate"}),
                 aiohttp.ClientResponseError(request, (), status=502),
                 aiohttp.ServerDisconnectedError(),
                 EndpointConnectionError(endpoint_url="http://x")]
    for exc in transient:
        got = objectfaults.classify("gs://b/k", exc)
        assert isinstance(got, Transient), exc
    for exc, status in ((boto(403, "AccessDenied"), 403), (boto(400, "InvalidRequest"), 400),
                        (HttpError({"code": 403, "message": "Forbidden"}), 403)):
        got = objectfaults.classify("gs://b/k", exc)
        assert isinstance(got, StorageError) and got.status == status, exc


def test_unknown_storage_options_are_refused_with_the_valid_names():
    with pytest.raises(StorageError, match=r"unknown http.auth key\(s\) 'passwd'; valid: user, password"):
        storage.resolve_options({"http": {"auth": {"user": "u", "passwd": "p"}}})
    with pytest.raises(StorageError, match=r"unknown http option\(s\) 'timeot'; valid: .*timeout"):
        storage.resolve_options({"https": {"timeot": 3}})
    with pytest.raises(StorageError, match="unknown protocol 'htp'"):
        storage.resolve_options({"htp": {}})
    assert storage.resolve_options({"local": {"fsync": False, "retries": 0}}) == \
        {"file": {"fsync": False, "retries": 0}}
    assert storage.resolve_options({"s3": {"endpoint_url": "x", "anon": True}})["s3"]["anon"]


def test_remove_partials_of_local_outputs_takes_only_theirs(tmp_path):
    """Hidden ``.NAME.tmp-*`` files of the given outputs go (names that contain
    ``.tmp-`` themselves too); other outputs' temp files and every real file stay."""
    from htools import storage

    outputs = [tmp_path / f"o-{i}.tar" for i in range(3)] + [tmp_path / "a.tmp-1.tar"]
    leftovers = [f".{p.name}.tmp-{i:032x}" for i, p in enumerate(outputs)]
    keep = ["o-0.tar", ".o-9.tar.tmp-" + "f" * 32, "x.tmp-1", ".hidden", "o-1.tar.tmp-1"]
    for name in leftovers + keep:
        (tmp_path / name).write_bytes(b"x")
    assert storage.remove_partials([str(p) for p in outputs]) == len(leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_glob_lists_its_folder_sorted(storage_backend):
    """`'crawl/*.tar'`, `s3://b/train-*.tar`, nginx's JSON autoindex: a glob in the last
    path component names the matching entries of its folder, sorted by name."""
    from htools import shards

    b = storage_backend
    for name in ("g/train-1.tar", "g/train-0.tar", "g/train-10.tar", "g/val-0.tar"):
        put(b.url(name), b"x", b.options)
    assert shards.expand_all(b.url("g/train-*.tar"), b.options) == \
        [b.url("g/train-0.tar"), b.url("g/train-1.tar"), b.url("g/train-10.tar")]
    assert shards.expand_all(b.url("g/train-[01].tar"), b.options) == \
        [b.url("g/train-0.tar"), b.url("g/train-1.tar")]
    with pytest.raises(PatternError, match="matches no file"):
        shards.expand_all(b.url("g/test-*.tar"), b.options)
