"""The Dask worker plugin of :mod:`htools.usercode.shipping`: one job's script modules,
put in each worker's store (:func:`htools.usercode.script.receive`) as it starts.  A
module of its own because it imports ``distributed``, which the tools load only when
a job runs."""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin

from htools.usercode import script


class ScriptModules(WorkerPlugin):
    """The modules of one job's script, installed in each worker process as it starts."""

    def __init__(self, name: str, modules: tuple[tuple[str, str], ...]):
        self.name, self.modules = name, modules

    def setup(self, worker) -> None:
        script.receive(self.name, self.modules)

    def teardown(self, worker) -> None:
        script.forget(self.name)
