"""``--cluster slurm://`` against a real SLURM: a one-node cluster (slurmctld + slurmd +
munged, Debian's slurm-wlm and munge) started for the session by scripts/slurm-start and
stopped by scripts/slurm-stop.  The Dask workers are SLURM batch jobs submitted by
dask-jobqueue; results are read back with the webdataset package; SLURM's own records
(squeue, and the job-completion log the cluster writes, what sacct would show) say which
jobs ran and that none is left queued or running after a command ends."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import pytest
from fixtures.slurm import Slurm
from helpers import (
    BIN,
    default_sigint,
    make_shards,
    ok,
    read_wds,
    require_module,
)

from htools.clusters import slurm
from htools.errors import HtoolsError

JOB_TIMEOUT = 150


def _submitted(stderr: str) -> list[str]:
    found = re.search(r"submitted \d+ SLURM worker jobs .*\(([\d, ]+)\)", stderr)
    assert found, stderr
    return found.group(1).replace(" ", "").split(",")


def _script(tmp_path: Path, body: str = "", name: str = "script.py") -> Path:
    path = tmp_path / name
    path.write_text(
        "import os, time\n"
        "def process_sample(sample):\n"
        f"{body}"
        "    sample['job.txt'] = os.environ.get('SLURM_JOB_ID', 'none').encode()\n"
        "    return sample\n")
    return path


def _marking_mapper(cluster: Slurm, tmp_path: Path, inputs: str, out: Path, sleep: float,
                    **popen) -> subprocess.Popen:
    """htmapper on the SLURM cluster, started in the background, whose script marks each
    worker job that runs a sample (a file named after its SLURM_JOB_ID in
    ``tmp_path/marks``) and then sleeps ``sleep`` seconds a sample."""
    marks = tmp_path / "marks"
    marks.mkdir()
    body = (f"    open(os.path.join({str(marks)!r}, os.environ['SLURM_JOB_ID']), 'a').close()\n"
            f"    time.sleep({sleep})\n")
    return subprocess.Popen(
        [str(BIN / "htmapper"), "-c", cluster.address(tmp_path / "logs"),
         "-p", str(_script(tmp_path, body)), inputs, str(out)],
        env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=tmp_path, **popen)


def _first_marks(tmp_path: Path, proc: subprocess.Popen) -> list[str]:
    """The worker jobs that ran a sample, once one has (within 90 s)."""
    marks = tmp_path / "marks"
    deadline = time.monotonic() + 90
    while not list(marks.iterdir()) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    found = sorted(p.name for p in marks.iterdir())
    assert found, "no worker job ever ran a sample"
    return found


def _wait_finished(cluster: Slurm, ids: list[str]) -> dict[str, dict[str, str]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done = cluster.finished()
        if all(i in done for i in ids):
            return done
        time.sleep(0.5)
    return cluster.finished()


def test_htmapper_workers_are_slurm_jobs(slurm_cluster, tmp_path):
    samples = make_shards(tmp_path / "in", shards=4, per_shard=20)
    proc = ok(subprocess.run(
        [str(BIN / "htmapper"), "-c", slurm_cluster.address(tmp_path / "logs"),
         "-p", str(_script(tmp_path)), str(tmp_path / "in" / "data-{0..3}.tar"),
         str(tmp_path / "out" / "o-@4.tar")],
        env=slurm_cluster.env, capture_output=True, text=True, timeout=JOB_TIMEOUT,
        cwd=tmp_path))
    slurm_cluster.assert_no_job_left()
    ids = _submitted(proc.stderr)
    assert len(ids) == 2
    assert "2/2 workers connected" in proc.stderr
    got = read_wds(sorted((tmp_path / "out").glob("o-*.tar")))
    assert sorted(s["__key__"] for s in got) == sorted(samples)
    ran_in = set()
    for s in got:
        want = samples[s["__key__"]]
        assert (s["jpg"], s["cls"], s["txt"]) == (want["jpg"], want["cls"], want["txt"])
        ran_in.add(s["job.txt"].decode())
    assert ran_in and ran_in <= set(ids), (ran_in, ids)  # every sample ran in a worker job
    done = _wait_finished(slurm_cluster, ids)
    for i in ids:  # SLURM's record: our jobs, ended by htools' scancel
        assert done[i]["Name"] == slurm.JOB_NAME
        assert done[i]["JobState"] == "CANCELLED", done[i]
    assert (tmp_path / "logs" / f"{slurm.JOB_NAME}-{ids[0]}.err").exists()


def test_htsort_on_slurm(slurm_cluster, tmp_path):
    samples = make_shards(tmp_path / "in", shards=4, per_shard=20, seed=3)
    proc = ok(subprocess.run(
        [str(BIN / "htsort"), "-c", slurm_cluster.address(tmp_path / "logs"),
         str(tmp_path / "in" / "data-{0..3}.tar"), str(tmp_path / "out" / "s-@2.tar"),
         "--key", "cls"],
        env=slurm_cluster.env, capture_output=True, text=True, timeout=JOB_TIMEOUT,
        cwd=tmp_path))
    slurm_cluster.assert_no_job_left()
    assert len(_submitted(proc.stderr)) == 2
    got = read_wds([tmp_path / "out" / "s-0.tar", tmp_path / "out" / "s-1.tar"])
    assert sorted(s["__key__"] for s in got) == sorted(samples)
    classes = [s["cls"] for s in got]
    assert classes == sorted(classes)
    for s in got:
        assert s["jpg"] == samples[s["__key__"]]["jpg"]


def test_worker_job_cancelled_mid_job_is_retried(slurm_cluster, tmp_path):
    """scancel one of the two worker jobs while it runs a shard: the job still
    succeeds, with every sample exactly once, on the remaining worker."""
    samples = make_shards(tmp_path / "in", shards=6, per_shard=8, seed=5)
    proc = _marking_mapper(slurm_cluster, tmp_path, str(tmp_path / "in" / "data-{0..5}.tar"),
                           tmp_path / "out" / "o-@6.tar", sleep=0.25)
    try:
        victim = _first_marks(tmp_path, proc)[0]
        subprocess.run(["scancel", victim], env=slurm_cluster.env, check=True)
        _out, err = proc.communicate(timeout=JOB_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    slurm_cluster.assert_no_job_left()
    ids = _submitted(err)
    assert victim in ids
    got = read_wds(sorted((tmp_path / "out").glob("o-*.tar")))
    assert sorted(s["__key__"] for s in got) == sorted(samples)  # exactly once each
    for s in got:
        assert s["jpg"] == samples[s["__key__"]]["jpg"]
    done = _wait_finished(slurm_cluster, [victim])
    assert done[victim]["JobState"] == "CANCELLED"
    survivors = {s["job.txt"].decode() for s in got}
    assert survivors - {victim}, "the other worker job finished the work"


def test_no_job_left_after_failure_or_ctrl_c(slurm_cluster, tmp_path):
    make_shards(tmp_path / "in", shards=4, per_shard=10, seed=7)
    inputs = str(tmp_path / "in" / "data-{0..3}.tar")
    broken = tmp_path / "broken.py"
    broken.write_text("def process_sample(sample):\n    raise ValueError('broken script')\n")
    proc = subprocess.run(
        [str(BIN / "htmapper"), "-c", slurm_cluster.address(tmp_path / "logs"),
         "-p", str(broken), inputs, str(tmp_path / "out1" / "o-@4.tar")],
        env=slurm_cluster.env, capture_output=True, text=True, timeout=JOB_TIMEOUT,
        cwd=tmp_path)
    assert proc.returncode != 0
    assert "broken script" in proc.stderr + proc.stdout
    slurm_cluster.assert_no_job_left()

    proc = _marking_mapper(slurm_cluster, tmp_path, inputs, tmp_path / "out2" / "o-@4.tar",
                           sleep=2, preexec_fn=default_sigint)
    try:
        _first_marks(tmp_path, proc)
        assert len(slurm_cluster.squeue("RUNNING")) == 2
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0, err
    slurm_cluster.assert_no_job_left()
    done = _wait_finished(slurm_cluster, _submitted(err))
    assert all(done[i]["JobState"] == "CANCELLED" for i in _submitted(err))


def test_timeout_names_pending_jobs(slurm_cluster, tmp_path):
    """Jobs SLURM keeps pending (here: not to start for an hour) time out with their
    squeue state and reason in the message, and are cancelled."""
    make_shards(tmp_path / "in", shards=1, per_shard=2)
    address = slurm_cluster.address(tmp_path / "logs", jobs=1, timeout=4,
                                    directive="--begin=now%2B1hour")
    proc = subprocess.run(
        [str(BIN / "htmapper"), "-c", address, "-p", str(_script(tmp_path)),
         str(tmp_path / "in" / "data-0.tar"), str(tmp_path / "out" / "o-@1.tar")],
        env=slurm_cluster.env, capture_output=True, text=True, timeout=JOB_TIMEOUT,
        cwd=tmp_path)
    assert proc.returncode != 0
    assert re.search(r"SLURM workers not up after 4s: 0/1 connected; job \d+ PENDING "
                     r"\(BeginTime\)", proc.stderr), proc.stderr
    slurm_cluster.assert_no_job_left()


def test_sbatch_error_is_one_line(slurm_cluster, tmp_path):
    with pytest.raises(HtoolsError, match=r"sbatch failed for .*nowhere.*"):
        with slurm.cluster("slurm://nowhere?jobs=1&host=127.0.0.1&timeout=10", quiet=True):
            pass
    slurm_cluster.assert_no_job_left()


# ------------------------------------------------------- offline: no SLURM needed --

def test_parse_address():
    a = slurm.parse_address("slurm://gpu?jobs=4&cores=8&memory=32GB&walltime=02:00:00"
                            "&account=lab&directive=--gres=gpu:1&directive=--qos=low")
    assert a == slurm.SlurmAddress(partition="gpu", jobs=4, cores=8, memory="32GB",
                                   walltime="02:00:00", account="lab",
                                   directives=("--gres=gpu:1", "--qos=low"))
    assert a.workers == 32
    assert slurm.parse_address("slurm://") == slurm.SlurmAddress()
    for bad, why in [("slurm://p?jobs=0", "jobs must be a positive"),
                     ("slurm://p?bogus=1", "unknown parameter 'bogus'"),
                     ("slurm://p?walltime=2h", "walltime must be"),
                     ("slurm://p?memory=lots", "memory must be"),
                     ("slurm://p?jobs=1&jobs=2", "given twice"),
                     ("slurm://a b", "bad SLURM partition")]:
        with pytest.raises(HtoolsError, match=why):
            slurm.parse_address(bad)


def test_cluster_kwargs_join_directives(monkeypatch):
    monkeypatch.setenv(slurm.OPTIONS_ENV, '{"job_extra_directives": ["--qos=low"], '
                                          '"job_script_prologue": ["module load python"]}')
    kw = slurm.cluster_kwargs(slurm.parse_address("slurm://cpu?cores=2&directive=--exclusive"
                                                  "&host=127.0.0.1"), slurm.env_options())
    assert kw["job_extra_directives"] == ["--qos=low", "--exclusive"]
    assert kw["job_script_prologue"][-1] == "module load python"
    assert (kw["queue"], kw["cores"], kw["processes"], kw["memory"]) == ("cpu", 2, 2, "4GB")
    dask_jobqueue = require_module("dask_jobqueue")
    with dask.config.set(slurm.dask_config(retries=2)), \
            dask_jobqueue.SLURMCluster(**kw) as made:  # builds the script, submits nothing
        script = made.job_script()
    for line in ("#SBATCH -p cpu", "#SBATCH --qos=low", "#SBATCH --exclusive",
                 "#SBATCH --cpus-per-task=2", f"#SBATCH -J {slurm.JOB_NAME}"):
        assert line in script
    assert "#SBATCH -t" not in script  # no walltime given: the partition's limit
    monkeypatch.setenv(slurm.OPTIONS_ENV, "[1]")
    with pytest.raises(HtoolsError, match="must be a JSON object"):
        slurm.env_options()


def test_missing_sbatch_or_jobqueue_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HtoolsError, match=r"needs SLURM's sbatch, squeue, scancel on PATH"):
        with slurm.cluster("slurm://debug"):
            pass
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    with pytest.raises(HtoolsError, match=r"pip install 'htools-wds\[slurm\]'"):
        with slurm.cluster("slurm://debug"):
            pass
