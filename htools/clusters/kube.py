"""Dask clusters on Kubernetes (``--cluster k8s://NAME?workers=N&image=...``).

Runs through dask-kubernetes' operator (the ``DaskCluster`` custom resource; the
Dask operator must be installed in the Kubernetes cluster).  :func:`cluster`
connects to an existing ``DaskCluster`` called NAME if there is one, else creates
one from :func:`cluster_spec`, and on exit deletes only a cluster it created.

Address query parameters (all optional):

* ``workers=N``   worker pods of a new cluster (default 2)
* ``image=REF``   container image with htools installed (default ``$HTOOLS_K8S_IMAGE``
  or ``htools:latest``; see k8s/Dockerfile)
* ``namespace=NS`` Kubernetes namespace (default: the kube config's)
* ``threads=N``   threads per worker (default 1: one task per worker process)

dask-kubernetes is imported lazily: without it (``pip install 'htools-wds[k8s]'``)
or without a kube config, ``k8s://`` fails with one clear :class:`HtoolsError`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from htools.clusters.address import positive_int
from htools.errors import HtoolsError

SCHEME = "k8s://"
IMAGE_ENV = "HTOOLS_K8S_IMAGE"
DEFAULT_IMAGE = "htools:latest"
DEFAULT_WORKERS = 2
WORKER_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
SCHEDULER_COMMAND = ["dask", "scheduler"]
WORKER_COMMAND = ["dask", "worker"]
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$")
_SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
_PARAMS = ("workers", "image", "namespace", "threads")


class KubeError(HtoolsError):
    """A Kubernetes cluster cannot be used (bad address, no dask-kubernetes, no config)."""


@dataclass(frozen=True)
class KubeAddress:
    """A parsed ``k8s://NAME?workers=N&image=...&namespace=...&threads=N``."""

    name: str
    workers: int | None = None
    image: str | None = None
    namespace: str | None = None
    threads: int = 1


def parse_address(address: str) -> KubeAddress:
    """Parse a ``k8s://`` cluster address (raises :class:`KubeError` when malformed)."""
    if not address.startswith(SCHEME):
        raise KubeError(f"not a Kubernetes cluster address: {address!r} (use k8s://NAME)")
    parts = urlsplit(address)
    name = (parts.netloc + parts.path).strip("/")
    if not _NAME.match(name):
        raise KubeError(f"bad Kubernetes cluster name {name!r} in {address!r}: use lowercase "
                        "letters, digits and '-', starting with a letter (at most 42 characters)")
    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _PARAMS:
            raise KubeError(f"unknown parameter {key!r} in {address!r} "
                            f"(known: {', '.join(_PARAMS)})")
        if key in params:
            raise KubeError(f"parameter {key!r} given twice in {address!r}")
        if not value:
            raise KubeError(f"parameter {key!r} has no value in {address!r}")
        params[key] = value
    return KubeAddress(name=name, workers=_positive(params, "workers", address),
                       image=params.get("image"), namespace=params.get("namespace"),
                       threads=_positive(params, "threads", address) or 1)


def _positive(params: Mapping[str, str], key: str, address: str) -> int | None:
    return positive_int(params, key, address, KubeError)


def _dask_kubernetes() -> Any:
    try:
        from dask_kubernetes import operator
    except ImportError as exc:
        raise KubeError("k8s:// clusters need dask-kubernetes: pip install 'htools-wds[k8s]' "
                        f"({exc})") from None
    return operator


def cluster_spec(name: str, image: str | None = None, workers: int | None = None, *,
                 threads: int = 1, env: Mapping[str, str] | None = None,
                 resources: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``DaskCluster`` resource htools creates: dask-kubernetes'
    ``make_cluster_spec`` with the commands current ``distributed`` installs
    (``dask scheduler``, ``dask worker`` — not ``dask-scheduler``/``dask-worker``),
    one thread per worker, and ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``."""
    operator = _dask_kubernetes()
    image = image or os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
    variables = {**WORKER_ENV, **(env or {})}
    spec = operator.make_cluster_spec(
        name=name, image=image, n_workers=workers or DEFAULT_WORKERS, env=dict(variables),
        resources=dict(resources) if resources else None,
        worker_command=" ".join(WORKER_COMMAND))
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    worker = spec["spec"]["worker"]["spec"]["containers"][0]
    scheduler["args"] = _with_command(scheduler["args"], SCHEDULER_COMMAND)
    worker["args"] = _with_command(worker["args"], WORKER_COMMAND) + ["--nthreads", str(threads)]
    spec["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "htools"}
    return _drop_none(spec)


def _with_command(args: list[str], command: list[str]) -> list[str]:
    """``args`` with its leading command (``dask-worker``, ``dask worker``...) replaced."""
    rest = list(args)
    if rest and rest[0] == "dask":
        rest = rest[2:]
    elif rest and rest[0].startswith("dask-"):
        rest = rest[1:]
    return [*command, *rest]


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def check_kube_config(environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`KubeError` unless a kube config (or an in-cluster service
    account) is there to talk to Kubernetes with."""
    env = os.environ if environ is None else environ
    if env.get("KUBERNETES_SERVICE_HOST") and _SERVICE_ACCOUNT_TOKEN.exists():
        return
    if env.get("KUBECONFIG"):
        paths = [Path(p) for p in env["KUBECONFIG"].split(os.pathsep) if p]
        where = "$KUBECONFIG"
    else:
        paths = [Path(env.get("HOME") or Path.home()) / ".kube" / "config"]
        where = "~/.kube/config"
    for path in paths:
        if _has_context(path):
            return
    raise KubeError(f"no Kubernetes configuration: {where} names no usable context "
                    "(k8s:// needs kubectl access to a cluster running the Dask operator)")


def _has_context(path: Path) -> bool:
    try:
        import yaml

        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except Exception:  # noqa: BLE001 - unreadable or not YAML: not a usable config
        return False
    return isinstance(config, dict) and bool(config.get("contexts"))


@contextlib.contextmanager
def cluster(address: str, quiet: bool = False) -> Iterator[Any]:
    """A ``dask_kubernetes.operator.KubeCluster`` for ``address``: connected to the
    existing ``DaskCluster`` NAME, else created from :func:`cluster_spec`.  Closed on
    exit; deleted only if this call created it."""
    where = parse_address(address)
    operator = _dask_kubernetes()
    check_kube_config()
    ns = f" in namespace {where.namespace!r}" if where.namespace else ""
    from dask_kubernetes.operator.kubecluster.kubecluster import CreateMode as mode

    kube = operator.KubeCluster
    try:
        try:
            found = kube(name=where.name, namespace=where.namespace, quiet=True,
                         create_mode=mode.CONNECT_ONLY, shutdown_on_close=False)
            created = False
        except ValueError as exc:
            if "doesn't already exist" not in str(exc):
                raise
            spec = cluster_spec(where.name, where.image, where.workers, threads=where.threads)
            found = kube(custom_cluster_spec=spec, namespace=where.namespace, quiet=quiet,
                         create_mode=mode.CREATE_ONLY, shutdown_on_close=True)
            created = True
    except HtoolsError:
        raise
    except Exception as exc:  # noqa: BLE001 - kr8s/httpx/kopf errors of many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise KubeError(f"cannot use Kubernetes Dask cluster {where.name!r}{ns}: "
                        f"{type(exc).__name__}: {first}") from None
    if not quiet:
        verb = "created" if created else "connected to"
        print(f"htools: {verb} Kubernetes Dask cluster {where.name!r}{ns}", file=sys.stderr,
              flush=True)
        if not created and where.workers:
            print(f"htools: cluster {where.name!r} exists; workers={where.workers} ignored "
                  "(scale it with kubectl)", file=sys.stderr, flush=True)
    try:
        yield found
    finally:
        found.close()
