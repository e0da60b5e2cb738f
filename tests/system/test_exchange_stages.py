"""benchmarks/bench_exchange_stages.py: its in-process stage 1 and write tasks make a
shuffle of the inputs (every sample once, bytes as read), and each side is measured."""

from __future__ import annotations

import collections
import os
import sys
from pathlib import Path

from htools import storage, tar

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_exchange_stages as stages  # noqa: E402
from exchange_data import make_dataset  # noqa: E402


def _samples(paths: list[str]) -> collections.Counter:
    found: collections.Counter = collections.Counter()
    for url in paths:
        with storage.open_read(url) as raw:
            for s in tar.read_samples(tar.open_stream_reader(raw, url), url):
                found[(s["__key__"], s["bin"], s["cls"])] += 1
    return found


def test_the_tasks_shuffle_every_sample_once(tmp_path):
    inputs = make_dataset(str(tmp_path / "in"), 0.004, 16)
    os.makedirs(tmp_path / "scratch")
    os.makedirs(tmp_path / "out")
    runs = stages.stage_one(inputs, str(tmp_path / "scratch"))
    outs = stages.write_tasks(runs, len(inputs), str(tmp_path / "out"), index=True)
    assert len(outs) == len(inputs)
    assert _samples(outs) == _samples(inputs)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.path.basename(o) for o in outs)


def test_every_side_is_measured(tmp_path):
    inputs = make_dataset(str(tmp_path / "in"), 0.004, 16)
    best, digest = stages.measure(inputs, str(tmp_path), repeat=2)
    assert set(best) == {"copy once", "stage 1", "write, no index", "write, index"}
    assert all(v > 0 for v in best.values())
    assert len(digest) == 64
    lines = stages.report(best)
    assert lines[-2].startswith("copy once / exchange (index): ")
    assert lines[-1].startswith("copy once / exchange (no index): ")


def test_the_data_is_the_same_on_every_run(tmp_path):
    """Two trees' outputs compare by digest only over the same inputs."""
    a = make_dataset(str(tmp_path / "a"), 0.004, 16)
    b = make_dataset(str(tmp_path / "b"), 0.004, 16)
    assert [Path(u).read_bytes() for u in a] == [Path(u).read_bytes() for u in b]
