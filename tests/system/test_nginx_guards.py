"""The project's nginx cannot be wiped by one request: DELETE of the root or of a
top-level folder, and MOVE/COPY onto them, answer 403 (files anywhere and deeper
folders are deleted as before), and scripts/nginx-start refuses to listen beyond
loopback without basic auth unless told --allow-anonymous-writes."""

from __future__ import annotations

import http.client
import subprocess
from pathlib import Path

import pytest
from fixtures.servers import REPO, _nginx, free_port


def request(port: int, method: str, path: str, headers: dict | None = None,
            body: bytes | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@pytest.fixture
def guarded(tmp_path: Path):
    root = tmp_path / "root"
    for rel in ("data/a/x.tar", "data/b.tar", "other/y.tar", "top.tar", "data/a/deep/z.tar"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"shard")
    with _nginx(root, tmp_path / "prefix", []) as (url, port):
        yield root, port


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                  and not p.name.startswith("."))


@pytest.mark.parametrize("path", ["/", "/data/", "/other/", "//", "/data//", "/./data/",
                                  "/data/../", "/%64ata/"])
def test_delete_of_the_root_or_a_top_level_folder_is_refused(guarded, path):
    root, port = guarded
    before = tree(root)
    assert request(port, "DELETE", path) == 403
    assert tree(root) == before


@pytest.mark.parametrize("dest", ["/", "/data/", "/data", "/other", "//", "/data//",
                                  "http://127.0.0.1/", "http://127.0.0.1/data/"])
@pytest.mark.parametrize("method", ["MOVE", "COPY"])
def test_move_or_copy_onto_the_root_or_a_top_level_folder_is_refused(guarded, dest, method):
    root, port = guarded
    before = tree(root)
    if not dest.startswith("http"):
        dest = f"http://127.0.0.1:{port}{dest}"
    assert request(port, method, "/data/b.tar", {"Destination": dest, "Overwrite": "T"}) == 403
    assert tree(root) == before


def test_files_and_deeper_folders_are_deleted_and_moved_as_before(guarded):
    root, port = guarded
    assert request(port, "DELETE", "/data/a/deep/") == 204
    assert request(port, "DELETE", "/top.tar") == 204
    assert request(port, "DELETE", "/data/b.tar") == 204
    assert request(port, "PUT", "/new/in.tar.tmp-1", body=b"v") in (201, 204)
    assert request(port, "MOVE", "/new/in.tar.tmp-1",
                   {"Destination": f"http://127.0.0.1:{port}/top.tar", "Overwrite": "T"}) in (201, 204)
    assert tree(root) == ["data/a/x.tar", "other/y.tar", "top.tar"]


def start(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "scripts" / "nginx-start"), "--port", str(free_port()),
                           "--root", str(tmp_path / "root"), "--prefix", str(tmp_path / "p"),
                           *extra], capture_output=True, text=True, timeout=60)


def test_listening_beyond_loopback_without_auth_is_refused(tmp_path):
    p = start(tmp_path, "--listen", "0.0.0.0")
    assert p.returncode == 2
    assert "refusing to listen on 0.0.0.0 without --htpasswd" in p.stderr
    assert "--allow-anonymous-writes" in p.stderr
    assert not (tmp_path / "p" / "nginx.pid").exists()


def test_allow_anonymous_writes_starts_it(tmp_path):
    p = start(tmp_path, "--listen", "0.0.0.0", "--allow-anonymous-writes")
    try:
        assert p.returncode == 0, p.stderr
        port = int(p.stdout.strip().rsplit(":", 1)[1])
        assert request(port, "PUT", "/d/x.tar", body=b"x") in (201, 204)
    finally:
        subprocess.run([str(REPO / "scripts" / "nginx-stop"), "--prefix", str(tmp_path / "p")],
                       capture_output=True, timeout=30)
