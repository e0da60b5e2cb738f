"""A Dask cluster whose workers behave as if they were on other machines (issue 17).

``remote_cluster`` starts `dask scheduler` and 2 `dask worker` processes on 127.0.0.1,
each worker in its own mount namespace (``unshare --mount --propagation private``)
where an empty tmpfs lies over the client's test folders (pytest's base temp dir, the
repo's examples/ and tests/), so the workers cannot see the client's files; each has
its own working directory and HOME inside that namespace, and an environment without
the client's ``HTOOLS_*`` and credential variables.  They reach nginx, moto and the GCS
emulator over 127.0.0.1 like any other host would.

Needs root (a mount namespace and tmpfs mounts): elsewhere the fixture skips, saying
why.  Teardown kills each process group; the namespaces and their mounts go with
their last process.  Use it from a test module with
``from remote import remote_cluster  # noqa: F401``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import TEST_ENV
from servers import REPO, _stop, _tail, free_port

WORKERS = 2
START_TIMEOUT = 60.0

# Variables a worker on another machine would not have: the client's htools settings
# and anything that smells of credentials.
_DROP_PREFIXES = ("HTOOLS_", "AWS_", "GOOGLE_", "GCLOUD_", "CLOUDSDK_", "STORAGE_EMULATOR")
_DROP_WORDS = ("PASSWORD", "SECRET", "TOKEN", "CREDENTIAL")

# Run inside the new mount namespace: hide the folders, make a private working
# directory, become the worker.
_WORKER_SH = r"""
set -e
work=$1; dask=$2; address=$3; name=$4; shift 4
for d in "$@"; do mount -t tmpfs -o size=64m htools-hidden "$d"; done
mkdir -p "$work"
cd "$work"
exec "$dask" worker "$address" --name "$name" --nthreads 1 --nworkers 1 \
    --local-directory "$work/dask" --no-dashboard
"""


@dataclass
class RemoteCluster:
    address: str
    dir: Path  # logs (on the client's side)
    hidden: list[Path]  # what the workers cannot see
    workers: int = WORKERS
    procs: list[subprocess.Popen] = field(default_factory=list, repr=False)

    def client(self):
        from distributed import Client

        return Client(self.address, timeout="20s")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{_tail(p, 3000)}" for p in sorted(self.dir.glob("*.log")))


def worker_env(home: str) -> dict[str, str]:
    """The environment of a worker "on another machine": this one's, less the htools
    settings and credentials, with its own HOME (no ~/.netrc of the client)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_DROP_PREFIXES) and not any(w in k.upper() for w in _DROP_WORDS)}
    env.update(TEST_ENV)
    env["HOME"] = home
    env.pop("PWD", None)
    env.pop("OLDPWD", None)
    return env


def unavailable() -> str | None:
    """Why this machine cannot run the rig (None: it can)."""
    if os.geteuid() != 0:
        return "the multi-host rig needs root (unshare --mount and tmpfs mounts)"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "the multi-host rig needs unshare and mount (util-linux)"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs htools-probe /mnt"],
                           capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        return f"cannot make a mount namespace with a tmpfs: {probe.stderr.strip()}"
    return None


def _dask() -> str:
    here = Path(sys.executable).parent / "dask"
    return str(here) if here.exists() else "dask"


@pytest.fixture(scope="module")
def remote_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteCluster]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.getbasetemp()
    logs = tmp_path_factory.mktemp("remote-cluster")
    hidden = [base, REPO / "examples", REPO / "tests"]
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    cluster = RemoteCluster(address, logs, hidden)
    dask = _dask()
    try:
        cluster.procs.append(_spawn([dask, "scheduler", "--host", "127.0.0.1", "--port",
                                     str(port), "--no-dashboard"],
                                    logs / "scheduler.log", worker_env(str(logs))))
        for i in range(1, WORKERS + 1):
            work = str(base / f"worker-{i}")  # inside the hidden folder: its own tmpfs
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _WORKER_SH,
                   "sh", work, dask, address, f"remote-{i}", *map(str, hidden)]
            cluster.procs.append(_spawn(cmd, logs / f"worker-{i}.log", worker_env(work)))
        _wait_for_workers(cluster)
        yield cluster
    finally:
        for proc in reversed(cluster.procs):
            _stop(proc)


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd="/",
                                start_new_session=True)


def _wait_for_workers(cluster: RemoteCluster) -> None:
    from distributed import Client

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        dead = [p for p in cluster.procs if p.poll() is not None]
        if dead:
            break
        try:
            with Client(cluster.address, timeout="2s") as c:
                c.wait_for_workers(cluster.workers, timeout=max(1.0, deadline - time.monotonic()))
                return
        except (OSError, TimeoutError):
            time.sleep(0.2)
    pytest.fail(f"the multi-host rig did not start:\n{cluster.logs()}", pytrace=False)
