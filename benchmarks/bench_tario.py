"""Benchmark htools.tario against Python's tarfile on the same bytes.

Reader: both sides iterate every member, read its bytes and group members into
samples by key.  Writer: htools ``TarWriter.write`` vs ``tarfile.addfile`` with a
``TarInfo`` and a ``BytesIO`` per member.  Also gzip read/write throughput of
isal vs the standard library.  Prints ratios; asserts nothing about speed.

    python benchmarks/bench_tario.py            # ~96 MB of member data per case
    python benchmarks/bench_tario.py --quick    # a tiny run
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import tarfile
import time
from typing import Callable, Iterator

from htools import compress, tario

FIELDS = ("jpg", "json")  # two members of the benchmarked size per sample


def make_samples(member_size: int, total: int) -> list[dict]:
    """Samples of two fields (``jpg``, ``json``), each ``member_size`` bytes."""
    n = max(1, total // (member_size * len(FIELDS)))
    blob = os.urandom(member_size + 4096)
    return [
        {"__key__": f"train/sample{i:08d}",
         **{f: blob[(i + j) % 4096:(i + j) % 4096 + member_size] for j, f in enumerate(FIELDS)}}
        for i in range(n)
    ]


def htools_write(samples: list[dict]) -> bytes:
    out = io.BytesIO()
    tario.write_samples(out, samples, compress=None)
    return out.getvalue()


def tarfile_write(samples: list[dict]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for sample in samples:
            key = sample["__key__"]
            for field in sorted(f for f in sample if not f.startswith("_")):
                data = sample[field]
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size = len(data)
                info.mode = 0o644
                tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def htools_read(data: bytes) -> int:
    n = 0
    for _ in tario.read_samples(io.BytesIO(data), "bench.tar"):
        n += 1
    return n


def _tarfile_samples(data: bytes) -> Iterator[dict]:
    sample: dict | None = None
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tf:
        for member in tf:
            if not member.isfile():
                continue
            payload = tf.extractfile(member).read()  # type: ignore[union-attr]
            key, field = tario.split_key(member.name)
            if sample is None or sample["__key__"] != key:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": "bench.tar"}
            sample[field] = payload
    if sample is not None:
        yield sample


def tarfile_read(data: bytes) -> int:
    n = 0
    for _ in _tarfile_samples(data):
        n += 1
    return n


def best_of(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_tar(sizes: list[int], total: int, repeat: int) -> None:
    print(f"tar codec, {total / 1e6:.0f} MB of member data per case, best of {repeat}")
    head = (f"{'member':>8} {'members':>8} | {'read htools':>11} {'tarfile':>8} {'speedup':>7}"
            f" | {'write htools':>12} {'tarfile':>8} {'speedup':>7}")
    print(head)
    print("-" * len(head))
    for size in sizes:
        samples = make_samples(size, total)
        data = htools_write(samples)
        if tarfile_read(data) != htools_read(data) or htools_read(data) != len(samples):
            raise SystemExit("readers disagree")
        r_h = best_of(lambda: htools_read(data), repeat)
        r_t = best_of(lambda: tarfile_read(data), repeat)
        w_h = best_of(lambda: htools_write(samples), repeat)
        w_t = best_of(lambda: tarfile_write(samples), repeat)
        members = len(samples) * len(FIELDS)
        label = f"{size // 1024} KiB"
        print(f"{label:>8} {members:>8} | {r_h:>10.3f}s {r_t:>7.3f}s {r_t / r_h:>6.1f}x"
              f" | {w_h:>11.3f}s {w_t:>7.3f}s {w_t / w_h:>6.1f}x")
        mb = len(data) / 1e6
        print(f"{'':>8} {'MB/s':>8} | {mb / r_h:>11.0f} {mb / r_t:>8.0f} {'':>7}"
              f" | {mb / w_h:>12.0f} {mb / w_t:>8.0f}")


def bench_gzip(total: int, repeat: int) -> None:
    samples = make_samples(16 * 1024, total)
    tar = htools_write(samples)
    # A compressible payload: half random, half repeated text.
    tar = tar[: len(tar) // 2] + (b"htools sample text " * (len(tar) // 38 + 1))[: len(tar) // 2]
    mb = len(tar) / 1e6

    def write(mod, level: int) -> bytes:
        out = io.BytesIO()
        with mod.GzipFile(fileobj=out, mode="wb", compresslevel=level, mtime=0) as gz:
            gz.write(tar)
        return out.getvalue()

    def read(mod, blob: bytes) -> None:
        with mod.GzipFile(fileobj=io.BytesIO(blob), mode="rb") as gz:
            while gz.read(1 << 20):
                pass

    print(f"\ngzip, {mb:.0f} MB of tar, backend {compress.GZIP_BACKEND}, best of {repeat}")
    if compress.GZIP_BACKEND != "isal":
        print("isal not installed: nothing to compare")
        return
    from isal import igzip

    blob_i = write(igzip, 2)
    blob_s = write(gzip, 6)
    w_i = best_of(lambda: write(igzip, 2), repeat)
    w_s = best_of(lambda: write(gzip, 6), repeat)
    r_i = best_of(lambda: read(igzip, blob_s), repeat)
    r_s = best_of(lambda: read(gzip, blob_s), repeat)
    print(f"{'':>14} {'isal':>8} {'gzip':>8} {'ratio':>6}")
    print(f"{'write MB/s':>14} {mb / w_i:>8.0f} {mb / w_s:>8.0f} {w_s / w_i:>5.1f}x"
          f"   (isal level 2: {len(blob_i) / len(tar):.2f} of input; gzip level 6:"
          f" {len(blob_s) / len(tar):.2f})")
    print(f"{'read MB/s':>14} {mb / r_i:>8.0f} {mb / r_s:>8.0f} {r_s / r_i:>5.1f}x")
    # The full htools path: read samples out of a .tgz / .tar.zst
    for suffix in (".tgz", ".tar.zst"):
        out = io.BytesIO()
        tario.write_samples(out, samples, url="x" + suffix)
        blob = out.getvalue()

        def read_compressed() -> None:
            for _ in tario.read_samples(tario.open_stream_reader(io.BytesIO(blob), "x" + suffix)):
                pass

        def write_compressed() -> None:
            tario.write_samples(io.BytesIO(), samples, url="x" + suffix)

        t_r = best_of(read_compressed, repeat)
        t_w = best_of(write_compressed, repeat)
        tmb = len(htools_write(samples)) / 1e6
        print(f"htools {suffix:>8}: read samples {tmb / t_r:>6.0f} MB/s, write {tmb / t_w:>6.0f}"
              f" MB/s (16 KiB members)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (a few MB)")
    parser.add_argument("--mb", type=float, default=96, help="MB of member data per case")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="1,16,128", help="member sizes in KiB")
    parser.add_argument("--no-gzip", action="store_true", help="skip the gzip comparison")
    args = parser.parse_args()
    total = int((4 if args.quick else args.mb) * 1e6)
    repeat = 1 if args.quick else args.repeat
    bench_tar([int(float(kib) * 1024) for kib in args.sizes.split(",")], total, repeat)
    if not args.no_gzip:
        bench_gzip(total, repeat)


if __name__ == "__main__":
    main()
