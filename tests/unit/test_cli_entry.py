"""The console scripts' entry (htools.cli.entry): the embedded cluster's fork server starts
before the command's module is imported, so that its imports (Dask, the command) run beside
the command's own -- unless the flags say no embedded cluster will start."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from htools.cli.entry import wants_embedded_cluster


@pytest.mark.parametrize("args,env,wanted", [
    (["in-{0..3}.tar", "out-@4.tar", "-p", "s.py"], {}, True),
    (["in.tar", "o.tar", "--workers", "2", "--overwrite"], {}, True),
    (["in.tar", "o.tar", "-c", "tcp://sched:8786"], {}, False),
    (["in.tar", "o.tar", "-ctcp://sched:8786"], {}, False),
    (["in.tar", "o.tar", "--cluster", "k8s://x"], {}, False),
    (["in.tar", "o.tar", "--cluster=slurm://p"], {}, False),
    (["in.tar", "o.tar"], {"HTOOLS_SCHEDULER": "sched:8786"}, False),
    (["in.tar", "o.tar", "--dry-run"], {}, False),
    (["--help"], {}, False),
    (["-h"], {}, False),
    (["--version"], {}, False),
    (["in.tar", "o.tar", "--", "--dry-run"], {}, True),  # past "--": an argument
])
def test_which_runs_start_the_fork_server_early(args, env, wanted):
    assert wants_embedded_cluster(args, env) is wanted


def _started_early(args: list[str], env: dict) -> dict:
    """Run the entry of htmapper with ``args`` far enough to see whether the fork server
    was started before the command's module was imported (the module's main replaced)."""
    code = (
        "import json, sys\n"
        "from multiprocessing import forkserver\n"
        "from htools.cli import entry\n"
        "seen = {}\n"
        "class Fake:\n"
        "    @staticmethod\n"
        "    def main():\n"
        "        pid = getattr(forkserver._forkserver, '_forkserver_pid', None)\n"
        "        seen['server'] = bool(pid)\n"
        "        seen['dask_here'] = 'distributed' in sys.modules\n"
        "entry.importlib.import_module = lambda name: Fake\n"
        f"sys.argv = ['htmapper', *{args!r}]\n"
        "entry.htmapper()\n"
        "print(json.dumps(seen))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


def test_the_server_starts_before_the_command_imports_anything_heavy():
    seen = _started_early(["in.tar", "o.tar"], {"HTOOLS_START_METHOD": "forkserver"})
    assert seen == {"server": True, "dask_here": False}


def test_no_server_for_a_scheduler_address():
    seen = _started_early(["in.tar", "o.tar", "-c", "tcp://127.0.0.1:1"],
                          {"HTOOLS_START_METHOD": "forkserver"})
    assert seen == {"server": False, "dask_here": False}
