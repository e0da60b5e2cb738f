"""Benchmark htools.tar against Python's tarfile on the same bytes.

Reader: both sides iterate every member, read its bytes and group members into
samples by key.  Writer: htools ``TarWriter.write`` vs ``tarfile.addfile`` with a
``TarInfo`` and a ``BytesIO`` per member.  Also gzip read/write throughput of
isal vs the standard library.  Prints ratios; asserts nothing about speed.

    python benchmarks/bench_tario.py            # ~96 MB of member data per case
    python benchmarks/bench_tario.py --quick    # a tiny run
    python benchmarks/bench_tario.py --cpu      # CPU time (steadier on a shared machine)
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import random
import tarfile
import time
from typing import BinaryIO, Callable, Iterator

from htools import tar
from htools.tar import compress

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


def htools_write(samples: list[dict], out: BinaryIO | None = None) -> bytes:
    sink = io.BytesIO() if out is None else out
    tar.write_samples(sink, samples, compress=None)
    return sink.getvalue() if out is None else b""


def tarfile_write(samples: list[dict], out: BinaryIO | None = None) -> bytes:
    sink = io.BytesIO() if out is None else out
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for sample in samples:
            key = sample["__key__"]
            for field in sorted(f for f in sample if not f.startswith("_")):
                data = sample[field]
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size = len(data)
                info.mode = 0o644
                tf.addfile(info, io.BytesIO(data))
    return sink.getvalue() if out is None else b""


def htools_read(data: bytes) -> int:
    n = 0
    for _ in tar.read_samples(io.BytesIO(data), "bench.tar"):
        n += 1
    return n


def _tarfile_samples(data: bytes) -> Iterator[dict]:
    sample: dict | None = None
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tf:
        for member in tf:
            if not member.isfile():
                continue
            payload = tf.extractfile(member).read()  # type: ignore[union-attr]
            key, field = tar.split_key(member.name)
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


def without_headers(data: bytes) -> list[tuple[str, bytes]]:
    return [(name, payload) for name, payload, _ in tar.iter_members(io.BytesIO(data))]


CLOCK = time.perf_counter  # --cpu: time.process_time


def best_of(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = CLOCK()
        fn()
        best = min(best, CLOCK() - t)
    return best


def best_of_pair(a: Callable[[], object], b: Callable[[], object],
                 repeat: int) -> tuple[float, float]:
    """Best times of ``a`` and ``b`` run alternately, so both see the same machine load."""
    best_a = best_b = float("inf")
    for _ in range(repeat):
        best_a = min(best_a, best_of(a, 1))
        best_b = min(best_b, best_of(b, 1))
    return best_a, best_b


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
        if tarfile_write(samples) != data:  # same member bytes (header details aside)?
            check = [without_headers(x) for x in (tarfile_write(samples), data)]
            if check[0] != check[1]:
                raise SystemExit("writers disagree")
        r_h, r_t = best_of_pair(lambda: htools_read(data), lambda: tarfile_read(data), repeat)
        # Writers write to a buffered file that discards (no page faults of a growing
        # BytesIO, which would dominate at large members and hide the codec).
        with open(os.devnull, "wb") as null:
            w_h, w_t = best_of_pair(lambda: htools_write(samples, null),
                                    lambda: tarfile_write(samples, null), repeat)
        members = len(samples) * len(FIELDS)
        label = f"{size // 1024} KiB"
        print(f"{label:>8} {members:>8} | {r_h:>10.3f}s {r_t:>7.3f}s {r_t / r_h:>6.1f}x"
              f" | {w_h:>11.3f}s {w_t:>7.3f}s {w_t / w_h:>6.1f}x")
        mb = len(data) / 1e6
        print(f"{'':>8} {'MB/s':>8} | {mb / r_h:>11.0f} {mb / r_t:>8.0f} {'':>7}"
              f" | {mb / w_h:>12.0f} {mb / w_t:>8.0f}")


def gzip_samples(total: int) -> list[dict]:
    """16 KiB members, half random bytes and half text-like (compresses to about 0.8)."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(2, 9)))
             for _ in range(5000)]
    corpus = " ".join(rng.choice(words) for _ in range(200_000)).encode()
    samples = []
    for i in range(max(1, total // (16 * 1024 * len(FIELDS)))):
        sample = {"__key__": f"train/sample{i:08d}"}
        for field in FIELDS:
            at = rng.randrange(len(corpus) - 8192)
            sample[field] = rng.randbytes(8192) + corpus[at:at + 8192]
        samples.append(sample)
    return samples


def bench_gzip(total: int, repeat: int) -> None:
    samples = gzip_samples(total)
    data = htools_write(samples)
    mb = len(data) / 1e6

    def write(mod, level: int) -> bytes:
        out = io.BytesIO()
        with mod.GzipFile(fileobj=out, mode="wb", compresslevel=level, mtime=0) as gz:
            gz.write(data)
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
    w_i, w_s = best_of_pair(lambda: write(igzip, 2), lambda: write(gzip, 6), repeat)
    r_i, r_s = best_of_pair(lambda: read(igzip, blob_s), lambda: read(gzip, blob_s), repeat)
    print(f"{'':>14} {'isal':>8} {'gzip':>8} {'ratio':>6}")
    print(f"{'write MB/s':>14} {mb / w_i:>8.0f} {mb / w_s:>8.0f} {w_s / w_i:>5.1f}x"
          f"   (isal level 2: {len(blob_i) / len(data):.2f} of input; gzip level 6:"
          f" {len(blob_s) / len(data):.2f})")
    print(f"{'read MB/s':>14} {mb / r_i:>8.0f} {mb / r_s:>8.0f} {r_s / r_i:>5.1f}x")
    # The full htools path vs the codec alone: does the Python-level tar layer dominate?
    print(f"\nhtools on compressed shards ({mb:.0f} MB of tar, 16 KiB members), MB/s of tar")
    print(f"{'':>9} {'codec read':>10} {'samples':>8} | {'codec write':>11} {'samples':>8}")
    for suffix in (".tgz", ".tar.zst"):
        url = "x" + suffix
        out = io.BytesIO()
        tar.write_samples(out, samples, url=url)
        blob = out.getvalue()

        def codec_read() -> None:
            stream = tar.open_stream_reader(io.BytesIO(blob), url)
            while stream.read(1 << 20):
                pass

        def read_samples() -> None:
            for _ in tar.read_samples(tar.open_stream_reader(io.BytesIO(blob), url)):
                pass

        def codec_write() -> None:
            with tar.open_stream_writer(io.BytesIO(), url) as stream:
                for i in range(0, len(data), 1 << 20):
                    stream.write(data[i:i + (1 << 20)])

        def write_samples() -> None:
            tar.write_samples(io.BytesIO(), samples, url=url)

        times = [best_of(fn, repeat) for fn in (codec_read, read_samples, codec_write,
                                                  write_samples)]
        print(f"{suffix:>9} {mb / times[0]:>10.0f} {mb / times[1]:>8.0f} |"
              f" {mb / times[2]:>11.0f} {mb / times[3]:>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (a few MB)")
    parser.add_argument("--mb", type=float, default=96, help="MB of member data per case")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", default="1,16,128", help="member sizes in KiB")
    parser.add_argument("--no-gzip", action="store_true", help="skip the gzip comparison")
    parser.add_argument("--cpu", action="store_true",
                        help="time CPU of this process, not wall time (other load on the "
                             "machine then moves the ratios less)")
    args = parser.parse_args()
    if args.cpu:
        global CLOCK
        CLOCK = time.process_time
    total = int((4 if args.quick else args.mb) * 1e6)
    repeat = 1 if args.quick else args.repeat
    bench_tar([int(float(kib) * 1024) for kib in args.sizes.split(",")], total, repeat)
    if not args.no_gzip:
        bench_gzip(total, repeat)


if __name__ == "__main__":
    main()
