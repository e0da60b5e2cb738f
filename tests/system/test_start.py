"""The embedded cluster's worker processes fork from one server process
(htools.clusters.forkserver), with what a nanny's spawn gave them: Dask's pre-spawn
environment and one hash seed for all; ``HTOOLS_START_METHOD=spawn`` keeps Dask's way
(each worker a child of this process)."""

from __future__ import annotations

import os

import pytest
from helpers import child_env, make_shards, ok, read_wds, run

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


def test_a_long_tmpdir_spawns_the_workers_instead(tmp_path):
    """The fork server's socket lives in the temporary folder: a ``$TMPDIR`` too long for
    a Unix socket path (as a test's or a batch system's can be) must not fail the job; its
    workers are spawned, Dask's way, and the outputs are the same."""
    long_tmp = tmp_path / ("t" * 60) / ("m" * 60)
    long_tmp.mkdir(parents=True)
    make_shards(tmp_path / "in", shards=2, per_shard=5)
    script = tmp_path / "identity.py"
    script.write_text("def process_sample(sample):\n    return sample\n")
    env = child_env(TMPDIR=str(long_tmp), HTOOLS_START_METHOD="forkserver")
    ok(run("htmapper", "-p", script, tmp_path / "in" / "data-{0..1}.tar",
           tmp_path / "out" / "o-@2.tar", "--workers", "2", "-q", env=env))
    out = read_wds(sorted((tmp_path / "out").glob("o-*.tar")))
    assert out == read_wds(sorted((tmp_path / "in").glob("data-*.tar")))


NOTEBOOK = '''
import json, os
from htools.clusters.connection import connect
from htools.options import RunOptions

def seen():
    return [os.getppid(), *(os.environ.get(k) for k in ("HT_CHANGED", "HT_NEW", "HT_GONE"))]

def job():
    with connect(RunOptions(workers=1, quiet=True)) as client:
        return list(client.run(seen).values())[0]

if __name__ == "__main__":  # a notebook's cells, run in turn
    os.environ.update(HT_CHANGED="before", HT_GONE="here")
    first = job()
    os.environ.update(HT_CHANGED="after", HT_NEW="new")
    second = job()
    del os.environ["HT_GONE"]
    third = job()
    print(json.dumps([os.getpid(), first, second, third]))
'''


def test_later_jobs_workers_see_the_environment_as_it_is_now(tmp_path):
    """A notebook's fork server outlives its first job: a variable set or changed after
    it started reaches later jobs' forked workers, and one removed since makes the
    cluster spawn its workers, which then do not see it."""
    import json
    import subprocess
    import sys

    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=child_env(HTOOLS_START_METHOD="forkserver"), timeout=180,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pid, first, second, third = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first[1:] == ["before", None, "here"] and first[0] != pid  # forked by the server
    assert second[1:] == ["after", "new", "here"] and second[0] == first[0]
    assert third[1:] == ["after", "new", None] and third[0] == pid  # spawned


def _monitoring(dask_worker) -> tuple[list[str], float]:
    callbacks = dask_worker.periodic_callbacks
    return sorted(callbacks), callbacks["tick"].callback_time


def test_workers_run_without_the_profiler_and_tick_slowly():
    from htools.clusters.workerinit import TICK_MS

    with connect(RunOptions(workers=1, quiet=True)) as client:
        (names, tick), = client.run(_monitoring).values()
    assert "profile" not in names and "profile-cycle" not in names and "heartbeat" in names
    assert tick == TICK_MS
