"""Checks before a job starts anything: a typo in a host, bucket or path fails in
seconds, with one line naming the first URL that cannot be reached, before a cluster
starts or an input is read.

* every distinct host of the job's http(s) URLs, and the ``endpoint_url`` of the S3/GCS
  storage options, must resolve (a host that does not resolve is never retried) and
  accept a TCP connection (a refused one fails at once, naming host and port);
* local inputs must all exist; of remote inputs the first is asked for its size;
* the outputs' location must be writable: a local parent that is a file, or a folder
  that cannot be made, is refused; on object stores and HTTP a tiny probe object is
  written and deleted (a missing bucket, 401/403 come back with the server's reason;
  a 5xx is tried again and, if it persists, left to the job's own retries).
  ``--dry-run`` writes nothing, so it checks outputs only as far as reading goes.

Probes use a short retry policy: a refused connection fails in about a second.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
import weakref
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from htools import storage
from htools.clusters.info import is_embedded
from htools.errors import HtoolsError, SizeUnknown, StorageError, hide_credentials
from htools.storage.local import local_path, nearest_existing

PROBE_RETRIES = {"retries": 1, "backoff": 0.2, "backoff_cap": 0.5}
PROBE_WRITES = 3  # a write probe that fails transiently is tried again, then let be
CONNECT_WAIT = 2.0  # seconds a pre-flight TCP connect to a job's server may take


class Unreachable(HtoolsError):
    """An input or output location that the job could not use."""


def check(inputs: Iterable[str], outputs: Iterable[str], options: dict | None, *,
          write: bool = True) -> None:
    """Raise :class:`Unreachable` (one line) for the first input or output that cannot
    be reached; return quietly when all can."""
    inputs = [u for u in inputs if u and not storage.is_stream(u)]
    outputs = [u for u in outputs if u and not storage.is_stream(u)]
    resolved = storage.resolve_options(options)
    probe = {proto: {**resolved.get(proto, {}), **PROBE_RETRIES}
             for proto in ("file", "http", "s3", "gs")}
    _resolve_hosts(inputs + outputs, resolved)
    _check_inputs(inputs, probe)
    _check_outputs(outputs, probe, write)


def _resolve_hosts(urls: list[str], options: dict) -> None:
    hosts: dict[tuple[str, int], str] = {}
    for url in urls:
        proto = storage.protocol(url)
        if proto == "http":
            where = url
        elif proto in ("s3", "gs") and options.get(proto, {}).get("endpoint_url"):
            where = str(options[proto]["endpoint_url"])
        else:
            continue
        parts = urlsplit(where)
        if parts.hostname:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            hosts.setdefault((parts.hostname, port), url)
    for (host, port), url in hosts.items():
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            if e.errno == socket.EAI_AGAIN:
                continue  # a temporary lookup failure: let the job's own retries see it
            raise Unreachable(f"{hide_credentials(url)}: the host name {host!r} does not "
                              f"resolve ({e.strerror or e}); check the URL") from None
        _check_listening(host, port, url)


def _check_listening(host: str, port: int, url: str) -> None:
    """A refused connection is an answer, not a passing fault: nothing listens there, and
    retrying each request with backoff would only make the job fail slowly.  A timeout
    or another error gives no verdict (the job's own retries deal with it)."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_WAIT):
            return
    except ConnectionRefusedError:
        raise Unreachable(f"{hide_credentials(url)}: nothing listens at {host}:{port} "
                          "(connection refused); is the server running?") from None
    except OSError:
        return


def _check_inputs(inputs: list[str], options: dict) -> None:
    local = [u for u in inputs if storage.protocol(u) == "file"]
    missing = [u for u in local if not os.path.exists(local_path(u))]
    if missing:
        more = f" ({len(missing)} of {len(local)} local inputs are missing)" \
            if len(missing) > 1 else ""
        raise Unreachable(f"input {missing[0]} does not exist{more}")
    remote = [u for u in inputs if storage.protocol(u) != "file"]
    if remote:
        try:
            storage.size(remote[0], options)
        except SizeUnknown:
            pass  # it answered: the length is learnt by reading
        except StorageError as e:
            raise Unreachable(f"cannot read input {e}") from None


def _check_outputs(outputs: list[str], options: dict, write: bool) -> None:
    folders: list[str] = []
    for url in outputs:
        folder = url.rsplit("/", 1)[0] + "/" if "/" in url else "./"
        if folder not in folders:
            folders.append(folder)
    for folder in folders:
        if storage.protocol(folder) == "file":
            _check_local_folder(folder)
        elif write:
            _probe_write(folder, options)
            break  # one remote folder tells whether the bucket/server takes writes


def _check_local_folder(folder: str) -> None:
    path = os.path.abspath(local_path(folder))
    probe = nearest_existing(path)
    if not os.path.isdir(probe):
        raise Unreachable(f"cannot write outputs under {path}: {probe} is a file, not a "
                          "folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise Unreachable(f"cannot write outputs under {path}: {probe} is not writable")


def _probe_write(folder: str, options: dict) -> None:
    url = storage.join(folder, f".htools-probe-{uuid.uuid4().hex[:12]}")
    try:
        for attempt in range(PROBE_WRITES):
            try:
                with storage.open_write(url, options) as out:
                    out.write(b"htools checks that it may write here\n")
                return
            except StorageError as e:
                if not e.transient:
                    raise Unreachable(f"cannot write outputs under {hide_credentials(folder)}: "
                                      f"{e.why}" + (f" (HTTP {e.status})" if e.status else "")
                                      ) from None
                time.sleep(PROBE_RETRIES["backoff"] * (attempt + 1))
        # the server keeps answering 5xx or dropping writes: no verdict; the job's own
        # retries (per request, then per shard) deal with a passing fault
    finally:
        try:  # written, or half-written when interrupted: never left behind
            storage.delete(url, options)
        except StorageError:
            pass  # not deletable (or never made): the job itself may still write


# ------------------------------------------------------- what workers see --

WORKERS_HINT = ("give a path on a filesystem that every worker mounts at the same place, "
                "or an http(s)://, s3:// or gs:// URL")
# client -> local paths its workers were seen to have
_checked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def unseen(client: Any, inputs: Iterable[Any], outputs: Iterable[Any] = ()) -> list[str]:
    """The local paths of a job (URLs, or lists of them, as a task's input/output) that
    exist on this machine but not on one of ``client``'s workers: of ``inputs`` those
    that exist here, of ``outputs`` (and scratch) the nearest folder that exists here.
    Empty for an embedded cluster; each path is asked about once per client."""
    if client is None or is_embedded(client):
        return []
    local: dict[str, None] = {}  # in order, each once (a list's `in` was N^2 at 10^6)
    for p, write in [(p, False) for p in _flat(inputs)] + [(p, True) for p in _flat(outputs)]:
        if not isinstance(p, str) or not p or storage.protocol(p) != "file":
            continue
        path = os.path.abspath(local_path(p))
        there = _nearest_existing(path) if write else path if os.path.exists(path) else None
        if there is not None:
            local[there] = None
    try:
        done = _checked.setdefault(client, set())
    except TypeError:  # not weakly referable: ask every time
        done = set()
    ask = [p for p in local if p not in done]
    if not ask:
        return []
    try:
        workers = sorted(client.scheduler_info().get("workers", {}))
        if not workers:
            return []  # none yet: the job's own tasks will tell
        answer = client.run(_visible, ask, workers=workers[:1])
        flags = next(iter(answer.values()))
    except Exception:  # noqa: BLE001 - a worker that cannot answer: no verdict
        return []
    hidden = [p for p, ok in zip(ask, flags) if not ok]
    done.update(p for p, ok in zip(ask, flags) if ok)
    return hidden


def check_workers(client: Any, inputs: Iterable[Any], outputs: Iterable[Any] = ()) -> None:
    """Raise :class:`Unreachable` (one line) when a local input, output or scratch path
    of the job exists here but not on the workers of a cluster elsewhere (asked of one
    worker, before anything is submitted)."""
    hidden = unseen(client, inputs, outputs)
    if hidden:
        more = f" (and {len(hidden) - 1} more local paths)" if len(hidden) > 1 else ""
        raise Unreachable(f"{hidden[0]} exists here but not on the Dask workers{more}: "
                          f"{WORKERS_HINT}")


def _flat(paths: Iterable[Any]) -> Iterable[Any]:
    for p in paths:
        if isinstance(p, (list, tuple)):
            yield from p
        else:
            yield p


def _nearest_existing(path: str) -> str | None:
    """``path`` or its nearest existing folder (an output or scratch folder may not exist
    yet); None for a path that names nothing here (not a path at all, e.g. a label)."""
    if os.path.exists(path):
        return path
    folder = os.path.dirname(path)
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
    return folder if folder != os.path.dirname(folder) else None


def _visible(paths: list[str]) -> list[bool]:
    """Run on a worker: which of ``paths`` exist there."""
    return [os.path.exists(p) for p in paths]
