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


def test_a_nannys_cancelled_close_is_not_logged_but_its_errors_are(caplog):
    """A Ctrl-C as the job ends: a worker exits while the client closes the cluster, and
    its nanny (in the client) logged the close that the cluster's close cancelled as an
    ERROR with a traceback (the suite caught it under load)."""
    import asyncio
    import logging

    from htools.clusters.connection import quiet_cancelled_closes

    quiet_cancelled_closes()
    quiet_cancelled_closes()  # once, however often a process starts clusters
    nanny = logging.getLogger("distributed.nanny")
    assert sum(type(f).__name__ == "_CancelledClose" for f in nanny.filters) == 1
    with caplog.at_level(logging.ERROR, logger="distributed.nanny"):
        for exc in (asyncio.CancelledError(), RuntimeError("a real failure")):
            try:
                raise exc
            except BaseException:  # noqa: BLE001 - logged as Dask's log_errors does
                nanny.exception("")
    assert [r.exc_info[0] for r in caplog.records] == [RuntimeError]
