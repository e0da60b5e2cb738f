"""Dask clusters on SLURM (``--cluster slurm://PARTITION?jobs=N&cores=C&memory=M...``).

Runs through dask-jobqueue's ``SLURMCluster``: the Dask scheduler runs inside the
htools command (on the login node), and every worker is a SLURM batch job submitted
with ``sbatch`` that starts ``dask worker`` and connects back to it.  :func:`cluster`
submits the jobs, waits until their workers have connected (a progress line on stderr;
a timeout that names each job still pending and its ``squeue`` state and reason), and
on exit -- the job done, failed, or interrupted with Ctrl-C -- cancels every worker job
it submitted (``scancel``).

Address: ``slurm://[PARTITION]`` (no partition: the cluster's default one), with the
optional query parameters

* ``jobs=N``        worker jobs (default 2)
* ``cores=C``       cores per job (default 1); one single-threaded worker process per core
* ``memory=M``      memory per job (``4GB``, ``500MiB``; default 2 GB per core)
* ``walltime=T``    time limit per job (``HH:MM:SS``; default: the partition's)
* ``account=A``     the account to charge (``sbatch -A``)
* ``directive=D``   an extra ``#SBATCH`` directive, repeatable (``directive=--qos=low``)
* ``logs=DIR``      where the jobs' output goes (default: SLURM's, the current directory)
* ``host=H`` / ``interface=I``  the scheduler's listen host / the network interface of
  scheduler and workers (default: dask-jobqueue's, every interface)
* ``timeout=S``     seconds to wait for the workers (default ``$HTOOLS_SLURM_TIMEOUT``
  or 600)

``$HTOOLS_SLURM_OPTIONS`` takes JSON keyword arguments for ``SLURMCluster``, the way
``$HTOOLS_STORAGE_OPTIONS`` does for storage (``{"job_extra_directives": ["--gres=gpu:1"],
"job_script_prologue": ["module load python"]}``); address parameters win, and
``job_extra_directives`` from both are joined.

dask-jobqueue is imported lazily: without it (``pip install 'htools-wds[slurm]'``) or
without ``sbatch`` on PATH, ``slurm://`` fails with one clear :class:`HtoolsError`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from htools.clusters.address import positive_int
from htools.errors import HtoolsError

SCHEME = "slurm://"
OPTIONS_ENV = "HTOOLS_SLURM_OPTIONS"
TIMEOUT_ENV = "HTOOLS_SLURM_TIMEOUT"
DEFAULT_JOBS = 2
DEFAULT_TIMEOUT = 600.0
JOB_NAME = "htools-worker"
WORKER_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
_PARAMS = ("jobs", "cores", "memory", "walltime", "account", "directive", "logs", "host",
           "interface", "timeout")
_PARTITION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*([kKmMgGtT]i?[bB]?|[bB])?$")


class SlurmError(HtoolsError):
    """A SLURM cluster cannot be used (bad address, no dask-jobqueue, no sbatch, no workers)."""


@dataclass(frozen=True)
class SlurmAddress:
    """A parsed ``slurm://[PARTITION]?jobs=N&cores=C&memory=M&walltime=T&account=A``."""

    partition: str | None = None
    jobs: int = DEFAULT_JOBS
    cores: int = 1
    memory: str | None = None
    walltime: str | None = None
    account: str | None = None
    directives: tuple[str, ...] = ()
    logs: str | None = None
    host: str | None = None
    interface: str | None = None
    timeout: float | None = None

    @property
    def workers(self) -> int:
        """Dask workers in all: one single-threaded process per core of every job."""
        return self.jobs * self.cores


def parse_address(address: str) -> SlurmAddress:
    """Parse a ``slurm://`` cluster address (raises :class:`SlurmError` when malformed)."""
    if not address.startswith(SCHEME):
        raise SlurmError(f"not a SLURM cluster address: {address!r} (use slurm://[PARTITION])")
    parts = urlsplit(address)
    partition = (parts.netloc + parts.path).strip("/") or None
    if partition is not None and not _PARTITION.match(partition):
        raise SlurmError(f"bad SLURM partition {partition!r} in {address!r}")
    params: dict[str, str] = {}
    directives: list[str] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _PARAMS:
            raise SlurmError(f"unknown parameter {key!r} in {address!r} "
                             f"(known: {', '.join(_PARAMS)})")
        if not value:
            raise SlurmError(f"parameter {key!r} has no value in {address!r}")
        if key == "directive":
            directives.append(value)
            continue
        if key in params:
            raise SlurmError(f"parameter {key!r} given twice in {address!r}")
        params[key] = value
    memory = params.get("memory")
    if memory is not None and not _MEMORY.match(memory):
        raise SlurmError(f"memory must be a size like 4GB or 500MiB, not {memory!r} "
                         f"in {address!r}")
    walltime = params.get("walltime")
    if walltime is not None and not _WALLTIME.match(walltime):
        raise SlurmError(f"walltime must be HH:MM:SS (or D-HH:MM:SS), not {walltime!r} "
                         f"in {address!r}")
    timeout = None
    if "timeout" in params:
        try:
            timeout = float(params["timeout"])
        except ValueError:
            timeout = -1.0
        if not timeout > 0:
            raise SlurmError(f"timeout must be a positive number of seconds, "
                             f"not {params['timeout']!r} in {address!r}")
    return SlurmAddress(partition=partition,
                        jobs=_positive(params, "jobs", address) or DEFAULT_JOBS,
                        cores=_positive(params, "cores", address) or 1,
                        memory=memory, walltime=walltime, account=params.get("account"),
                        directives=tuple(directives), logs=params.get("logs"),
                        host=params.get("host"), interface=params.get("interface"),
                        timeout=timeout)


def _positive(params: Mapping[str, str], key: str, address: str) -> int | None:
    return positive_int(params, key, address, SlurmError)


def _jobqueue() -> Any:
    # Importing dask_jobqueue (its runner module) replaces the SIGINT handler with one
    # that calls sys.exit(): Ctrl-C would then end the command with exit status 0.
    # Keep the handler the process had (KeyboardInterrupt: cancel, clean up, exit 1).
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise SlurmError("slurm:// clusters need dask-jobqueue: pip install 'htools-wds[slurm]' "
                         f"({exc})") from None
    finally:
        if main and before is not None:
            signal.signal(signal.SIGINT, before)
    return dask_jobqueue


def check_sbatch() -> None:
    """Raise :class:`SlurmError` unless SLURM's commands are on PATH."""
    missing = [c for c in ("sbatch", "squeue", "scancel") if shutil.which(c) is None]
    if missing:
        raise SlurmError(f"slurm:// needs SLURM's {', '.join(missing)} on PATH (run htools on "
                         "a login node of the SLURM cluster)")


def env_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``$HTOOLS_SLURM_OPTIONS``: extra keyword arguments for ``SLURMCluster``."""
    text = (os.environ if environ is None else environ).get(OPTIONS_ENV, "").strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise SlurmError(f"${OPTIONS_ENV} is not valid JSON: {exc}") from None
    if not isinstance(options, dict):
        raise SlurmError(f"${OPTIONS_ENV} must be a JSON object of SLURMCluster arguments")
    return options


def cluster_kwargs(where: SlurmAddress, options: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """The ``SLURMCluster`` keyword arguments for ``where`` (plus JSON ``options``)."""
    kwargs: dict[str, Any] = dict(options or {})
    extra = kwargs.pop("job_extra_directives", None) or []
    if isinstance(extra, str):
        extra = [extra]
    prologue = list(kwargs.pop("job_script_prologue", None) or [])
    scheduler_options = dict(kwargs.pop("scheduler_options", None) or {})
    if where.host:
        scheduler_options["host"] = where.host
    scheduler_options.setdefault("dashboard_address", f"{where.host or ''}:0")
    kwargs.setdefault("job_name", JOB_NAME)
    kwargs.setdefault("death_timeout", 60)
    kwargs.update(
        queue=where.partition, cores=where.cores, processes=where.cores,
        memory=where.memory or f"{2 * where.cores}GB", walltime=where.walltime,
        job_extra_directives=[*extra, *where.directives],
        job_script_prologue=[f"export {k}={v}" for k, v in WORKER_ENV.items()] + prologue,
        scheduler_options=scheduler_options)
    if where.account:
        kwargs["account"] = where.account
    if where.logs:
        kwargs["log_directory"] = where.logs
    if where.interface:
        kwargs["interface"] = where.interface
    if where.host in ("127.0.0.1", "localhost", "::1") and not where.interface:
        # a scheduler on loopback (a one-node cluster): workers listen there too
        kwargs["worker_extra_args"] = [*kwargs.get("worker_extra_args", []),
                                       "--host", where.host]
    return kwargs


def test_submit(script: str, address: str) -> None:
    """``sbatch --test-only`` the worker job script: a bad partition, account or resource
    request fails here, with sbatch's own message, before anything is submitted."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="htools-slurm-") as f:
        f.write(script)
        f.flush()
        try:
            proc = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True,
                                  text=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise SlurmError(f"sbatch failed for {address!r}: {exc}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "fatal" in ln.lower()), None) \
            or next((ln for ln in lines if "error" in ln.lower()),
                    lines[0] if lines else f"exit status {proc.returncode}")
        raise SlurmError(f"sbatch failed for {address!r}: {first}")


def dask_config(retries: int) -> dict[str, Any]:
    """Dask settings while the cluster is made: a task whose worker dies (its job
    cancelled, or killed at its time limit) is retried ``retries`` times, and no
    walltime unless the address gives one (dask-jobqueue's default is 30 minutes)."""
    return {"distributed.scheduler.allowed-failures": max(retries, 0),
            "jobqueue.slurm.walltime": None}


def job_ids(slurm_cluster: Any) -> list[str]:
    """The ids of the worker jobs ``slurm_cluster`` has submitted so far."""
    ids = []
    for job in list(getattr(slurm_cluster, "workers", {}).values()):
        job_id = getattr(job, "job_id", None)
        if job_id:
            ids.append(str(job_id))
    return ids


def job_states(ids: list[str]) -> dict[str, str]:
    """``squeue``'s state (and reason, when pending) of each job in ``ids`` that SLURM
    still lists; jobs that ended are absent."""
    if not ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T %r"],
                             capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    for line in out.splitlines():
        fields = line.split(None, 2)
        if len(fields) >= 2:
            state = fields[1]
            if state == "PENDING" and len(fields) == 3 and fields[2] not in ("None", ""):
                state += f" ({fields[2]})"
            states[fields[0]] = state
    return states


def cancel(ids: list[str]) -> None:
    """``scancel`` the jobs in ``ids`` (jobs already gone are fine)."""
    if not ids:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60, check=False)


def _describe(ids: list[str], states: Mapping[str, str]) -> str:
    return ", ".join(f"job {i} {states.get(i, 'ended')}" for i in ids) or "no job submitted"


def wait_for_workers(slurm_cluster: Any, where: SlurmAddress, timeout: float,
                     quiet: bool = False) -> None:
    """Wait until every worker of the submitted jobs has connected, printing a progress
    line when it changes; raise :class:`SlurmError` naming the jobs still pending (and
    their ``squeue`` states) on timeout, or as soon as every job has ended without a
    worker."""
    want = where.workers
    deadline = time.monotonic() + timeout
    last = ""
    gone_since: float | None = None
    while True:
        connected = len(slurm_cluster.scheduler_info.get("workers", {}))
        ids = job_ids(slurm_cluster)
        states = job_states(ids) if connected < want else {}
        line = f"htools: SLURM: {connected}/{want} workers connected"
        if connected < want:
            line += f"; {_describe(ids, states)}"
        if not quiet and line != last:
            print(line, file=sys.stderr, flush=True)
        last = line
        if connected >= want:
            return
        if len(ids) == where.jobs and not states and connected == 0:
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > 10:  # squeue may lag a just-started job
                logs = f" (their output is in {where.logs})" if where.logs else ""
                raise SlurmError(f"every SLURM worker job ended without a worker connecting: "
                                 f"{_describe(ids, states)}{logs}")
        else:
            gone_since = None
        if time.monotonic() > deadline:
            raise SlurmError(f"SLURM workers not up after {timeout:g}s: {connected}/{want} "
                             f"connected; {_describe(ids, states)} (raise timeout= in the "
                             f"address or ${TIMEOUT_ENV})")
        time.sleep(1.0)


@contextlib.contextmanager
def cluster(address: str, quiet: bool = False, retries: int = 2) -> Iterator[Any]:
    """A ``dask_jobqueue.SLURMCluster`` for ``address`` with its workers connected.
    On exit (normal, error or Ctrl-C) the cluster is closed and every worker job it
    submitted is cancelled."""
    where = parse_address(address)
    jobqueue = _jobqueue()
    check_sbatch()
    timeout = where.timeout or float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)
    kwargs = cluster_kwargs(where, env_options())
    import dask

    submitted: set[str] = set()
    found = None
    try:
        with dask.config.set(dask_config(retries)):
            try:
                found = jobqueue.SLURMCluster(**kwargs)
            except HtoolsError:
                raise
            except Exception as exc:  # noqa: BLE001 - bad arguments of many kinds
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise SlurmError(f"cannot create the SLURM cluster for {address!r}: "
                                 f"{type(exc).__name__}: {first}") from None
            test_submit(found.job_script(), address)
            found.scale(jobs=where.jobs)
            with contextlib.suppress(Exception):  # submit now (errors: counted below)
                found.sync(found._correct_state)
            submitted.update(job_ids(found))
            if len(submitted) < where.jobs:
                raise SlurmError(f"sbatch submitted {len(submitted)} of {where.jobs} worker "
                                 f"jobs for {address!r} (its error is above)")
            if not quiet:
                part = f"partition {where.partition!r}" if where.partition else \
                    "the default partition"
                print(f"htools: submitted {where.jobs} SLURM worker jobs to {part} "
                      f"({', '.join(sorted(submitted))})", file=sys.stderr, flush=True)
            wait_for_workers(found, where, timeout, quiet)
            submitted.update(job_ids(found))
            yield found
    finally:
        if found is not None:
            submitted.update(job_ids(found))
            with contextlib.suppress(Exception):
                found.close(timeout=30)
        cancel(sorted(submitted))  # again, directly: close() may have been cut short
