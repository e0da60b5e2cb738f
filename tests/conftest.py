"""Shared fixtures.  Real servers (nginx, moto, gcp-storage-emulator) live in servers.py."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

pytest_plugins = ["servers", "cluster"]


@pytest.fixture(params=["embedded", "scheduler"])
def cluster_args(request) -> list[str]:
    """CLI flags for the embedded cluster, or for a real scheduler with two workers."""
    if request.param == "embedded":
        return ["--workers", "2"]
    return ["-c", request.getfixturevalue("dask_cluster").address]


@pytest.fixture(params=["file", "http"])
def place(request, tmp_path) -> tuple[str, Path]:
    """(base URL the tools write to, local folder where those bytes land)."""
    if request.param == "file":
        d = tmp_path / "store"
        d.mkdir()
        return str(d) + "/", d
    nginx = request.getfixturevalue("nginx_server")
    sub = uuid.uuid4().hex[:8]
    (Path(nginx.root) / sub).mkdir()
    return f"{nginx.url}/{sub}/", Path(nginx.root) / sub
