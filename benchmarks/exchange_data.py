"""The data of benchmarks/bench_exchange.py (and bench_exchange_stages.py, suite.py):
shards of random-keyed samples, the same samples as parquet and their keys as a TSV."""

from __future__ import annotations

import os
import random

from htools import storage, tar

SHARD_MB = 32  # input shard size: the shard count grows with the data


def copy_shard(url: str, out: str, options: dict | None = None) -> None:
    """One shard read and written once with htools' codec (``options``: the storage
    options of the write): what every copy baseline does a shard."""
    with storage.open_read(url) as raw, storage.open_write(out, options) as dst, \
            tar.TarWriter(dst) as w:
        for s in tar.read_samples(tar.open_stream_reader(raw, url), url):
            s.pop("__url__", None)
            w.write(s)


def shard_count(gb: float) -> int:
    return max(4, round(gb * 1024 / SHARD_MB))


def make_dataset(folder: str, gb: float, sample_kib: int, seed: int = 0) -> list[str]:
    """Shards of samples with a random hex ``__key__``, a ``bin`` payload and a ``cls``."""
    os.makedirs(folder, exist_ok=True)
    n = shard_count(gb)
    size = sample_kib << 10
    per_shard = max(1, int(gb * (1 << 30) / size / n))
    rng = random.Random(seed)
    blob = rng.randbytes(size + 4096)  # the same data on every run (digests compare)
    urls = []
    for s in range(n):
        url = os.path.join(folder, f"in-{s:04d}.tar")
        with open(url, "wb") as f, tar.TarWriter(f) as w:
            for i in range(per_shard):
                at = rng.randrange(4096)
                w.write({"__key__": f"{rng.getrandbits(64):016x}", "bin": blob[at:at + size],
                         "cls": str(i % 10).encode()})
        urls.append(url)
    return urls


def total_bytes(urls: list[str]) -> int:
    return sum(os.path.getsize(u) for u in urls)


def samples_of(url: str):
    with storage.open_read(url) as raw:
        for s in tar.read_samples(tar.open_stream_reader(raw, url), url):
            s.pop("__url__", None)
            yield s


def to_parquet(urls: list[str], folder: str) -> str:
    """The same samples as parquet, one uncompressed file per input shard (untimed)."""
    import pandas as pd

    os.makedirs(folder, exist_ok=True)
    for i, url in enumerate(urls):
        rows = list(samples_of(url))
        df = pd.DataFrame({"key": [r["__key__"] for r in rows],
                           "cls": [r["cls"] for r in rows], "bin": [r["bin"] for r in rows]})
        df.to_parquet(os.path.join(folder, f"part-{i:04d}.parquet"), compression=None,
                      index=False)
    return folder


def keys_tsv(urls: list[str], path: str) -> str:
    with open(path, "w") as f:
        for i, url in enumerate(urls):
            for s in samples_of(url):
                f.write(f"{s['__key__']}\t{i}\n")
    return path
