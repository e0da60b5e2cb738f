"""A real Dask cluster for the tests: `dask scheduler` + 2 `dask worker` processes,
started and stopped by the project's own scripts/cluster-start and cluster-stop."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from servers import REPO, free_port


@dataclass
class DaskCluster:
    address: str
    dir: Path
    workers: int


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    d = tmp_path_factory.mktemp("dask-cluster")
    port = free_port()
    env = dict(os.environ, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
    try:
        out = subprocess.run([str(REPO / "scripts" / "cluster-start"), "--workers", "2",
                              "--port", str(port), "--dir", str(d)], env=env,
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            logs = "\n".join(p.read_text()[-2000:] for p in d.glob("*.log"))
            pytest.fail(f"cluster-start failed:\n{out.stdout}\n{out.stderr}\n{logs}")
        yield DaskCluster(f"tcp://127.0.0.1:{port}", d, 2)
    finally:
        subprocess.run([str(REPO / "scripts" / "cluster-stop"), "--dir", str(d)],
                       capture_output=True, timeout=60)
