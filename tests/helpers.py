"""Helpers for end-to-end tests: make data with independent writers, run the CLI
as a user would, read results back with independent readers (webdataset, GNU tar)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import webdataset as wds

BIN = Path(sys.executable).parent
ENV = dict(os.environ, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")


def make_shards(folder: Path, shards: int = 4, per_shard: int = 25, seed: int = 0,
                name: str = "data") -> dict[str, dict]:
    """Write shards with webdataset's own TarWriter; return key -> sample."""
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


def read_wds(paths) -> list[dict]:
    """All samples of local tar files, read by the webdataset package."""
    paths = [str(p) for p in paths]
    out = []
    for sample in wds.WebDataset(paths, shardshuffle=False, empty_check=False):
        out.append({k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"})
    return out


def run(tool: str, *args: str, env: dict | None = None, timeout: float = 180,
        cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True,
                          env=env or ENV, timeout=timeout, cwd=cwd)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc
