"""The embedded cluster's worker processes fork from one server process
(htools.clusters.forkserver), with what a nanny's spawn gave them: Dask's pre-spawn
environment and one hash seed for all; ``HTOOLS_START_METHOD=spawn`` keeps Dask's way
(each worker a child of this process)."""

from __future__ import annotations

import os

import pytest

from htools.clusters.connection import connect
from htools.options import RunOptions


def _seen() -> tuple[int, str | None, int]:
    return os.getppid(), os.environ.get("MALLOC_TRIM_THRESHOLD_"), hash("htools")


def workers_seen() -> list[tuple[int, str | None, int]]:
    with connect(RunOptions(workers=2, quiet=True)) as client:
        return list(client.run(_seen).values())


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_workers_start_by_the_method_with_the_nannys_environment(method, monkeypatch):
    monkeypatch.setenv("HTOOLS_START_METHOD", method)
    seen = workers_seen()
    assert len(seen) == 2
    parents = {parent for parent, _trim, _hash in seen}
    if method == "forkserver":  # one server forked both, not this process
        assert len(parents) == 1 and os.getpid() not in parents
    else:
        assert parents == {os.getpid()}
    assert {trim for _parent, trim, _hash in seen} == {"65536"}
    assert len({h for _parent, _trim, h in seen}) == 1  # the nanny's PYTHONHASHSEED
