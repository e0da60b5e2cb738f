"""htupload of local files into a local folder runs its tasks in processes forked from
the fork server, not on Dask (htools.runtime.forkpool): the shards are what GNU tar reads
back as the files, byte for byte, and the same bytes as on Dask
(``HTOOLS_UPLOAD_EXECUTOR=dask``); a worker killed mid-shard costs only a retry of that
shard; Ctrl-C ends the job as on Dask.

A FIFO among the files holds a task where the test wants it: the worker that reads it
blocks (in ``open``, then ``read``) until the test writes to it."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import BIN, ENV, child_env, default_sigint, ok, run

FILES = {f"d{d}/s{i:03d}.{field}": os.urandom(50 + 37 * i + d) for d in range(3)
         for i in range(40) for field in ("txt", "cls")}


def make_tree(root: Path, fifo: str | None = None) -> None:
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    if fifo is not None:
        os.mkfifo(root / fifo)


def extracted(shards: list[Path], into: Path) -> dict[str, bytes]:
    """What GNU tar extracts from ``shards``: each file's bytes by its path."""
    into.mkdir()
    for s in shards:
        ok(subprocess.run(["tar", "-xf", str(s), "-C", str(into)], capture_output=True,
                          text=True))
    return {str(p.relative_to(into)): p.read_bytes() for p in into.rglob("*") if p.is_file()}


def test_local_upload_runs_forked_and_gives_the_files_and_daskss_bytes(tmp_path):
    make_tree(tmp_path / "src")
    p = ok(run("htupload", tmp_path / "src", tmp_path / "out" / "o-@3.tar", "--workers", "2"))
    assert "htools: 2 worker processes" in p.stderr and "dashboard" not in p.stderr, p.stderr
    shards = sorted((tmp_path / "out").glob("o-*.tar"))
    assert len(shards) == 3
    assert extracted(shards, tmp_path / "x") == FILES
    # HTOOLS_UPLOAD_EXECUTOR=dask: the embedded Dask cluster, the same bytes
    d = ok(run("htupload", tmp_path / "src", tmp_path / "dask" / "o-@3.tar", "--workers", "2",
               env=child_env(HTOOLS_UPLOAD_EXECUTOR="dask")))
    assert "workers, dashboard at" in d.stderr and "worker processes" not in d.stderr, d.stderr
    for s in shards:
        assert (tmp_path / "dask" / s.name).read_bytes() == s.read_bytes()
    index = "o.index.json"
    assert (tmp_path / "dask" / index).read_bytes() == (tmp_path / "out" / index).read_bytes()


def open_writer(fifo: Path, proc: subprocess.Popen, timeout: float = 60) -> int:
    """The FIFO opened for writing once a worker has it open for reading."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no worker opened the FIFO"
        time.sleep(0.01)


def has_open(pid: int, fifo: Path) -> bool:
    """Whether a thread of ``pid`` has ``fifo`` open: each thread's view, since a killed
    process's main thread exits (its ``/proc/PID/fd`` then empty) while another of its
    threads still holds the files, which a writer would still see as a reader."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for task in tasks:
        try:
            fds = os.listdir(f"/proc/{pid}/task/{task}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/task/{task}/fd/{fd}") == str(fifo):
                    return True
            except OSError:
                pass
    return False


def reader_pid(fifo: Path, timeout: float = 30) -> int:
    """The process that has ``fifo`` open (not this one), once its ``open`` returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
            if pid != os.getpid() and has_open(pid, fifo):
                return pid
        time.sleep(0.01)
    raise AssertionError(f"no process has {fifo} open")


def kill(pid: int, fifo: Path, timeout: float = 30) -> None:
    """SIGKILL ``pid`` and wait until it no longer holds ``fifo`` open (a writer opened
    before would still see it as a reader, and write into a pipe about to go)."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while has_open(pid, fifo):
        assert time.monotonic() < deadline, f"{pid} still has {fifo} open"
        time.sleep(0.01)


def send_again(w: int, fifo: Path, proc: subprocess.Popen) -> None:
    """``b"again"`` to the retried call's read of ``fifo``: on the writer ``w`` still open
    when that call has opened it already (an idle worker takes the call at once; closing
    ``w`` first would give it an empty read), else on a new writer once it does."""
    try:
        os.write(w, b"again")
    except BrokenPipeError:  # no reader yet
        os.close(w)
        w = open_writer(fifo, proc)
        os.write(w, b"again")
    os.close(w)


def running_in_group(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that still run (not zombies: an init that does
    not reap them leaves those of any command, Dask's too)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(pid))
    return found


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "htupload"), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True, preexec_fn=default_sigint)


@pytest.mark.parametrize("retries", [2, 0])
def test_a_worker_killed_mid_shard_fails_only_that_call(tmp_path, retries):
    fifo = tmp_path / "src" / "d1" / "s005.json"
    make_tree(tmp_path / "src", "d1/s005.json")
    out = tmp_path / "out"
    proc = start(tmp_path, tmp_path / "src", out / "o-@4.tar", "--workers", "2",
                 "--retries", str(retries))
    try:
        w = open_writer(fifo, proc)
        kill(reader_pid(fifo), fifo)
        if retries:  # the shard runs again on another worker: this time it gets its bytes
            send_again(w, fifo, proc)
        else:
            os.close(w)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    shards = sorted(out.glob("o-*.tar"))
    if retries:
        assert proc.returncode == 0, err
        assert extracted(shards, tmp_path / "x") == {**FILES, "d1/s005.json": b"again"}
    else:
        assert proc.returncode == 1, err
        assert "worker process died (signal 9" in err, err
        assert len(shards) == 3  # the other shards are written
        assert not [f for f in os.listdir(out) if f.startswith(".")]
    assert "Traceback" not in err, err


def test_ctrl_c_ends_a_forked_upload_as_on_dask(tmp_path):
    fifo = tmp_path / "src" / "d0" / "s000.json"
    make_tree(tmp_path / "src", "d0/s000.json")
    out = tmp_path / "out"
    proc = start(tmp_path, tmp_path / "src", out / "o-@4.tar", "--workers", "1")
    try:
        w = open_writer(fifo, proc)  # the first shard's task is reading the FIFO
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)
        os.close(w)  # its read ends: the running task finishes its shard
        _out, err = proc.communicate(timeout=60)
        time.sleep(0.5)
        assert running_in_group(proc.pid) == []  # no worker (or fork server) left behind
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "KeyboardInterrupt" not in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("htools: interrupted")
    names = os.listdir(out) if out.exists() else []
    assert not [f for f in names if f.startswith(".")]  # no partial output
    assert set(names) <= {"o-0.tar", "o.lineage.json"}, names


def test_the_pool_hands_back_values_and_errors_in_the_environment_of_its_start(monkeypatch):
    """A call's value, or the exception it raised, comes back as its Done; the workers see
    the environment as it is when the pool starts, not when the fork server did."""
    import json

    from htools.runtime.executors import Call
    from htools.runtime.forkpool import ForkPool

    with ForkPool(1).start() as first:  # the fork server runs from here on
        first.submit([Call("a", os.getenv, {"key": "HTOOLS_TEST_POOL"})])
        assert [d.value for b in first.batches() for d in b] == [None]
        first.close()
    monkeypatch.setenv("HTOOLS_TEST_POOL", "set later")
    pool = ForkPool(2).start()
    try:
        pool.submit([Call("b", os.getenv, {"key": "HTOOLS_TEST_POOL"}),
                     Call("c", json.loads, {"s": "{not json"})])
        done = {d.key: d for b in pool.batches() for d in b}
    finally:
        pool.close()
    assert done["b"].value == "set later" and done["b"].error is None
    assert isinstance(done["c"].error, json.JSONDecodeError), done["c"]


def hold(mb: int, seconds: float) -> int:
    """A call that holds ``mb`` MiB (touched) for ``seconds``."""
    data = b"x" * (mb << 20)
    time.sleep(seconds)
    return len(data)


def test_a_worker_past_its_memory_limit_is_ended_as_a_nanny_would():
    from htools.runtime.executors import Call
    from htools.runtime.forkpool import ForkPool, WorkerDied

    pool = ForkPool(1, retries=0, memory_limit=150 << 20).start()
    try:
        pool.submit([Call("big", hold, {"mb": 300, "seconds": 3}),
                     Call("small", hold, {"mb": 1, "seconds": 0})])
        done = {d.key: d for b in pool.batches() for d in b}
    finally:
        pool.close()
    assert isinstance(done["big"].error, WorkerDied), done["big"]
    assert "past 95% of its memory limit, 150 MiB" in str(done["big"].error)
    assert done["small"].value == 1 << 20  # on the worker that replaced it


def test_a_worker_has_the_variables_the_fork_server_set_for_workers():
    """Dask's pre-spawn variables (``MALLOC_TRIM_THRESHOLD_``, which the task frame's
    tune_malloc reads) reach the pool's workers as they reach Dask's."""
    from htools.runtime.executors import Call
    from htools.runtime.forkpool import ForkPool

    pool = ForkPool(1).start()
    try:
        pool.submit([Call("t", os.getenv, {"key": "MALLOC_TRIM_THRESHOLD_"})])
        got = [d.value for b in pool.batches() for d in b]
    finally:
        pool.close()
    assert got == [os.environ["MALLOC_TRIM_THRESHOLD_"]]


POOL_THEN_KILLED = '''
import sys, time
from htools.runtime.executors import Call
from htools.runtime.forkpool import ForkPool

def late_write(path, seconds):
    time.sleep(seconds)
    open(path, "w").write("written after its job was gone")

if __name__ == "__main__":
    pool = ForkPool(1).start()
    pool.submit([Call("w", late_write, {"path": sys.argv[1], "seconds": 3})])
    print(pool.workers[0].proc.pid, flush=True)
    time.sleep(60)
'''


def test_workers_exit_at_once_when_the_pools_process_is_killed(tmp_path):
    """SIGKILL of the client (the pool's process): its workers exit at once, as a Dask
    worker whose nanny is gone does, instead of finishing a shard for no one (before:
    the worker wrote its output 2.5 s after the job was dead, then printed tracebacks)."""
    import sys

    script = tmp_path / "pool.py"
    script.write_text(POOL_THEN_KILLED)
    late = tmp_path / "late.txt"
    proc = subprocess.Popen([sys.executable, str(script), str(late)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        worker = int(proc.stdout.readline())
        time.sleep(0.5)
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _alive(worker):
            assert time.monotonic() < deadline, "the worker outlived its pool's process"
            time.sleep(0.05)
        time.sleep(3)
        assert not late.exists()
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


class _TwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a} {b}")


def unpicklable_error() -> None:
    raise _TwoArgs("one", "two")  # pickles, but its __init__ cannot be called back


def test_an_answer_that_cannot_be_read_back_fails_its_call_only():
    from htools.errors import HtoolsError
    from htools.runtime.executors import Call
    from htools.runtime.forkpool import ForkPool

    pool = ForkPool(1).start()
    try:
        pool.submit([Call("bad", unpicklable_error, {}), Call("good", os.path.basename, {"p": "a/abc"})])
        done = {d.key: d for b in pool.batches() for d in b}
    finally:
        pool.close()
    assert isinstance(done["bad"].error, HtoolsError)
    assert "cannot be read back" in str(done["bad"].error)
    assert done["good"].value == "abc"


def test_leaving_the_loop_by_an_error_ends_the_running_calls(tmp_path):
    """The run loop left by an exception (not Ctrl-C): the pool's calls are ended as it
    leaves, before the job removes partial outputs (a call left running would write on)."""
    from htools.runtime.executors import Call
    from htools.runtime.forkpool import ForkPool

    pool = ForkPool(1).start()
    worker = pool.workers[0].proc
    with pytest.raises(RuntimeError), pool:
        pool.submit([Call("slow", hold, {"mb": 1, "seconds": 30})])
        raise RuntimeError("the loop failed")
    worker.join(5)
    assert not worker.is_alive() and pool.workers == []


def test_the_memory_limit_counts_a_cgroups(monkeypatch, tmp_path):
    from htools.runtime import forkpool

    limit = tmp_path / "memory.max"
    limit.write_text("268435456\n")
    monkeypatch.setattr(forkpool, "CGROUP_LIMITS", (str(limit), str(tmp_path / "none")))
    assert forkpool._machine_memory() == 256 << 20
    limit.write_text("max\n")  # no cgroup limit: the machine's memory
    assert forkpool._machine_memory() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
