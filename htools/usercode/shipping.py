"""A script's modules to every worker once per job, not in every task's arguments.

A :class:`~htools.usercode.script.Script` carries the modules beside it (up to 10 MB).  Pickled
into each task, they would cross the scheduler once per task: 100,000 tasks of a
script with 1 MB of modules move 100 GB.  A tool makes one :class:`Shipment` per job,
builds its tasks with :attr:`Shipment.script` (the Script without its modules, naming
the job's plugin) and hands the shipment to the run (``engine.run(..., shipment=)``),
which registers the plugin for the job while its client runs it
(:meth:`Shipment.registered`): the scheduler keeps one copy and gives it to each worker
as it starts, later ones included.  Each job's plugin has a name of its own, so two
jobs of the same script at once in one client never remove each other's modules.
Nothing global decides how a Script pickles, and no task argument is searched.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from htools.usercode.script import Script

PLUGIN_PREFIX = "htools-modules-"


class Shipment:
    """One job's script on its way to the workers: :attr:`script` is what its tasks
    carry (without the modules when there are any: a plugin brings them)."""

    def __init__(self, script: Script | None):
        self.full = script
        self.name = ""  # the job's worker plugin ("" when there is nothing to ship)
        self.script = script
        if script is not None and script.modules:
            self.name = f"{PLUGIN_PREFIX}{script.digest[:16]}-{uuid.uuid4().hex[:8]}"
            self.script = script.without_modules(self.name)

    @contextmanager
    def registered(self, client: Any) -> Iterator[None]:
        """While the block runs, the modules are installed in each of ``client``'s
        workers (as each starts); this job's plugin, and only it, is removed after."""
        if not self.name:
            yield
            return
        from htools.usercode.workerplugin import ScriptModules  # imports distributed

        client.register_plugin(ScriptModules(self.name, self.full.modules), name=self.name)
        try:
            yield
        finally:
            try:
                client.unregister_worker_plugin(self.name)
            except Exception:  # noqa: BLE001 - a scheduler gone: its plugins went with it
                pass
