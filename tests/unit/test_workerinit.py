"""The embedded cluster's worker set-up (htools.clusters.workerinit): Dask's statistical
profiler off and a slower event-loop tick, through Dask's config; Ctrl-C's exit."""

from __future__ import annotations

from types import SimpleNamespace

import dask.config
import pytest

from htools.clusters import workerinit
from htools.clusters.workerinit import TICK_MS, monitoring_config


def test_the_profiler_goes_and_the_tick_slows_but_never_speeds_up():
    with dask.config.set({"distributed.admin.tick.interval": "20ms"}):
        assert monitoring_config() == {"distributed.worker.profile.enabled": False,
                                       "distributed.admin.tick.interval": f"{TICK_MS}ms"}
    with dask.config.set({"distributed.admin.tick.interval": "1s"}):
        assert monitoring_config()["distributed.admin.tick.interval"] == "1000ms"


@pytest.mark.parametrize("status,exits", [("running", True), ("closing", False),
                                          ("closed", False), ("closing_gracefully", False)])
def test_ctrl_c_exits_a_running_worker_but_not_one_already_closing(monkeypatch, status,
                                                                    exits):
    """A Ctrl-C as the job ends reaches workers the client is closing: a SystemExit
    then cut their close short (Dask logged a traceback for each cancelled step)."""
    worker = SimpleNamespace(status=SimpleNamespace(name=status))
    monkeypatch.setattr(workerinit, "_worker", [worker])
    if exits:
        with pytest.raises(SystemExit) as e:
            workerinit._quit(2, None)
        assert e.value.code == 130
    else:
        assert workerinit._quit(2, None) is None
