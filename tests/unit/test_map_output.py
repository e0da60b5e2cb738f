"""htmapper's hot path keeps its output: pinned digests of what a map task writes.

(What it checks is the output, not the speed: benchmarks/ measures the speed.  The file
was test_mapper_speed.py; its tests that need a cluster or a process moved to
tests/system/test_map_tasks.py.)

The inputs are made with htools' own writer from a seeded generator; each script
runs through :func:`htools.mapper.map_shard` (the task function every htmapper job
runs) and the sha256 of its output, its counts and its field counts are pinned.
They were taken before the per-sample fast paths (the inlined ``outputs_of``, the
writer's cached field plans, the threaded sha256); refactors must keep them.
"""

from __future__ import annotations

import hashlib
import io
import random

import pytest

from htools import mapper, tar
from htools.runtime.hashing import Sha256
from htools.usercode.script import Script

SCRIPTS = {
    "identity": "def process_sample(s):\n    return s\n",
    # a new dict keeping key and __key__; a changed field; a dropped sample
    "edit": (
        "def process_sample(s):\n"
        "    if s['cls'] == b'3':\n"
        "        return None\n"
        "    return {'__key__': s['__key__'], 'key': s['key'], 'bin': s['bin'][::-1],\n"
        "            'cls': s['cls'], 'txt': 'n=%d' % len(s['bin'])}\n"),
    # renames, several outputs, private fields only (dropped), the input mutated
    "general": (
        "def process_sample(s):\n"
        "    n = int(s['cls'])\n"
        "    if n == 0:\n"
        "        return {'key': s['key'] + '_r', 'bin': s['bin'][:10]}\n"
        "    if n == 1:\n"
        "        return [{'a.txt': b'x'}, {'b.txt': b'y', '_p': 1}]\n"
        "    if n == 2:\n"
        "        return {'_only': b'private'}\n"
        "    if n == 4:\n"
        "        return ({'__key__': s['__key__'] + f'-{i}', 'v': bytes([i])}\n"
        "                for i in range(2))\n"
        "    s['cls'] = b'%d' % (n * 2)\n"
        "    del s['key']\n"
        "    return s\n"),
}

PINNED = {  # script: (sha256 of the three outputs, in order; read, mapped, written, dropped)
    'edit': (
        ['91936bd5f578f0e965cd0baaf581a1a94ab2adc3e9d5591e72e35e06ef76b3ce',
         'a9af6fa8e0ee0cdbff876cdd3e035d728605ab26977733405ebb0a99a792590a',
         'a8d226869d833b814badaa45a64dd1a962a0ab16b1236688aac0c1d40fd3392c'],
        (520, 445, 445, 75)),
    'general': (
        ['ac1690aab6c1129076e9f75d36e31d1ab3e6edea5cc5079ba95fa507b2b7655a',
         'e5af9c36557e01d7ce9142c1054bcd55b7f4c8ecaae8efc7b06dc4473b4cf6ea',
         'adbd9ab5c5a15292466be0b0d08c8400053706ac8e76f5ee49a975e0f937651a'],
        (520, 445, 594, 75)),
    'identity': (
        ['0bfe777e9b318ad761abaa73b9f9964151b3f02269a494e800bf54c458688696',
         '81a110704b325fbfb1a6feaec34a228b2ea5395a8f2c4b21c9d6668d875e3f38',
         '813e154fbd72b0db07a2d81ef1360ddb74e59e30ad13ca5c36f1444f2af8bdc0'],
        (520, 520, 520, 0)),
}


def make_inputs(folder) -> list[str]:
    """Three shards: small, mixed and large values (the writer's direct-write size too)."""
    rng = random.Random(13)
    urls = []
    for s, (count, sizes) in enumerate([(300, (0, 900)), (200, (1000, 20000)),
                                        (20, (60000, 140000))]):
        url = str(folder / f"in-{s}.tar")
        with open(url, "wb") as f, tar.TarWriter(f) as w:
            for i in range(count):
                w.write({"__key__": f"d{s}/k{i:05d}", "bin": rng.randbytes(rng.randint(*sizes)),
                         "cls": str(i % 7).encode()})
        urls.append(url)
    return urls


def run_script(name: str, folder) -> tuple[list[str], tuple, list[dict]]:
    script = Script.from_source(SCRIPTS[name], f"{name}.py", require=("process_sample",))
    digests, results = [], []
    for i, url in enumerate(make_inputs(folder)):
        out = str(folder / f"out-{name}-{i}.tar")
        r = mapper.map_shard(url, out, script, options={}, max_errors=0, mtime=0)
        assert r["status"] == "ok", r["error"]
        with open(out, "rb") as f:
            data = f.read()
        digests.append(hashlib.sha256(data).hexdigest())
        assert r["sha256"] == digests[-1] and r["bytes_out"] == len(data)
        fields: dict = {}
        for sample in tar.read_samples(io.BytesIO(data)):
            for field in sample:
                if not field.startswith("__"):
                    fields[field] = fields.get(field, 0) + 1
        assert r["fields"] == fields
        results.append(r)
    counts = tuple(sum(r[c] for r in results) for c in
                   ("samples_read", "samples_mapped", "samples_written", "samples_dropped"))
    return digests, counts, results


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_map_output_is_pinned(name, tmp_path):
    digests, counts, _ = run_script(name, tmp_path)
    assert (digests, counts) == PINNED[name]


@pytest.mark.parametrize("size", [0, 100, (1 << 20) - 1, 1 << 20, 3 << 20, 40 << 20])
def test_threaded_sha256_matches_hashlib(size):
    rng = random.Random(size)
    data = rng.randbytes(size)
    h = Sha256(threaded=True)
    pos = 0
    while pos < size:  # pieces of every kind and size, around the batch size too
        n = rng.choice([1, 511, 4096, 70_000, 1 << 20, 3 << 20])
        piece = data[pos:pos + n]
        h.update(rng.choice([bytes, bytearray, memoryview])(piece))
        pos += n
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert h.size == size


def test_threaded_sha256_copies_what_it_is_given():
    h = Sha256(threaded=True)
    h.update(bytes(Sha256.SYNC))  # past the inline part
    buf = bytearray(b"a" * 5000)
    h.update(buf)
    buf[:] = b"b" * 5000  # the caller reuses its buffer
    assert h.hexdigest() == hashlib.sha256(bytes(Sha256.SYNC) + b"a" * 5000).hexdigest()


def test_a_worker_imports_only_the_task_module():
    """htmapper's tasks pickle :func:`htools.maptask.map_shard`: a worker's first task
    imports that module, not the job's (the lineage, the run loop, the pre-flight
    checks, the list filter: ~45 ms of a worker's CPU each job)."""
    import subprocess
    import sys

    assert mapper.map_shard.__module__ == "htools.maptask"
    heavy = ("htools.mapper", "htools.lineage_record", "htools.lineage", "htools.runtime.engine",
             "htools.runtime.preflight", "htools.selection", "htools.usercode.batches")
    code = ("import sys, htools.maptask\n"
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == []


def test_a_field_name_that_is_not_str_is_a_sample_error_as_before():
    """The fast path (the output keeps the input's key) checks field names as the general
    one does: a bytes name among them fails that sample, within --max-errors, rather than
    reaching the writer."""
    from htools.summary import ShardResult
    from htools.usercode.apply import map_samples

    def script(s):
        return {"__key__": s["__key__"], b"raw": b"1", "cls": b"2"}

    result = ShardResult(max_errors=5)
    samples = [{"__key__": f"k{i}", "__url__": "u.tar", "cls": b"1"} for i in range(3)]
    assert list(map_samples(iter(samples), script, result, "u.tar")) == []
    assert result.samples_read == 3 and result.sample_errors == 3
    assert "startswith" in result.errors[0]["error"]
