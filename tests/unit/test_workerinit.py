"""The embedded cluster's worker preload (htools.clusters.workerinit) drops Dask's
statistical profiler and slows the event-loop tick before the worker starts them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from htools.clusters import workerinit
from htools.clusters.workerinit import TICK_MS, quiet_monitoring


class FakeCallback:
    def __init__(self, ms: float):
        self.callback_time = ms
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


def test_the_profiler_goes_and_the_tick_slows():
    profile, cycle, tick = FakeCallback(10), FakeCallback(1000), FakeCallback(20)
    heartbeat = FakeCallback(500)
    worker = SimpleNamespace(periodic_callbacks={"profile": profile, "profile-cycle": cycle,
                                                 "tick": tick, "heartbeat": heartbeat})
    quiet_monitoring(worker)
    assert sorted(worker.periodic_callbacks) == ["heartbeat", "tick"]
    assert profile.stopped and cycle.stopped
    assert tick.callback_time == TICK_MS and heartbeat.callback_time == 500


def test_a_slower_tick_or_no_profiler_is_left_as_it_is():
    tick = FakeCallback(1000)
    worker = SimpleNamespace(periodic_callbacks={"tick": tick})
    quiet_monitoring(worker)
    assert worker.periodic_callbacks == {"tick": tick} and tick.callback_time == 1000
    quiet_monitoring(SimpleNamespace())  # not a worker: nothing to do


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
