"""The embedded cluster's worker preload (htools.clusters.workerinit) drops Dask's
statistical profiler and slows the event-loop tick before the worker starts them."""

from __future__ import annotations

from types import SimpleNamespace

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
