"""htmapper's task function on a cluster and in a fresh process: short shards grouped
several to a Dask task give what mapping each alone gives; the task frame tunes glibc's
malloc only in a process Dask started so.  (Moved from test_mapper_speed.py.)"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

import htools
from htools import mapper, tar
from htools.usercode.script import Script

IDENTITY = "def process_sample(s):\n    return s\n"


def test_many_tiny_shards_grouped_match_one_at_a_time(tmp_path, threads_client):
    """htmapper runs short shards several to a Dask task: every output, its index entry
    and the summary's counts are those of mapping each shard alone."""
    n = 120
    ins = []
    for s in range(n):
        url = str(tmp_path / f"t-{s:04d}.tar")
        with open(url, "wb") as f, tar.TarWriter(f) as w:
            for i in range(s % 3 + 1):
                w.write({"__key__": f"t{s:04d}/{i}", "txt": b"x" * (s + 1), "cls": b"%d" % i})
        ins.append(url)
    script = Script.from_source(IDENTITY, "identity.py", require=("process_sample",))
    s = htools.map_shards(ins, str(tmp_path / "out" / "o-@0120.tar"), script,
                          client=threads_client, quiet=True)
    assert s.ok and s.shards_done == n
    assert s.samples_read == s.samples_written == sum(i % 3 + 1 for i in range(n))
    index = json.loads((tmp_path / "out" / "o.index.json").read_text())
    for k, url in enumerate(ins):
        alone = str(tmp_path / f"alone-{k}.tar")
        r = mapper.map_shard(url, alone, script, options={}, mtime=0)
        with open(alone, "rb") as a, open(tmp_path / "out" / f"o-{k:04d}.tar", "rb") as b:
            assert a.read() == b.read()
        e = index["shardlist"][k]
        assert (e["nsamples"], e["filesize"], e["sha256"], e["fields"]) == \
            (r["samples_written"], r["bytes_out"], r["sha256"], r["fields"])


@pytest.mark.parametrize("env, changed", [({"MALLOC_TRIM_THRESHOLD_": "65536"}, True),
                                          ({}, False),
                                          ({"MALLOC_TRIM_THRESHOLD_": "65536",
                                            "HTOOLS_MALLOC_TUNE": "0"}, False),
                                          ({"MALLOC_TRIM_THRESHOLD_": str(64 << 20)}, False)])
def test_malloc_is_tuned_only_in_a_process_that_dask_started_so(env, changed):
    """A Dask worker starts with MALLOC_TRIM_THRESHOLD_=65536 (a page fault for most
    samples a task allocates): the task frame raises glibc's thresholds there, and
    nowhere else."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    clean = {k: v for k, v in os.environ.items()
             if k not in ("MALLOC_TRIM_THRESHOLD_", "HTOOLS_MALLOC_TUNE")}
    out = subprocess.run([sys.executable, "-c", "from htools.runtime import task; "
                          "print(task.tune_malloc())"], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(changed)
