"""A command imports what it runs, not every heavy module htools can use: each CLI module,
imported in a fresh interpreter, leaves the data-frame and cloud libraries, Dask (imported
when the job starts its cluster) and the other tools out of ``sys.modules``.  A top-level
import of one of them in a module a command reaches makes this fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# never at import time, whatever the command
HEAVY = ["pyarrow", "pandas", "dask", "distributed", "bokeh", "s3fs", "gcsfs", "aiohttp",
         "botocore", "boto3", "webdataset", "fsspec"]
# the tools a command does not run
OTHERS = {
    "mapper": ["htools.exchange", "htools.extract", "htools.upload", "htools.parquet",
               "htools.shuffle", "htools.sort", "htools.peek"],
    "extract": ["htools.exchange", "htools.upload", "htools.shuffle", "htools.sort",
                "htools.mapper"],
    "upload": ["htools.extract", "htools.parquet", "htools.shuffle", "htools.sort",
               "htools.mapper"],
    "shuffle": ["htools.extract", "htools.parquet", "htools.upload", "htools.sort",
                "htools.mapper"],
    "sort": ["htools.extract", "htools.parquet", "htools.upload", "htools.shuffle",
             "htools.mapper"],
}


def imported(statement: str, names: list[str]) -> list[str]:
    """Which of ``names`` are in ``sys.modules`` after ``statement`` in a new interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps([n for n in {names!r} " \
           "if n in sys.modules]))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=os.environ.copy(), timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


@pytest.mark.parametrize("command", sorted(OTHERS))
def test_a_command_imports_only_what_it_runs(command):
    assert imported(f"import htools.cli.{command}", HEAVY + OTHERS[command]) == []


def test_the_checker_sees_an_import():
    assert imported("import htools.cli.mapper, pyarrow", HEAVY) == ["pyarrow"]


def test_the_package_keeps_its_functions():
    """``htools.upload`` is the function even after its module was imported by name
    (the package imports its tools on first use)."""
    code = ("import htools.upload, htools.extract\nfrom htools.shuffle import shuffle\n"
            "import htools\n"
            "assert all(callable(f) and not isinstance(f, type(htools)) for f in "
            "(htools.upload, htools.extract, htools.shuffle, htools.sort, htools.map_shards))\n"
            "assert htools.upload.__module__ == 'htools.upload'\n"
            "assert 'JobSummary' in dir(htools)")
    assert imported(code, []) == []


@pytest.mark.parametrize("statement", [
    "import htools.cli.upload",
    "import htools.runtime.forkpool, htools.upload_files",  # the fork pool's preload
    "import htools.summary, htools.written, htools.selection",
    "from htools.written import Written\n"  # a job's index in output order, 64 shards
    "w = Written({'output': f'/o/{j}.tar', 'nsamples': 1, 'filesize': 1, 'sha256': 'ab' * 32}"
    "            for j in range(64))\n"
    "assert list(w.order([f'/o/{j}.tar' for j in range(64)])) == list(range(64))",
])
def test_an_upload_of_files_imports_no_numpy(statement):
    """numpy (70 ms) is imported where it is used: --keep/--drop, a job's index order."""
    assert imported(statement, ["numpy"]) == []


def test_the_selection_package_gives_its_functions():
    code = ("from htools.selection import selected, prepared, run_selected\n"
            "import htools.selection as s\n"
            "assert s.selected is selected and callable(prepared) and callable(run_selected)\n"
            "assert 'selected' in dir(s)\n"
            "try:\n    s.nothing\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(1)")
    assert imported(code, []) == []
