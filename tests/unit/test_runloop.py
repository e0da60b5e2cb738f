"""The run loop (htools.runtime.runloop) on a fake client: no cluster, no worker.

``FakeClient`` and ``FakeAsCompleted`` stand in for distributed's ``Client`` and
``as_completed``: ``map`` runs each call at once, in this thread, and the next
``batches()`` turn hands back everything submitted since the last (in reverse order
when asked, to finish tasks out of order).  Through ``DaskExecutor`` they exercise the
loop's three parts -- submit and group, settle (retry, narrow, fatal), deliver
(ordered or not) -- and ``engine.run`` around it (resume, dry run, partial files)."""

from __future__ import annotations

import pytest

from htools.clusters.info import ClusterInfo
from htools.errors import StorageError
from htools.options import RunOptions
from htools.runtime import engine, runloop
from htools.runtime.engine import Task
from htools.runtime.executors import DaskExecutor, LocalExecutor
from htools.runtime.runloop import RunLoop, backoff, call_each, window
from htools.runtime.task import shard_task
from htools.storage.base import retry_policy
from htools.summary import JobSummary, ShardResult


class FakeFuture:
    def __init__(self, key: str, fn, args: tuple):
        self.key, self.released = key, False
        try:
            self.value, self.error, self.status = fn(*args), None, "finished"
        except Exception as e:  # noqa: BLE001 - kept, as a Dask future keeps it
            self.value, self.error, self.status = None, e, "error"

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value

    def release(self) -> None:
        self.released = True


class FakeAsCompleted:
    def __init__(self, reverse: bool = False, per_turn: int = 1 << 30):
        self.queue: list[FakeFuture] = []
        self.reverse, self.per_turn = reverse, per_turn

    def update(self, futures) -> None:
        self.queue.extend(futures)

    def count(self) -> int:
        return len(self.queue)

    @property
    def futures(self) -> list[FakeFuture]:
        return list(self.queue)

    def batches(self):
        while self.queue:
            batch, self.queue = self.queue[:self.per_turn], self.queue[self.per_turn:]
            yield batch[::-1] if self.reverse else batch


class FakeClient:
    def __init__(self, workers: dict | None = None):
        self.maps: list[list[str]] = []  # the keys of each map() call
        self.delays: dict[str, float] = {}
        self.gathers = 0
        self.cancelled: list[str] = []
        self.asked: list[tuple] = []  # client.run's arguments
        self.most_in_flight = 0
        self.ac: FakeAsCompleted | None = None
        self.workers = workers if workers is not None else {"w1": {"nthreads": 2}}

    def map(self, fn, *iterables, key, pure, retries, resources):
        assert pure is False
        self.maps.append(list(key))
        self.delays.update(zip(key, iterables[2]))
        futures = [FakeFuture(k, fn, args) for k, args in zip(key, zip(*iterables))]
        if self.ac is not None:
            self.most_in_flight = max(self.most_in_flight, self.ac.count() + len(futures))
        return futures

    def gather(self, futures):
        self.gathers += 1
        return [f.result() for f in futures]

    def cancel(self, futures) -> None:
        self.cancelled.extend(f.key for f in futures)

    def run(self, fn, *args):
        self.asked.append(args)
        return {}  # no worker runs anything of ours

    def scheduler_info(self):
        return {"workers": self.workers}


def executor(client: FakeClient, *, reverse: bool = False, threads: int = 2,
             per_turn: int = 1 << 30) -> DaskExecutor:
    def make() -> FakeAsCompleted:
        client.ac = FakeAsCompleted(reverse, per_turn)
        return client.ac
    return DaskExecutor(client, threads, as_completed=make)


def ok_task(index: int, output: str = "", seconds: float = 0.0) -> dict:
    r = ShardResult(input=f"in-{index}.tar", output=output, samples_read=index + 1,
                    samples_mapped=index + 1, samples_written=index + 1, seconds=seconds)
    return r.as_dict()


def raising_task(index: int, output: str = "", seconds: float = 0.0) -> dict:
    raise RuntimeError(f"boom in task {index}")


_RUNS: dict[str, int] = {}


def flaky_task(name: str, fails: int, status: int = 503) -> dict:
    _RUNS[name] = _RUNS.get(name, 0) + 1
    with shard_task(f"in-{name}.tar", f"out-{name}.tar") as r:
        r.samples_read = 1
        if _RUNS[name] <= fails:
            raise StorageError(f"http://h/out-{name}.tar", "PUT failed", status)
        r.samples_mapped = r.samples_written = 1
    return r.as_dict()


def opts(**kw) -> RunOptions:
    return RunOptions(**{"quiet": True, "retries": 0, **kw})


def loop(client, tasks, *, reverse=False, per_turn=1 << 30, on_result=None, **kw
         ) -> tuple[RunLoop, JobSummary]:
    o = opts(**{k: kw.pop(k) for k in ("retries", "overwrite") if k in kw})
    summary = JobSummary(tool="t", shards_total=sum(t.shards for t in tasks))
    rl = RunLoop(executor(client, reverse=reverse, per_turn=per_turn), "t",
                 list(enumerate(tasks)), o, summary, on_result=on_result, **kw)
    rl.run()
    return rl, summary.finish()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setenv("HTOOLS_RETRY_BACKOFF", "0.001")
    monkeypatch.setenv("HTOOLS_RETRY_CAP", "0.002")


# ---------------------------------------------------------- submit and group --

def test_a_bounded_window_submitted_and_gathered_in_batches():
    client = FakeClient()
    tasks = [Task(ok_task, {"index": i}, input=f"in-{i}.tar") for i in range(40)]
    _rl, s = loop(client, tasks)
    assert s.ok and s.shards_done == 40 and s.samples_read == sum(range(1, 41))
    assert len(client.maps[0]) == window(2, False) == 16  # one message for the window
    assert client.most_in_flight <= 16
    assert len(client.maps) == client.gathers == 3  # 16 + 16 + 8: one map, one gather a turn


def many_outputs_task(index: int, outputs: list[tuple[str, int]]) -> dict:
    r = ShardResult(input=f"in-{index}.tar", samples_read=len(outputs),
                    samples_mapped=len(outputs), samples_written=len(outputs),
                    output=outputs[-1][0])
    return r.as_dict()


def test_a_long_argument_list_travels_packed_and_arrives_whole():
    """What the scheduler keeps of a sent task (its message log) is one small bytes
    object for a task of many shards, not their URLs as Python objects."""
    from htools.runtime.executors import PACK_ITEMS, call, pack

    small = {"index": 1, "outputs": [("o.tar", 0)] * (PACK_ITEMS - 1)}
    assert pack(small) is small  # a short task goes as it is
    outs = [(f"/data/out/shard-{j:06d}.tar", j) for j in range(2048)]
    packed = pack({"index": 7, "outputs": outs})
    assert isinstance(packed, bytes) and len(packed) < 8 * len(outs)
    assert call(many_outputs_task, packed)["output"] == outs[-1][0]
    client = FakeClient()  # and through the loop: each task's own arguments arrive
    tasks = [Task(many_outputs_task, {"index": i, "outputs": outs[i:i + 100]},
                  input=f"in-{i}.tar", output=outs[i + 99][0]) for i in range(20)]
    got: dict[int, dict] = {}
    _rl, s = loop(client, tasks, on_result=lambda i, r: got.setdefault(i, r))
    assert s.ok and s.samples_read == 2000
    assert all(got[i]["output"] == outs[i + 99][0] for i in range(20))


def test_short_tasks_are_grouped_each_with_its_own_result():
    client = FakeClient()
    tasks = [Task(ok_task, {"index": i, "seconds": 0.001}, input=f"in-{i}.tar")
             for i in range(400)]
    got: dict[int, dict] = {}
    _rl, s = loop(client, tasks, group=True, on_result=lambda i, r: got.setdefault(i, r))
    assert s.ok and s.shards_done == 400 and sorted(got) == list(range(400))
    assert all(got[i]["input"] == f"in-{i}.tar" for i in got)
    calls = sum(len(keys) for keys in client.maps)
    assert calls < 200  # several tasks a call once their run time was known
    assert any(k.count("-") == 3 and k.split("-")[-1] != "1" for keys in client.maps
               for k in keys)  # a group's key names its first and last task


def test_a_group_that_raises_runs_each_task_alone():
    each = [(5,), (6,)]
    with pytest.raises(RuntimeError):
        call_each(raising_task, {}, ("index",), each)
    client = FakeClient()
    tasks = [Task(ok_task, {"index": i, "seconds": 0.001}, input=f"in-{i}.tar")
             for i in range(300)]
    tasks[200] = Task(raising_task, {"index": 200, "seconds": 0.0}, input="in-200.tar")
    _rl, s = loop(client, tasks, group=True)
    assert (s.shards_done, s.shards_failed) == (299, 1)
    assert "boom in task 200" in s.failures[0]["error"]


# --------------------------------------------------------------------- settle --

def test_transient_failures_run_again_after_the_policy_backoff():
    client = FakeClient()
    tasks = [Task(flaky_task, {"name": f"s-{i}", "fails": i}, input=f"in-{i}") for i in range(3)]
    _rl, s = loop(client, tasks, retries=2)
    assert s.ok and s.shards_retried == 2 and len(s.retries) == 3
    retried = {k: d for k, d in client.delays.items() if not k.endswith("-1")}
    assert len(retried) == 3 and all(0 < d <= 0.002 for d in retried.values())
    assert all(d == 0 for k, d in client.delays.items() if k.endswith("-1"))


def test_retries_run_out_and_permanent_errors_are_not_retried():
    client = FakeClient()
    tasks = [Task(flaky_task, {"name": "out-t", "fails": 9}, input="t"),
             Task(flaky_task, {"name": "out-p", "fails": 1, "status": 403}, input="p")]
    _rl, s = loop(client, tasks, retries=2)
    assert s.shards_failed == 2 and _RUNS["out-t"] == 3 and _RUNS["out-p"] == 1


def multi(names: list[str], flaky: str) -> list[dict]:
    return [flaky_task(n, 1 if n == flaky else 0) for n in names]


def narrow(task: Task, outputs: list[str]) -> Task:
    names = [n for n in task.kwargs["names"] if f"out-{n}.tar" in outputs]
    return Task(multi, {**task.kwargs, "names": names},
                outputs=[f"out-{n}.tar" for n in names], narrow=narrow)


def test_a_multi_output_task_is_narrowed_to_its_failed_outputs():
    client = FakeClient()
    names = ["n-a", "n-b", "n-c"]
    task = Task(multi, {"names": names, "flaky": "n-b"},
                outputs=[f"out-{n}.tar" for n in names], narrow=narrow)
    got: list[dict] = []
    _rl, s = loop(client, [task], retries=1, on_result=lambda i, r: got.append(r))
    assert s.ok and s.shards_done == 3 and s.shards_retried == 1
    assert [_RUNS[n] for n in names] == [1, 2, 1]
    assert [r["output"] for r in got] == ["out-n-a.tar", "out-n-c.tar", "out-n-b.tar"]


def fatal_task(index: int) -> dict:
    r = ShardResult(input=f"in-{index}.tar", output=f"o-{index}.tar")
    r.fail("the script cannot load")
    d = r.as_dict()
    d["fatal"] = True
    return d


def test_a_fatal_result_stops_the_job_and_fails_the_rest_with_its_error():
    client = FakeClient()
    tasks = [Task(fatal_task, {"index": 0}, input="in-0.tar", output="o-0.tar")]
    tasks += [Task(ok_task, {"index": i}, input=f"in-{i}.tar", output=f"o-{i}.tar")
              for i in range(1, 100)]
    got: dict[int, dict] = {}
    _rl, s = loop(client, tasks, on_result=lambda i, r: got.setdefault(i, r))
    ran = sum(len(k) for k in client.maps)
    assert ran == 16  # the first window only
    assert s.shards_failed == 100 - 15 and sorted(got) == list(range(100))
    assert got[99]["error"] == "the script cannot load"


# -------------------------------------------------------------------- deliver --

def test_ordered_delivery_waits_for_early_results():
    client = FakeClient()
    tasks = [Task(ok_task, {"index": i}, input=f"in-{i}.tar") for i in range(30)]
    order: list[int] = []
    rl, s = loop(client, tasks, reverse=True, ordered=True,
                 on_result=lambda i, r: order.append(i))
    assert order == list(range(30)) and s.shards_done == 30
    assert len(client.maps[0]) == window(2, True) == 6  # fewer ahead when ordered


def test_progress_sees_every_shard_and_closes(monkeypatch):
    seen: list = []

    class Bar:
        def update(self, r):
            seen.append(r["input"])

        def close(self):
            seen.append("closed")

    monkeypatch.setattr(runloop, "progress_display", lambda *a, **k: Bar())
    tasks = [Task(ok_task, {"index": i}, input=f"in-{i}.tar") for i in range(5)]
    loop(FakeClient(), tasks)
    assert sorted(seen[:-1]) == [f"in-{i}.tar" for i in range(5)] and seen[-1] == "closed"


def test_overwrite_removes_the_stale_output_of_a_failed_shard(tmp_path):
    stale = tmp_path / "o-0.tar"
    stale.write_bytes(b"from an earlier run")
    tasks = [Task(raising_task, {"index": 0}, input="in-0.tar", output=str(stale))]
    _rl, s = loop(FakeClient(), tasks, overwrite=True)
    assert s.shards_failed == 1 and not stale.exists()


def test_ctrl_c_cancels_this_jobs_tasks_and_raises():
    client = FakeClient()
    tasks = [Task(ok_task, {"index": i}, input=f"in-{i}.tar") for i in range(40)]

    def stop(i: int, r: dict) -> None:
        if i == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop(client, tasks, on_result=stop, per_turn=4)
    prefix = client.asked[0][0]
    assert len(client.cancelled) == 12 and all(k.startswith(prefix) for k in client.cancelled)
    assert prefix.startswith("t-")  # the workers were asked for this job's keys only


# ------------------------------------------------------------- engine.run --

def test_engine_run_resumes_and_dry_runs_on_any_executor(tmp_path):
    done = tmp_path / "o-1.tar"
    done.write_bytes(b"done before")
    outs = [str(tmp_path / f"o-{i}.tar") for i in range(3)]
    tasks = [Task(ok_task, {"index": i, "output": o}, input=f"in-{i}.tar", output=o)
             for i, o in enumerate(outs)]
    dry = engine.run("t", tasks, opts(dry_run=True, resume=True),
                     executor=executor(FakeClient()))
    assert dry.plan[1].endswith("(exists, skipped)") and dry.shards_done == 0
    client = FakeClient()
    s = engine.run("t", tasks, opts(resume=True), executor=executor(client))
    assert (s.shards_done, s.shards_skipped) == (2, 1)
    assert len(client.maps) == 1 and len(client.maps[0]) == 2  # the skipped one not run


def test_the_local_executor_runs_the_same_loop_and_backoff():
    tasks = [Task(flaky_task, {"name": f"l-{i}", "fails": 1}, input=f"in-{i}") for i in range(4)]
    s = engine.run("t", tasks, opts(retries=1), executor=LocalExecutor(2))
    assert s.ok and s.shards_done == 4 and s.shards_retried == 4
    assert all(_RUNS[f"l-{i}"] == 2 for i in range(4))


def test_only_dask_tasks_travel_compacted():
    """A result crosses to the client compacted (the values its task changed) only from
    a Dask worker, and arrives whole; the local executor hands the task's dict as is."""
    from htools.runtime.executors import Call, dask_call

    whole = ok_task(3)
    assert dask_call(ok_task, {"index": 3}) != whole  # compacted for the trip
    dx = executor(FakeClient())
    dx.submit([Call("d", ok_task, {"index": 3})])
    assert [d.value for done in dx.batches() for d in done] == [whole]
    with LocalExecutor(1) as lx:
        lx.submit([Call("l", ok_task, {"index": 3})])
        (done,) = [d for batch in lx.batches() for d in batch]
    assert done.value == whole and list(done.value) == list(whole)


def test_backoff_follows_the_retry_policy(monkeypatch):
    monkeypatch.setenv("HTOOLS_RETRY_BACKOFF", "4")
    monkeypatch.setenv("HTOOLS_RETRY_CAP", "6")
    policy = retry_policy({"retries": 5})
    assert 2 <= backoff(policy, 1) <= 4 and 3 <= backoff(policy, 3) <= 6


def test_cluster_info_from_the_scheduler():
    info = ClusterInfo.of(FakeClient({"a": {"nthreads": 2, "memory_limit": 4 << 30},
                                      "b": {"nthreads": 3, "memory_limit": 2 << 30}}))
    assert info == ClusterInfo(threads=5, memory=2 << 30, embedded=False)
    assert ClusterInfo.of(object()) == ClusterInfo(threads=1, memory=None, embedded=False)
