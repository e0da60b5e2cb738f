"""The suite's root: registers the fixtures of tests/fixtures/ (servers, Dask clusters,
fault proxies, small disks, SLURM) and sets the environment every process needs
(helpers.TEST_ENV, here, once).  tests/unit/ holds the tests that need no server, no
cluster and no tool run as a process; tests/system/ the rest."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from helpers import TEST_ENV, require_tool

os.environ.update(TEST_ENV)  # before anything imports gcsfs; every child inherits it

pytest_plugins = ["fixtures.servers", "fixtures.clusters", "fixtures.remote", "fixtures.faults",
                  "fixtures.disks", "fixtures.slurm"]


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


@pytest.fixture(scope="session")
def gnu_tar() -> str:
    """The path of GNU tar (scripts/setup installs Debian's tar): an independent reader
    and writer of tar files.  Missing, or another tar, fails the test."""
    tar = require_tool("tar")
    version = subprocess.run([tar, "--version"], capture_output=True, text=True,
                             check=False).stdout
    if "GNU tar" not in version:
        pytest.fail(f"{tar} is not GNU tar: run scripts/setup", pytrace=False)
    return tar
