"""--resources NAME=AMOUNT: every task asks the scheduler for it, so tasks run only on
workers that declare it; a job asking for what no worker has fails in seconds; the
embedded cluster declares GPU=1 on one worker per GPU that `nvidia-smi -L` lists (a
fake nvidia-smi here)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import child_env, make_shards, ok, read_wds, run

from htools.clusters import connection
from htools.errors import HtoolsError
from htools.options import RunOptions, parse_resources

RECORD = '''
import os
from distributed import get_worker

def process_sample(sample):
    w = get_worker()
    sample["worker.txt"] = str(w.name).encode()
    sample["gpu.txt"] = os.environ.get("CUDA_VISIBLE_DEVICES", "-").encode()
    return sample
'''


# ------------------------------------------------------------------ parsing --

def test_parse_resources():
    assert parse_resources("GPU=1") == {"GPU": 1}
    assert parse_resources(["GPU=1", "MEM=2e9,X=0.5"]) == {"GPU": 1, "MEM": 2000000000,
                                                                   "X": 0.5}
    assert parse_resources({"GPU": 2}) == {"GPU": 2}
    for bad in ["GPU", "GPU=x", "=1", "GPU=0", "GPU=-1", "GPU=inf"]:
        with pytest.raises(HtoolsError, match="GPU=1"):
            parse_resources(bad)
    assert RunOptions(resources={"GPU": "1"}).resources == {"GPU": 1}
    with pytest.raises(HtoolsError, match="must be a number"):
        RunOptions(resources={"GPU": "x"})


@pytest.mark.parametrize("spec, why", [("GPU", "expected NAME=AMOUNT"),
                                       ("GPU=x", "must be a number")])
def test_cli_refuses_a_bad_spec(tmp_path, spec, why):
    make_shards(tmp_path / "in", shards=1, per_shard=2)
    p = run("htmapper", "-s", "true", str(tmp_path / "in/data-0.tar"),
            str(tmp_path / "out-0.tar"), "--resources", spec)
    assert p.returncode == 2 and why in p.stderr and "--resources" in p.stderr, p.stderr
    assert not (tmp_path / "out-0.tar").exists()


# ------------------------------------------------------- a fake nvidia-smi --

def fake_nvidia_smi(folder: Path, gpus: int, rc: int = 0) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"echo 'GPU {i}: NVIDIA Fake (UUID: GPU-{i:04d})'\n" for i in range(gpus))
    lines += "echo '  MIG 1g.5gb Device 0: (UUID: MIG-0)'\n"
    exe = folder / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] || exit 9\n{lines}exit {rc}\n")
    exe.chmod(0o755)
    return child_env(PATH=f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")


def test_count_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "two", 2)["PATH"])
    assert connection.count_gpus() == 2
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "broken", 2, rc=1)["PATH"])
    assert connection.count_gpus() == 0
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert connection.count_gpus() == 0


def test_embedded_cluster_one_task_per_gpu(tmp_path):
    """3 workers, 2 (fake) GPUs: a GPU=1 job runs only on the 2 GPU workers, each seeing
    its own GPU; a job without --resources uses all 3."""
    samples = make_shards(tmp_path / "in", shards=6, per_shard=3)
    (tmp_path / "record.py").write_text(RECORD)
    env = fake_nvidia_smi(tmp_path / "bin", 2)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    ins = str(tmp_path / "in/data-{0..5}.tar")
    ok(run("htmapper", "-p", tmp_path / "record.py", ins, tmp_path / "gpu-@6.tar",
           "--workers", "3", "--resources", "GPU=1", "-q", env=env))
    got = read_wds(sorted(tmp_path.glob("gpu-*.tar")))
    assert sorted(s["__key__"] for s in got) == sorted(samples)
    pairs = {(s["worker.txt"], s["gpu.txt"]) for s in got}
    assert {g for _w, g in pairs} <= {b"0", b"1"}, pairs
    assert len({w for w, _g in pairs}) <= 2
    for w, g in pairs:  # each GPU worker sees one GPU, always the same
        assert {g2 for w2, g2 in pairs if w2 == w} == {g}


# --------------------------------------------- a scheduler and two workers --

def test_tasks_go_only_to_the_worker_with_the_resource(tmp_path, resource_cluster):
    samples = make_shards(tmp_path / "in", shards=6, per_shard=4)
    (tmp_path / "record.py").write_text(RECORD)
    ins = str(tmp_path / "in/data-{0..5}.tar")
    ok(run("htmapper", "-p", tmp_path / "record.py", ins, tmp_path / "foo-@6.tar",
           "-c", resource_cluster, "--resources", "FOO=1", "-q"))
    got = read_wds(sorted(tmp_path.glob("foo-*.tar")))
    assert sorted(s["__key__"] for s in got) == sorted(samples)
    assert {s["worker.txt"] for s in got} == {b"foo"}
    # without --resources both workers take tasks (the scheduler balances 6 shards of
    # samples that each take a moment)
    slow = RECORD.replace("def process_sample(sample):",
                          "import time\ndef process_sample(sample):\n    time.sleep(0.1)")
    (tmp_path / "slow.py").write_text(slow)
    ok(run("htmapper", "-p", tmp_path / "slow.py", ins, tmp_path / "any-@6.tar",
           "-c", resource_cluster, "-q"))
    got = read_wds(sorted(tmp_path.glob("any-*.tar")))
    assert {s["worker.txt"] for s in got} == {b"foo", b"plain"}


def test_a_resource_no_worker_has_fails_in_seconds(tmp_path, resource_cluster):
    make_shards(tmp_path / "in", shards=2, per_shard=2)
    t0 = time.monotonic()
    p = run("htmapper", "-s", "true", str(tmp_path / "in/data-{0..1}.tar"),
            tmp_path / "out-@2.tar", "-c", resource_cluster, "--resources", "GPU=1",
            "--resources", "FOO=1", timeout=60)
    assert p.returncode == 1, p.stderr
    assert "no Dask worker has the resources GPU=1, FOO=1" in p.stderr, p.stderr
    assert "1 with FOO=1" in p.stderr and "1 with none" in p.stderr, p.stderr
    assert time.monotonic() - t0 < 30
    assert not list(tmp_path.glob("out-*"))


def test_python_api_resources(tmp_path, resource_cluster):
    import htools

    samples = make_shards(tmp_path / "in", shards=2, per_shard=3)
    (tmp_path / "record.py").write_text(RECORD)
    summary = htools.map_shards(str(tmp_path / "in/data-{0..1}.tar"),
                                str(tmp_path / "api-@2.tar"), str(tmp_path / "record.py"),
                                cluster=resource_cluster, resources={"FOO": 1}, quiet=True)
    assert summary.ok, summary.failures
    got = read_wds(sorted(tmp_path.glob("api-*.tar")))
    assert sorted(s["__key__"] for s in got) == sorted(samples)
    assert {s["worker.txt"] for s in got} == {b"foo"}
