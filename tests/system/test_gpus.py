"""The embedded cluster on a machine with GPUs, tested without one: a stand-in
``nvidia-smi`` on PATH lists two devices, and each worker's CUDA_VISIBLE_DEVICES and
declared resources are what is checked (a batched job then runs one task per GPU)."""

from __future__ import annotations

import os

from helpers import make_shards, ok, read_wds, run
from test_resources import fake_nvidia_smi

from htools.clusters import connection
from htools.options import RunOptions

WHERE = '''
import os
from distributed import get_worker

def process_batch(samples):
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "-").encode()
    name = str(get_worker().name).encode()
    return [dict(s, **{"gpu.txt": gpu, "worker.txt": name}) for s in samples]
'''


def _pinning(client) -> dict:
    env = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
    info = client.scheduler_info(n_workers=-1)["workers"]
    return {addr: (env[addr], info[addr].get("resources") or {}) for addr in info}


def test_one_worker_per_gpu_pinned_and_declared(tmp_path, monkeypatch):
    env = fake_nvidia_smi(tmp_path / "bin", 2)
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # fewer cores than GPUs
    with connection.connect(RunOptions(quiet=True)) as client:
        client.wait_for_workers(2, timeout=60)
        pinned = sorted(_pinning(client).values(), key=lambda p: p[0])
    assert pinned == [("0", {"GPU": 1}), ("1", {"GPU": 1})]


def test_more_workers_than_gpus(tmp_path, monkeypatch):
    env = fake_nvidia_smi(tmp_path / "bin", 2)
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with connection.connect(RunOptions(workers=3, quiet=True)) as client:
        client.wait_for_workers(3, timeout=60)
        pinned = sorted(_pinning(client).values(), key=lambda p: p[0])
    assert pinned == [("-", {}), ("0", {"GPU": 1}), ("1", {"GPU": 1})]


def test_a_batched_job_runs_one_task_per_gpu(tmp_path):
    samples = make_shards(tmp_path / "in", shards=4, per_shard=5)
    (tmp_path / "where.py").write_text(WHERE)
    env = fake_nvidia_smi(tmp_path / "bin", 2)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    ok(run("htmapper", "-p", tmp_path / "where.py", tmp_path / "in/data-{0..3}.tar",
           tmp_path / "gpu-@4.tar", "--workers", "3", "--resources", "GPU=1",
           "--batch-size", "4", "-q", env=env))
    got = read_wds(sorted(tmp_path.glob("gpu-*.tar")))
    assert sorted(s["__key__"] for s in got) == sorted(samples)
    by_worker: dict[bytes, set] = {}
    for s in got:
        by_worker.setdefault(s["worker.txt"], set()).add(s["gpu.txt"])
    assert set().union(*by_worker.values()) <= {b"0", b"1"}, by_worker
    assert all(len(g) == 1 for g in by_worker.values()), by_worker  # pinned for good
