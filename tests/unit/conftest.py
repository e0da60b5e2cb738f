"""tests/unit: no server, no Dask cluster, no tool run as a process, so ``pytest tests/unit``
takes seconds.  (GNU tar, the codec tests' independent reader, is the one program run.)
A unit test that asks for a fixture of tests/fixtures/ is refused at collection: it
belongs in tests/system/."""

from __future__ import annotations

from pathlib import Path

import pytest

SYSTEM_FIXTURES = frozenset({
    "nginx_server", "nginx_auth_server", "s3_server", "gcs_server", "storage_backend", "place",
    "threads_client", "processes_client", "scheduler_cluster", "cluster_args",
    "resource_cluster", "remote_cluster", "slurm_cluster", "faulty_server", "faulty_s3",
    "small_disk",
})
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE not in Path(item.path).resolve().parents:
            continue
        used = SYSTEM_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if used:
            raise pytest.UsageError(f"{item.nodeid} is a unit test but uses {sorted(used)}: "
                                    "move it to tests/system/")
