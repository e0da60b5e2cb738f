"""A script's modules to every worker once per job, not in every task's arguments.

A :class:`~htools.usercode.script.Script` carries the modules beside it (up to 10 MB).  Pickled
into each task, they would cross the scheduler once per task: 100,000 tasks of a
script with 1 MB of modules move 100 GB.  :func:`once_per_worker` registers a Dask
worker plugin holding them for the job (the scheduler keeps one copy and hands it to
each worker as it starts, later ones included); while it is registered, Scripts
pickle without their modules (:meth:`Script.__reduce__`) and load them from the
worker's copy, by digest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields, is_dataclass

from distributed.diagnostics.plugin import WorkerPlugin

from htools.errors import ScriptLoadError

carried: set[str] = set()  # on the client: digests whose modules a plugin carries now
_received: dict[str, tuple[tuple[str, str], ...]] = {}  # on a worker: digest -> modules


class ScriptModules(WorkerPlugin):
    """The modules of one script, installed in each worker process as it starts."""

    def __init__(self, digest: str, modules: tuple[tuple[str, str], ...]):
        self.digest, self.modules = digest, modules
        self.name = plugin_name(digest)

    def setup(self, worker) -> None:
        _received[self.digest] = self.modules

    def teardown(self, worker) -> None:
        _received.pop(self.digest, None)


def plugin_name(digest: str) -> str:
    return f"htools-modules-{digest[:16]}"


def received(digest: str, filename: str) -> tuple[tuple[str, str], ...]:
    """On a worker: the modules its plugin brought for the script ``digest``."""
    try:
        return _received[digest]
    except KeyError:
        raise ScriptLoadError(f"script {filename}: the modules shipped with it did not "
                              "reach this worker (its plugin was removed or never ran)"
                              ) from None


_PLAIN = frozenset({str, bytes, int, float, bool, type(None), list, tuple, dict})


def scripts_in(kwargs: Iterable) -> list:
    """The Scripts with modules among task arguments, or one level inside them (a
    frozen spec such as the exchange's StageOne)."""
    from htools.usercode.script import Script

    found: dict[str, Script] = {}
    seen: set[int] = set()  # a job's tasks share their spec and Script objects
    for value in kwargs:
        if type(value) in _PLAIN or id(value) in seen:
            continue
        seen.add(id(value))
        inner = [getattr(value, f.name) for f in fields(value)] \
            if is_dataclass(value) and not isinstance(value, Script) else []
        for v in (value, *inner):
            if isinstance(v, Script) and v.modules and v.digest:
                found[v.digest] = v
    return list(found.values())


@contextmanager
def once_per_worker(client, scripts: list) -> Iterator[None]:
    """While the block runs, ``scripts``' modules travel to each worker once."""
    done: list[str] = []
    try:
        for s in scripts:
            if s.digest not in carried:
                client.register_plugin(ScriptModules(s.digest, s.modules),
                                       name=plugin_name(s.digest))
                carried.add(s.digest)
                done.append(s.digest)
        yield
    finally:
        for digest in done:
            carried.discard(digest)
            try:
                client.unregister_worker_plugin(plugin_name(digest))
            except Exception:  # noqa: BLE001 - a scheduler gone: its plugins went with it
                pass
