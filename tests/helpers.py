"""Helpers for the tests: the one environment every process they start gets, the tools
scripts/setup installs (a missing one FAILS the test: a broken set-up must not pass as
skips), data made with independent writers, the CLI run as a user would, and results
read back with independent readers (webdataset, GNU tar)."""

from __future__ import annotations

import importlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent

#: The environment every process of the tests needs, Dask workers included: without
#: it gcsfs stalls for 60 s per bucket against the GCS emulator.  conftest.py puts it
#: into os.environ once, at import, so every child process inherits it; this is the
#: only place it is spelled.
TEST_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a process a test starts: os.environ, TEST_ENV, then ``extra``."""
    return {**os.environ, **TEST_ENV, **extra}


ENV = child_env()

# Debian puts some daemons (nginx) in sbin, which a non-root PATH may lack.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def require_tool(name: str) -> str:
    """The path of a program that scripts/setup installs (Debian packages, or the .venv);
    when it is missing the test fails and says how to fix it."""
    search = os.pathsep.join([os.environ.get("PATH", ""), str(BIN), *_SBIN])
    found = shutil.which(name, path=search)
    if found is None:
        pytest.fail(f"scripts/setup installs {name}; it is missing: run scripts/setup",
                    pytrace=False)
    return found


def require_module(name: str) -> ModuleType:
    """A Python package of the `test` extra in pyproject.toml (scripts/setup installs it);
    when it cannot be imported the test fails and says how to fix it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        pytest.fail(f"scripts/setup installs {name}; it is missing ({e}): run scripts/setup",
                    pytrace=False)


def make_shards(folder: Path, shards: int = 4, per_shard: int = 25, seed: int = 0,
                name: str = "data") -> dict[str, dict]:
    """Write shards with webdataset's own TarWriter; return key -> sample."""
    wds = require_module("webdataset")
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    samples = {}
    for s in range(shards):
        with wds.TarWriter(str(folder / f"{name}-{s}.tar")) as w:
            for i in range(per_shard):
                key = f"s{s}/k{i:04d}"
                sample = {"__key__": key, "jpg": rng.randbytes(rng.randint(1, 3000)),
                          "cls": str(i % 5).encode(), "txt": f"caption {s} {i} ü".encode()}
                w.write(sample)
                samples[key] = {k: v for k, v in sample.items()}
    return samples


def write_grouped(folder: Path, shards: int, per_shard: int, seed: int = 0,
                  groups: int = 7) -> list[dict]:
    """Shards (webdataset's TarWriter) whose samples carry a coarse ``grp`` (``groups``
    values: many equal sort keys) and their position ``pos`` (shard, index), so that
    stability can be checked; returns the samples in input order."""
    wds = require_module("webdataset")
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for s in range(shards):
        with wds.TarWriter(str(folder / f"d-{s:02d}.tar")) as w:
            for i in range(per_shard):
                sample = {"__key__": f"s{s:02d}-{i:03d}",
                          "grp": str(rng.randrange(groups)).encode(),
                          "pos": f"{s:02d}-{i:03d}".encode(),
                          "bin": rng.randbytes(rng.randrange(900))}
                w.write(sample)
                samples.append(sample)
    return samples


def write_duplicates(folder: Path, shards: int, per_shard: int, *, seed: int, distinct: int,
                     longest: int, extra) -> list[dict]:
    """Shards whose ``img`` takes one of ``distinct`` values (up to ``longest`` bytes):
    duplicates within a shard and across shards; ``extra(rng, v)``: the fields between
    ``img`` and ``pos`` (the sample's place in input order) of a sample whose ``img`` is
    value ``v``.  Returns the samples in input order."""
    wds = require_module("webdataset")
    rng = random.Random(seed)
    values = [rng.randbytes(rng.randrange(1, longest)) for _ in range(distinct)]
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for s in range(shards):
        with wds.TarWriter(str(folder / f"d-{s:02d}.tar")) as w:
            for i in range(per_shard):
                v = rng.randrange(distinct)
                sample = {"__key__": f"s{s:02d}-{i:03d}", "img": values[v], **extra(rng, v),
                          "pos": f"{s:02d}-{i:03d}".encode()}
                w.write(sample)
                samples.append(sample)
    return samples


def firsts(samples: list[dict], field: str) -> list[dict]:
    """The first sample of each distinct ``field`` value, in input order."""
    seen, out = set(), []
    for x in samples:
        if x[field] not in seen:
            seen.add(x[field])
            out.append(x)
    return out


def read_wds(paths) -> list[dict]:
    """All samples of local tar files, read by the webdataset package."""
    wds = require_module("webdataset")
    paths = [str(p) for p in paths]
    out = []
    for sample in wds.WebDataset(paths, shardshuffle=False, empty_check=False):
        out.append({k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"})
    return out


def default_sigint() -> None:
    """A ``preexec_fn`` for a process a test will Ctrl-C: SIGINT as in a terminal (a shell
    running the suite in the background hands its children SIGINT ignored, and Python
    then keeps ignoring it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(tool: str, *args: str, env: dict | None = None, timeout: float = 180,
        cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True,
                          env=env or ENV, timeout=timeout, cwd=cwd)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


# Scripts that SIGKILL their worker once (a marker file remembers), in stage 1 of an
# exchange (process_sample) or in its writes (reduce_samples); format with mark=PATH.
KILL_IN_STAGE_1 = """
import os, signal
def process_sample(sample):
    if sample["__key__"] == "s1/k0005" and not os.path.exists({mark!r}):
        open({mark!r}, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return sample
"""

KILL_IN_STAGE_2 = """
import os, signal
def reduce_samples(key, samples):
    if key == "s2/k0007" and not os.path.exists({mark!r}):
        open({mark!r}, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return samples
"""


def interrupt(cmd: list[str], ready: Callable[[], bool], env: dict[str, str],
              timeout: float = 90, delay: float = 0.0) -> subprocess.CompletedProcess:
    """Run ``cmd``; once ``ready()`` (the job is under way) and ``delay`` seconds more,
    SIGINT its process group as a terminal's Ctrl-C does, and wait for it to exit (the
    seconds that took: ``.seconds_to_exit``)."""
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                            preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"the job ended before it was interrupted:\n" \
                                        f"{proc.communicate()[1]}"
            assert time.monotonic() < deadline, "the job never got under way"
            time.sleep(0.02)
        time.sleep(delay)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    done.seconds_to_exit = took  # type: ignore[attr-defined]
    return done
