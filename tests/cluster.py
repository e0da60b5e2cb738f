"""Where the tests' jobs run: the one switch between the embedded cluster and a real
Dask cluster (``cluster_args``), and that real cluster (``dask_cluster``): `dask
scheduler` + 2 `dask worker` processes, started and stopped by the project's own
scripts/cluster-start and cluster-stop."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import REPO, free_port

#: The two places a CLI job can run; ``cluster_args`` is parametrised over them.
WHERE = ("embedded", "scheduler")
WORKERS = 2


@dataclass
class DaskCluster:
    address: str
    dir: Path
    workers: int


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    d = tmp_path_factory.mktemp("dask-cluster")
    port = free_port()
    try:  # the processes inherit os.environ, which conftest.py gave helpers.TEST_ENV
        out = subprocess.run([str(REPO / "scripts" / "cluster-start"), "--workers", str(WORKERS),
                              "--port", str(port), "--dir", str(d)],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            logs = "\n".join(p.read_text()[-2000:] for p in d.glob("*.log"))
            pytest.fail(f"cluster-start failed:\n{out.stdout}\n{out.stderr}\n{logs}")
        yield DaskCluster(f"tcp://127.0.0.1:{port}", d, WORKERS)
    finally:
        subprocess.run([str(REPO / "scripts" / "cluster-stop"), "--dir", str(d)],
                       capture_output=True, timeout=60)


@pytest.fixture(params=WHERE)
def cluster_args(request: pytest.FixtureRequest) -> list[str]:
    """CLI flags that run a job on the embedded cluster (``--workers 2``) or on the real
    scheduler of ``dask_cluster`` (``-c ADDRESS``, two worker processes)."""
    if request.param == "embedded":
        return ["--workers", str(WORKERS)]
    return ["-c", request.getfixturevalue("dask_cluster").address]


@pytest.fixture(scope="module")
def client():
    """A Client of a fresh in-test LocalCluster (2 worker processes, 1 thread each), for
    the Python API; one per test module."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=40) as cluster, \
            Client(cluster) as c:
        yield c
