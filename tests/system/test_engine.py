"""htools.runtime.engine.run on a real in-process Dask cluster (threads, no worker processes):
every task's result reaches the summary, ``ordered`` hands results on in task order
even when they finish out of order, a task that raises becomes a failed shard, existing
outputs are refused unless resumed (then skipped), and ``-`` is refused.

Uses only engine.run, RunOptions (client, resume, overwrite, retries), Task and
plan_outputs.  Task functions are top-level, as Dask needs."""

from __future__ import annotations

import threading
import uuid

import pytest

from htools.errors import HtoolsError
from htools.options import RunOptions
from htools.runtime.engine import Task, plan_outputs, run
from htools.summary import ShardResult

# Events shared by the tasks of one test: the workers are threads of this process.
_EVENTS: dict[str, threading.Event] = {}
_FINISHED: dict[str, list[int]] = {}
_LOCK = threading.Lock()


def count_task(index: int, output: str = "", run_id: str = "") -> dict:
    """Reads ``index + 1`` samples, maps them all; records when it finished."""
    r = ShardResult(input=f"in-{index}.tar", output=output, samples_read=index + 1,
                    samples_mapped=index + 1, samples_written=index + 1, bytes_in=10 * index)
    if run_id:
        with _LOCK:
            _FINISHED[run_id].append(index)
        _EVENTS[run_id].set()
    return r.as_dict()


def late_first_task(run_id: str) -> dict:
    """Task 0: finishes only after some later task has finished (bounded wait, so a
    scheduler that ran everything on one thread fails the test instead of hanging it)."""
    _EVENTS[run_id].wait(timeout=30)
    return count_task(0, run_id=run_id)


def raising_task(index: int) -> dict:
    raise RuntimeError(f"boom in task {index}")


def must_not_run(output: str) -> dict:
    raise AssertionError(f"ran the task of an existing output {output}")


def opts(client, **kw) -> RunOptions:
    return RunOptions(**{"client": client, "quiet": True, "retries": 0, **kw})


# ------------------------------------------------------------------ results --

def test_every_result_reaches_the_summary(threads_client):
    tasks = [Task(count_task, {"index": i}, input=f"in-{i}.tar") for i in range(12)]
    seen: dict[int, dict] = {}
    s = run("t", tasks, opts(threads_client), on_result=lambda i, r: seen.setdefault(i, r))
    assert s.ok and (s.shards_total, s.shards_done, s.shards_failed) == (12, 12, 0)
    assert s.samples_read == s.samples_written == sum(i + 1 for i in range(12))
    assert s.bytes_in == 10 * sum(range(12))
    assert sorted(seen) == list(range(12))
    assert all(seen[i]["input"] == f"in-{i}.tar" for i in seen)


def test_ordered_results_arrive_in_task_order(threads_client):
    run_id = uuid.uuid4().hex
    _EVENTS[run_id], _FINISHED[run_id] = threading.Event(), []
    n = 10
    tasks = [Task(late_first_task, {"run_id": run_id}, input="in-0.tar")]
    tasks += [Task(count_task, {"index": i, "run_id": run_id}, input=f"in-{i}.tar")
              for i in range(1, n)]
    order: list[int] = []
    results: list[dict] = []

    def on_result(i: int, r: dict) -> None:
        order.append(i)
        results.append(r)

    s = run("t", tasks, opts(threads_client), on_result=on_result, ordered=True)
    finished = _FINISHED.pop(run_id)
    del _EVENTS[run_id]
    assert finished[0] != 0 and sorted(finished) == list(range(n))  # really out of order
    assert order == list(range(n))
    assert [r["input"] for r in results] == [f"in-{i}.tar" for i in range(n)]
    assert s.ok and s.shards_done == n and s.samples_read == sum(range(1, n + 1))


def test_a_task_that_raises_is_a_failed_shard(threads_client, tmp_path):
    out = str(tmp_path / "o-1.tar")
    tasks = [Task(count_task, {"index": 0}, input="in-0.tar"),
             Task(raising_task, {"index": 1}, input="in-1.tar", output=out),
             Task(count_task, {"index": 2}, input="in-2.tar")]
    got: dict[int, dict] = {}
    s = run("t", tasks, opts(threads_client), on_result=lambda i, r: got.setdefault(i, r))
    assert not s.ok and (s.shards_done, s.shards_failed) == (2, 1)
    (failure,) = s.failures
    assert failure["input"] == "in-1.tar" and failure["output"] == out
    assert "RuntimeError" in failure["error"] and "boom in task 1" in failure["error"]
    assert got[1]["status"] == "failed" and got[0]["status"] == got[2]["status"] == "ok"
    assert s.samples_read == 1 + 3  # the failed task read nothing that it reported


# ------------------------------------------------------------------ outputs --

def existing(tmp_path, *names: str) -> list[str]:
    urls = []
    for name in names:
        p = tmp_path / name
        p.write_bytes(b"done before")
        urls.append(str(p))
    return urls


def test_plan_outputs_refuses_existing_outputs_unless_told(tmp_path):
    present = existing(tmp_path, "o-0.tar", "o-2.tar")
    outputs = [present[0], str(tmp_path / "o-1.tar"), present[1], ""]
    with pytest.raises(HtoolsError) as info:
        plan_outputs(outputs, RunOptions())
    message = str(info.value)
    assert message.startswith("2 output(s) already exist") and "--resume" in message
    assert "o-0.tar" in message and "o-1.tar" not in message
    assert plan_outputs(outputs, RunOptions(resume=True)) == set(present)
    assert plan_outputs(outputs, RunOptions(overwrite=True)) == set()
    assert plan_outputs([str(tmp_path / "new.tar")], RunOptions()) == set()


def test_run_refuses_existing_outputs_before_running_anything(threads_client, tmp_path):
    (out,) = existing(tmp_path, "o-0.tar")
    tasks = [Task(must_not_run, {"output": out}, input="in-0.tar", output=out)]
    with pytest.raises(HtoolsError, match="already exist"):
        run("t", tasks, opts(threads_client))


def test_resume_skips_existing_outputs(threads_client, tmp_path):
    (done,) = existing(tmp_path, "o-1.tar")
    outs = [str(tmp_path / f"o-{i}.tar") for i in range(3)]
    tasks = [Task(count_task, {"index": i, "output": o}, input=f"in-{i}.tar", output=o)
             for i, o in enumerate(outs)]
    tasks[1] = Task(must_not_run, {"output": done}, input="in-1.tar", output=done)
    got: dict[int, dict] = {}
    s = run("t", tasks, opts(threads_client, resume=True), on_result=lambda i, r: got.setdefault(i, r))
    assert s.ok and (s.shards_done, s.shards_skipped, s.shards_failed) == (2, 1, 0)
    assert got[1]["status"] == "skipped" and got[1]["output"] == done
    assert s.samples_read == 1 + 3  # the skipped shard counts no samples
    assert (tmp_path / "o-1.tar").read_bytes() == b"done before"


def test_stdio_is_refused(threads_client, tmp_path):
    for task in (Task(must_not_run, {"output": "-"}, input="in.tar", output="-"),
                 Task(must_not_run, {"output": "x"}, input="-", output=str(tmp_path / "x")),
                 Task(must_not_run, {"output": "x"}, input=["a.tar", "-"])):
        with pytest.raises(HtoolsError, match=r"'-' \(stdin/stdout\) is not available"):
            run("t", [task], opts(threads_client))


# ------------------------------------------------------------------ retries --

_RUNS: dict[str, int] = {}


def flaky_task(name: str, fails: int, status: int) -> dict:
    """Fails like a storage fault with ``status`` the first ``fails`` times it runs."""
    from htools.errors import StorageError
    from htools.runtime.task import shard_task

    with _LOCK:
        _RUNS[name] = _RUNS.get(name, 0) + 1
        n = _RUNS[name]
    with shard_task(f"in-{name}.tar", f"out-{name}.tar") as r:
        r.samples_read = 2
        if n <= fails:
            raise StorageError(f"http://h/out-{name}.tar", "PUT failed", status)
        r.samples_mapped = r.samples_written = 2
    return r.as_dict()


def multi_task(names: list[str], flaky: str) -> list[dict]:
    """One result per output; ``flaky`` fails transiently on its first run."""
    return [flaky_task(n, 1 if n == flaky else 0, 503) for n in names]


def narrow_multi(task: Task, outputs: list[str]) -> Task:
    names = [n for n in task.kwargs["names"] if f"out-{n}.tar" in outputs]
    return Task(multi_task, {**task.kwargs, "names": names},
                outputs=[f"out-{n}.tar" for n in names], narrow=narrow_multi)


@pytest.fixture()
def fast_backoff(monkeypatch):
    monkeypatch.setenv("HTOOLS_RETRY_BACKOFF", "0.01")


def test_transient_failures_run_the_shard_again(threads_client, fast_backoff):
    tag = uuid.uuid4().hex[:6]
    tasks = [Task(flaky_task, {"name": f"{tag}-{i}", "fails": i, "status": 503},
                  input=f"in-{i}.tar") for i in range(3)]
    s = run("t", tasks, opts(threads_client, retries=2))
    assert s.ok and s.shards_done == 3 and s.samples_written == 6 and s.samples_failed == 0
    assert s.shards_retried == 2 and len(s.retries) == 3  # shard 2 was retried twice
    assert {r["attempt"] for r in s.retries} == {1, 2} and "PUT failed" in s.retries[0]["error"]
    assert "2 shards retried" in s.line()


def test_retries_run_out_and_permanent_errors_are_not_retried(threads_client, fast_backoff):
    tag = uuid.uuid4().hex[:6]
    tasks = [Task(flaky_task, {"name": f"{tag}-t", "fails": 5, "status": 503}, input="t"),
             Task(flaky_task, {"name": f"{tag}-p", "fails": 1, "status": 403}, input="p")]
    s = run("t", tasks, opts(threads_client, retries=2))
    assert not s.ok and s.shards_failed == 2 and s.samples_failed == 4
    assert _RUNS[f"{tag}-t"] == 3 and _RUNS[f"{tag}-p"] == 1  # 1 + 2 retries; 403: once


def test_a_multi_output_task_retries_only_its_failed_output(threads_client, fast_backoff):
    tag = uuid.uuid4().hex[:6]
    names = [f"{tag}-{c}" for c in "abc"]
    task = Task(multi_task, {"names": names, "flaky": names[1]},
                outputs=[f"out-{n}.tar" for n in names], narrow=narrow_multi)
    s = run("t", [task], opts(threads_client, retries=1))
    assert s.ok and s.shards_total == 3 and s.shards_done == 3 and s.shards_retried == 1
    assert [_RUNS[n] for n in names] == [1, 2, 1]  # the others were not written twice


# ----------------------------------------------------------------- grouping --

_KEYS: dict[str, dict[int, str]] = {}


def keyed_task(index: int, run_id: str) -> dict:
    """count_task, noting the key of the Dask task it ran in."""
    from distributed import get_worker

    with _LOCK:
        _KEYS[run_id][index] = str(get_worker().get_current_task())
    return count_task(index)


def test_short_tasks_grouped_give_the_same_results(threads_client, fast_backoff):
    """With ``group=True`` short tasks run several to a Dask task (fewer, larger tasks
    on the scheduler), yet every shard has its own result, retries and failures, as
    when each runs alone; ungrouped runs of the same tasks give the same summary."""
    def tasks_of(tag: str) -> list[Task]:
        tasks = [Task(keyed_task, {"index": i, "run_id": tag}, input=f"in-{i}.tar")
                 for i in range(300)]
        tasks[150] = Task(flaky_task, {"name": f"{tag}-f", "fails": 1, "status": 503},
                          input="in-f.tar")  # transient: retried alone
        tasks[200] = Task(raising_task, {"index": 200}, input="in-200.tar")  # fails its group
        return tasks

    summaries, seen, groups = [], [], []
    for group in (True, False):
        tag = uuid.uuid4().hex[:6]
        _KEYS[tag] = {}
        got: dict[int, dict] = {}
        s = run("t", tasks_of(tag), opts(threads_client, retries=1), group=group,
                on_result=lambda i, r, got=got: got.setdefault(i, r))
        summaries.append(s)
        seen.append(got)
        keys = _KEYS.pop(tag)
        groups.append(max(list(keys.values()).count(k) for k in set(keys.values())))
        assert _RUNS[f"{tag}-f"] == 2
    assert groups[0] > 1 and groups[1] == 1  # grouping happened, only when asked
    grouped, alone = summaries
    for s in summaries:
        assert (s.shards_total, s.shards_done, s.shards_failed, s.shards_retried) == \
            (300, 299, 1, 1)
        assert "boom in task 200" in s.failures[0]["error"]
    assert grouped.samples_read == alone.samples_read
    assert sorted(seen[0]) == sorted(seen[1]) == list(range(300))
    for i in range(300):
        a, b = seen[0][i], seen[1][i]
        assert (a["status"], a["samples_read"], a["attempts"]) == \
            (b["status"], b["samples_read"], b["attempts"])
        assert a["input"] == b["input"] or i == 150  # the flaky task names its own


def test_group_size_follows_task_time():
    from htools.runtime.runloop import group_size as _group_size

    assert _group_size([], 10_000, 2) == 1  # nothing known yet
    assert _group_size([0.002] * 8, 10_000, 2) == 25  # about 50 ms a group
    assert _group_size([0.0001] * 8, 10_000, 2) == 64  # capped
    assert _group_size([0.002] * 8, 40, 2) == 5  # the end of the job stays balanced
    assert _group_size([0.2] * 8, 10_000, 2) == 1  # long tasks run alone
