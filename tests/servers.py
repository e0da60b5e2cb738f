"""Real storage servers for the tests (a pytest plugin, loaded from conftest.py).

Session fixtures start each server once, on 127.0.0.1 and a free port, and stop it
at the end (process group killed in ``finally``).  Each inherits os.environ, which
conftest.py gave helpers.TEST_ENV (the GCS emulator and gcsfs need it):

* ``nginx_server``  — nginx through scripts/nginx-start / scripts/nginx-stop;
  ``.url``, ``.root``, ``.prefix``.
* ``s3_server``     — ``python -m moto.server``; ``.endpoint``, ``.options``,
  ``.bucket`` ("htools-test", created).
* ``gcs_server``    — ``gcp-storage-emulator start --in-memory``; ``.endpoint``,
  ``.options``, ``.bucket`` ("htools-test", created).

``storage_backend`` (function scope, parametrised over file, http, s3, gs) gives a
fresh unique prefix per test: ``.name``, ``.base`` (ends with "/"), ``.options``,
and ``.url(name)``.  A server that fails to start FAILS the test with its log.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BUCKET = "htools-test"
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen | None, what: str,
                log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"{what} did not start; log {log}:\n{_tail(log)}", pytrace=False)


def _tail(log: Path, limit: int = 4000) -> str:
    try:
        return log.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    out = open(log, "wb")
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    finally:
        out.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _venv_bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


# --------------------------------------------------------------------------- nginx

@dataclass
class NginxServer:
    url: str
    root: Path
    prefix: Path
    port: int


@contextmanager
def _nginx(root: Path, prefix: Path, extra: list[str]) -> Iterator[tuple[str, int]]:
    """nginx through scripts/nginx-start; stopped through scripts/nginx-stop."""
    port = free_port()
    cmd = [str(REPO / "scripts" / "nginx-start"), "--port", str(port), "--root", str(root),
           "--prefix", str(prefix), *extra]
    try:
        started = subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT)
        if started.returncode != 0:
            pytest.fail(f"scripts/nginx-start failed ({started.returncode}):\n{started.stdout}"
                        f"{started.stderr}\n{_tail(prefix / 'error.log')}", pytrace=False)
        yield started.stdout.strip().splitlines()[-1], port
    finally:
        subprocess.run([str(REPO / "scripts" / "nginx-stop"), "--prefix", str(prefix)],
                       capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def nginx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    base = tmp_path_factory.mktemp("nginx")
    root, prefix = base / "root", base / "prefix"
    root.mkdir()
    with _nginx(root, prefix, []) as (url, port):
        yield NginxServer(url=url, root=root, prefix=prefix, port=port)


@dataclass
class NginxAuthServer(NginxServer):
    user: str = "htools"
    password: str = "htools-test-password"


def auth_nginx(base: Path, *extra: str) -> Iterator[NginxAuthServer]:
    """nginx with an htpasswd file for the test user: writes (and with --auth-reads, reads)
    need basic auth."""
    root, prefix = base / "root", base / "prefix"
    root.mkdir()
    user, password = NginxAuthServer.user, NginxAuthServer.password
    htpasswd = base / "htpasswd"
    digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
    htpasswd.write_text(f"{user}:{{SHA}}{digest}\n")
    with _nginx(root, prefix, ["--htpasswd", str(htpasswd), *extra]) as (url, port):
        yield NginxAuthServer(url=url, root=root, prefix=prefix, port=port)


@pytest.fixture(scope="session")
def nginx_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxAuthServer]:
    """nginx started with --htpasswd: writes need basic auth (user/password attributes)."""
    yield from auth_nginx(tmp_path_factory.mktemp("nginx-auth"))


# --------------------------------------------------------------------------- moto (S3)

@dataclass
class S3Server:
    endpoint: str
    options: dict[str, dict[str, Any]]
    bucket: str = BUCKET


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    creds = {"AWS_ACCESS_KEY_ID": "htools-test-key", "AWS_SECRET_ACCESS_KEY": "htools-test-secret",
             "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in creds}
    os.environ.update(creds)
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    port = free_port()
    proc = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log)
    try:
        _wait_until(lambda: _answers(port), proc, "moto S3 server", log)
        endpoint = f"http://127.0.0.1:{port}"
        options = {"s3": {"endpoint_url": endpoint, "key": creds["AWS_ACCESS_KEY_ID"],
                          "secret": creds["AWS_SECRET_ACCESS_KEY"]}}
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options["s3"])
        fs.mkdir(BUCKET)
        yield S3Server(endpoint=endpoint, options=options)
    finally:
        _stop(proc)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --------------------------------------------------------------------------- GCS emulator

@dataclass
class GCSServer:
    endpoint: str
    options: dict[str, dict[str, Any]]
    bucket: str = BUCKET


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GCSServer]:
    log = tmp_path_factory.mktemp("gcs") / "gcs.log"
    port = free_port()
    proc = _spawn([_venv_bin("gcp-storage-emulator"), "start", "--host", "127.0.0.1",
                   "--port", str(port), "--in-memory"], log)
    try:
        _wait_until(lambda: _answers(port), proc, "gcp-storage-emulator", log)
        endpoint = f"http://127.0.0.1:{port}"
        options = {"gs": {"endpoint_url": endpoint, "token": "anon"}}
        import gcsfs

        fs = gcsfs.GCSFileSystem(skip_instance_cache=True, **options["gs"])
        fs.mkdir(BUCKET)
        yield GCSServer(endpoint=endpoint, options=options)
    finally:
        _stop(proc)


# --------------------------------------------------------------------------- per-test prefix

@dataclass
class Backend:
    name: str
    base: str
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return self.base + name


BACKENDS = ["file", "http", "s3", "gs"]


@pytest.fixture(params=BACKENDS)
def storage_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    unique = uuid.uuid4().hex[:12]
    name = request.param
    if name == "file":
        return Backend(name, f"{tmp_path}/{unique}/")
    if name == "http":
        server = request.getfixturevalue("nginx_server")
        return Backend(name, f"{server.url}/{unique}/")
    if name == "s3":
        server = request.getfixturevalue("s3_server")
        return Backend(name, f"s3://{server.bucket}/{unique}/", server.options)
    server = request.getfixturevalue("gcs_server")
    return Backend(name, f"gs://{server.bucket}/{unique}/", server.options)
