"""The fork server's ``distributed.nanny.pre-spawn-environ`` (htools.clusters.forkserver):
read without importing Dask when no Dask config of the user's can set it, and always equal
to what Dask itself gives (distributed imported, its config read through ``dask.config``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CODE = """
import json, sys
from htools.clusters import forkserver
got = forkserver._spawn_environ()
loaded = "dask.config" in sys.modules
import distributed, dask.config
want = dict(dask.config.get("distributed.nanny.pre-spawn-environ") or {})
print(json.dumps([got, want, loaded]))
"""

JOBQUEUE = "jobqueue:\n  slurm:\n    name: dask-worker\n    cores: null\n"  # no such key
CASES = {
    "none": ({}, {}, False),
    "another file": ({"jobqueue.yaml": JOBQUEUE}, {}, False),
    "a file": ({"mine.yaml": "distributed:\n  nanny:\n    pre-spawn-environ:\n"
                             "      HTOOLS_T: 1\n      OMP_NUM_THREADS: 4\n"}, {}, True),
    "a file, underscores": ({"a.yml": "distributed: {nanny: {pre_spawn_environ: {X_T: 2}}}"},
                            {}, True),
    "a file, escaped": ({"b.json": '{"distributed": {"nanny": {"pre-\\u0073pawn-environ": '
                                   '{"Y_T": 3}}}}'}, {}, True),
    "a variable": ({}, {"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": "{'Z_T': 4}"}, True),
    "a parent": ({}, {"DASK_DISTRIBUTED__NANNY": "{'pre-spawn-environ': {'W_T': 5}}"}, True),
    "another variable": ({}, {"DASK_DISTRIBUTED__WORKER__DAEMON": "False"}, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_environ_is_dask_s(case, tmp_path):
    files, variables, dask_read = CASES[case]
    home, root, mine = tmp_path / "home", tmp_path / "root", tmp_path / "mine"
    for d in (home / ".config" / "dask", root, mine):
        d.mkdir(parents=True)
    for name, text in files.items():
        (mine / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env.update(HOME=str(home), DASK_ROOT_CONFIG=str(root), DASK_CONFIG=str(mine), **variables)
    p = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    got, want, loaded = json.loads(p.stdout.splitlines()[-1])
    assert got == want
    assert loaded == dask_read
    assert "MALLOC_TRIM_THRESHOLD_" in got  # distributed's defaults
    assert any(k.endswith("_T") for k in got) == dask_read  # the user's variable
