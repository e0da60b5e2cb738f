"""nginx with basic auth, end to end: credentials from the URL, the storage options,
``$HTOOLS_HTTP_USER``/``$HTOOLS_HTTP_PASSWORD`` and ``~/.netrc`` get writes through
(checked in nginx's root dir); wrong or missing credentials fail with 401 naming the
redacted URL, exit non-zero, write nothing, and never print the password."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.servers import NginxAuthServer, auth_nginx
from helpers import ENV, make_shards, ok, read_wds, run

from htools import storage
from htools.errors import StorageError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "thumbnails.py"
WRONG = "not-the-password-xyzzy"


@pytest.fixture(scope="module")
def nginx_read_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxAuthServer]:
    """nginx started with --htpasswd --auth-reads: every request needs credentials."""
    yield from auth_nginx(tmp_path_factory.mktemp("nginx-read-auth"), "--auth-reads")


@pytest.fixture
def sub(nginx_auth_server) -> tuple[str, Path]:
    """(a fresh base URL without credentials, the folder where its objects land)."""
    name = uuid.uuid4().hex[:8]
    return f"{nginx_auth_server.url}/{name}/", Path(nginx_auth_server.root) / name


def with_userinfo(url: str, user: str, password: str) -> str:
    return url.replace("http://", f"http://{user}:{password}@", 1)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def shards_under(folder: Path) -> list[Path]:
    """The tar shards under ``folder`` (not the shard index beside them)."""
    return [p for p in files_under(folder) if not p.name.endswith(".index.json")]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in ENV.items()
           if k not in ("HTOOLS_STORAGE_OPTIONS", "HTOOLS_HTTP_USER", "HTOOLS_HTTP_PASSWORD")}
    env.update(extra)
    return env


@pytest.fixture
def no_ambient_credentials(monkeypatch, tmp_path):
    """No credentials from the environment or the real ~/.netrc."""
    for k in ("HTOOLS_STORAGE_OPTIONS", "HTOOLS_HTTP_USER", "HTOOLS_HTTP_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    home = tmp_path / "empty-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


def write_netrc(home: Path, host: str, user: str, password: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    netrc = home / ".netrc"
    netrc.write_text(f"machine {host} login {user} password {password}\n")
    netrc.chmod(0o600)


# --------------------------------------------------------------------------- storage

def test_storage_write_with_credentials(nginx_auth_server, sub, no_ambient_credentials,
                                        monkeypatch, tmp_path):
    s = nginx_auth_server
    base, local = sub
    # 1. in the URL
    with storage.open_write(with_userinfo(base + "url.bin", s.user, s.password)) as f:
        f.write(b"from the url")
    # 2. as a storage option
    opts = {"http": {"auth": {"user": s.user, "password": s.password}}}
    with storage.open_write(base + "opt.bin", opts) as f:
        f.write(b"from options")
    # 3. from $HTOOLS_HTTP_USER / $HTOOLS_HTTP_PASSWORD
    monkeypatch.setenv("HTOOLS_HTTP_USER", s.user)
    monkeypatch.setenv("HTOOLS_HTTP_PASSWORD", s.password)
    with storage.open_write(base + "env.bin") as f:
        f.write(b"from env")
    monkeypatch.delenv("HTOOLS_HTTP_USER")
    monkeypatch.delenv("HTOOLS_HTTP_PASSWORD")
    # 4. from ~/.netrc (a temporary HOME)
    home = tmp_path / "home"
    write_netrc(home, "127.0.0.1", s.user, s.password)
    monkeypatch.setenv("HOME", str(home))
    with storage.open_write(base + "netrc.bin") as f:
        f.write(b"from netrc")
    assert (local / "url.bin").read_bytes() == b"from the url"
    assert (local / "opt.bin").read_bytes() == b"from options"
    assert (local / "env.bin").read_bytes() == b"from env"
    assert (local / "netrc.bin").read_bytes() == b"from netrc"
    storage.delete(base + "opt.bin", opts)
    assert not (local / "opt.bin").exists()


@pytest.mark.parametrize("how", ["missing", "wrong-url", "wrong-option", "wrong-env", "wrong-netrc"])
def test_storage_write_refused(nginx_auth_server, sub, no_ambient_credentials, monkeypatch,
                               tmp_path, how):
    s = nginx_auth_server
    base, local = sub
    url, opts = base + "refused.bin", None
    if how == "wrong-url":
        url = with_userinfo(url, s.user, WRONG)
    elif how == "wrong-option":
        opts = {"http": {"auth": {"user": s.user, "password": WRONG}}}
    elif how == "wrong-env":
        monkeypatch.setenv("HTOOLS_HTTP_USER", s.user)
        monkeypatch.setenv("HTOOLS_HTTP_PASSWORD", WRONG)
    elif how == "wrong-netrc":
        write_netrc(tmp_path / "home", "127.0.0.1", s.user, WRONG)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(StorageError) as info:
        with storage.open_write(url, opts) as f:
            f.write(b"x" * 100_000)
    err = info.value
    assert err.status == 401
    assert err.url == base + "refused.bin"  # redacted: no userinfo
    message = str(err)
    assert "401" in message and base + "refused.bin" in message
    assert WRONG not in message and s.password not in message
    assert "credentials" in message
    assert files_under(local) == []


def test_storage_read_needs_credentials_with_auth_reads(nginx_read_auth, no_ambient_credentials,
                                                        monkeypatch, tmp_path):
    s = nginx_read_auth
    (Path(s.root) / "r.bin").write_bytes(b"secret data")
    url = s.url + "/r.bin"
    with pytest.raises(StorageError) as info:
        storage.size(url)
    assert info.value.status == 401 and s.password not in str(info.value)
    with pytest.raises(StorageError) as info:
        with storage.open_read(with_userinfo(url, s.user, WRONG)) as f:
            f.read()
    assert info.value.status == 401 and WRONG not in str(info.value)
    write_netrc(tmp_path / "home", "127.0.0.1", s.user, s.password)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with storage.open_read(url) as f:
        assert f.read() == b"secret data"
    assert storage.read_range(url, 7, 11) == b"data"


# --------------------------------------------------------------------------- CLI

def assert_secret_free(proc, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in proc.stdout and secret not in proc.stderr, "password printed"


def test_cli_upload_and_map_with_credentials(nginx_auth_server, sub, tmp_path):
    s = nginx_auth_server
    base, local = sub
    src = make_shards(tmp_path / "src", shards=2, per_shard=10)
    # htupload with the credentials in the URL
    out = ok(run("htupload", str(tmp_path / "src" / "data-{0..1}.tar"),
                 with_userinfo(base, s.user, s.password) + "up-@2.tar", "--workers", "2",
                 env=clean_env(HOME=str(tmp_path))))
    assert_secret_free(out, s.password)
    assert {x["__key__"] for x in read_wds(shards_under(local))} == set(src)

    # htmapper with the credentials in $HTOOLS_STORAGE_OPTIONS (shipped to the workers)
    opts = json.dumps({"http": {"auth": {"user": s.user, "password": s.password}}})
    script = tmp_path / "upper.py"
    script.write_text("def process_sample(s):\n"
                      "    return {'__key__': s['__key__'], 'txt': s['txt'].upper()}\n")
    out = ok(run("htmapper", "-p", script, base + "up-@2.tar", base + "mapped-@2.tar",
                 "--workers", "2", env=clean_env(HOME=str(tmp_path), HTOOLS_STORAGE_OPTIONS=opts)))
    assert_secret_free(out, s.password)
    mapped = read_wds(sorted(local.glob("mapped-*.tar")))
    assert len(mapped) == len(src)
    assert all(m["txt"] == src[m["__key__"]]["txt"].upper() for m in mapped)

    # htmapper with $HTOOLS_HTTP_USER / $HTOOLS_HTTP_PASSWORD on a real scheduler's
    # workers is not possible (they have their own environment); the embedded cluster
    # inherits it
    out = ok(run("htmapper", "-p", script, base + "up-@2.tar", base + "env-@2.tar",
                 "--workers", "2", "-q",
                 env=clean_env(HOME=str(tmp_path), HTOOLS_HTTP_USER=s.user,
                               HTOOLS_HTTP_PASSWORD=s.password)))
    assert len(read_wds(sorted(local.glob("env-*.tar")))) == len(src)


def test_cli_upload_netrc_to_a_real_scheduler(nginx_auth_server, sub, scheduler_cluster, tmp_path):
    """~/.netrc on this side only: the workers of a separate scheduler do not share HOME,
    so pass the credentials the way that ships with the job (storage options)."""
    s = nginx_auth_server
    base, local = sub
    src = make_shards(tmp_path / "src", shards=2, per_shard=5)
    opts = json.dumps({"http": {"auth": {"user": s.user, "password": s.password}}})
    out = ok(run("htupload", str(tmp_path / "src" / "data-{0..1}.tar"), base + "c-@2.tar",
                 "-c", scheduler_cluster.address, "--storage-options", opts,
                 env=clean_env(HOME=str(tmp_path))))
    assert_secret_free(out, s.password)
    assert {x["__key__"] for x in read_wds(shards_under(local))} == set(src)


@pytest.mark.parametrize("how", ["missing", "wrong-url", "wrong-env", "wrong-netrc"])
def test_cli_refused_writes(nginx_auth_server, sub, tmp_path, how):
    s = nginx_auth_server
    base, local = sub
    make_shards(tmp_path / "src", shards=2, per_shard=5)
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(HOME=str(home))
    out_url = base + "up-@2.tar"
    if how == "wrong-url":
        out_url = with_userinfo(out_url, s.user, WRONG)
    elif how == "wrong-env":
        env.update(HTOOLS_HTTP_USER=s.user, HTOOLS_HTTP_PASSWORD=WRONG)
    elif how == "wrong-netrc":
        write_netrc(home, "127.0.0.1", s.user, WRONG)
    proc = run("htupload", str(tmp_path / "src" / "data-{0..1}.tar"), out_url,
               "--workers", "1", env=env)
    assert proc.returncode != 0, proc.stderr
    assert "401" in proc.stderr
    # found before any input is read, by a probe write: the redacted folder is named
    assert f"cannot write outputs under {base}" in proc.stderr
    assert_secret_free(proc, WRONG, s.password)
    assert files_under(local) == []


def test_cli_map_refused_and_read_auth(nginx_read_auth, tmp_path):
    """--auth-reads: htmapper cannot even read without credentials; with ~/.netrc it can."""
    s = nginx_read_auth
    name = uuid.uuid4().hex[:8]
    local = Path(s.root) / name
    make_shards(local, shards=2, per_shard=5, name="in")
    base = f"{s.url}/{name}/"
    script = tmp_path / "same.py"
    script.write_text("def process_sample(s):\n    return s\n")
    home = tmp_path / "home"
    home.mkdir()
    before = files_under(local)
    proc = run("htmapper", "-p", script, base + "in-{0..1}.tar", base + "out-@2.tar",
               "--workers", "1", env=clean_env(HOME=str(home)))
    assert proc.returncode != 0
    assert "401" in proc.stderr and base in proc.stderr
    assert files_under(local) == before

    proc = run("htmapper", "-p", script, with_userinfo(base, s.user, WRONG) + "in-{0..1}.tar",
               base + "out-@2.tar", "--workers", "1", env=clean_env(HOME=str(home)))
    assert proc.returncode != 0 and "401" in proc.stderr
    assert_secret_free(proc, WRONG, s.password)
    assert files_under(local) == before

    write_netrc(home, "127.0.0.1", s.user, s.password)
    ok(run("htmapper", "-p", script, base + "in-{0..1}.tar", base + "out-@2.tar",
           "--workers", "2", env=clean_env(HOME=str(home))))
    assert len(read_wds(sorted(local.glob("out-*.tar")))) == 10
    counted = ok(run("htextract", base + "out-@2.tar", "-f", "cls", "--count", "5",
                     "--workers", "1", env=clean_env(HOME=str(home))))
    assert_secret_free(counted, s.password)
