"""process_batch(samples) and prepare_sample(sample): batches of one shard in order, the
same bytes as a per-sample script, a failing batch retried sample by sample, the
pipeline's overlap (reading, the model and writing at once), and every bad input
refused with one line and no output."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from helpers import child_env, make_shards, ok, read_wds, require_module, run

import htools
from htools.errors import HtoolsError, ScriptError
from htools.summary import ShardResult
from htools.usercode.batches import BatchSpec, run_batches

PER_SAMPLE = '''
def process_sample(sample):
    return {"__key__": sample["__key__"], "jpg": sample["jpg"][::-1],
            "len.txt": str(len(sample["jpg"])).encode(), "cls": sample["cls"]}
'''

BATCHED = '''
SIZES = []

def init():
    global READY
    READY = True

def prepare_sample(sample):
    sample["rev"] = sample["jpg"][::-1]
    return sample

def process_batch(samples):
    assert READY
    SIZES.append(len(samples))
    return [{"__key__": s["__key__"], "jpg": s["rev"], "len.txt": str(len(s["jpg"])).encode(),
             "cls": s["cls"]} for s in samples]
'''


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("batches")
    return d, make_shards(d / "in", shards=3, per_shard=45)


def test_batched_output_is_byte_identical_to_per_sample(shards, tmp_path):
    d, samples = shards
    ins = str(d / "in/data-{0..2}.tar")
    ok(run("htmapper", "-p", write(tmp_path / "one.py", PER_SAMPLE), ins,
           tmp_path / "one-@3.tar", "-q", "--workers", "1"))
    ok(run("htmapper", "-p", write(tmp_path / "batch.py", BATCHED), ins,
           tmp_path / "batch-@3.tar", "-q", "--workers", "1", "--batch-size", "8",
           "--prepare-threads", "3"))
    for i in range(3):
        assert (tmp_path / f"batch-{i}.tar").read_bytes() == \
            (tmp_path / f"one-{i}.tar").read_bytes()
    got = read_wds(sorted(tmp_path.glob("batch-*.tar")))
    assert [s["__key__"] for s in got] == list(samples)  # shard order, every sample
    assert all(s["jpg"] == samples[s["__key__"]]["jpg"][::-1] for s in got)


def test_batches_never_span_shards_and_the_last_is_shorter(shards, tmp_path):
    d, _samples = shards
    script = write(tmp_path / "sizes.py", '''
def process_batch(samples):
    n = str(len(samples)).encode()
    return [dict(s, **{"n.txt": n}) for s in samples]
''')
    ok(run("htmapper", "-p", script, str(d / "in/data-{0..1}.tar"), tmp_path / "o-@2.tar",
           "-q", "--batch-size", "16"))
    for i in range(2):
        sizes = [s["n.txt"] for s in read_wds([tmp_path / f"o-{i}.tar"])]
        assert sizes == [b"16"] * 32 + [b"13"] * 13


def test_drops_lists_and_renames(tmp_path):
    make_shards(tmp_path / "in", shards=1, per_shard=6)
    script = write(tmp_path / "mixed.py", '''
def prepare_sample(sample):
    return None if sample["__key__"].endswith("0") else sample

def process_batch(samples):
    out = []
    for s in samples:
        i = int(s["__key__"][-1])
        out.append(None if i == 1 else [{"a.txt": b"x"}, {"a.txt": b"y"}] if i == 2
                   else {"__key__": s["__key__"] + "-renamed", "a.txt": b"z"})
    return out
''')
    summary = htools.map_shards(str(tmp_path / "in/data-0.tar"), str(tmp_path / "o-0.tar"),
                                str(script), batch_size=4, workers=1, quiet=True)
    assert summary.ok, summary.failures
    keys = [s["__key__"] for s in read_wds([tmp_path / "o-0.tar"])]
    assert keys == ["s0/k0002-0", "s0/k0002-1", "s0/k0003-renamed", "s0/k0004-renamed",
                    "s0/k0005-renamed"]
    assert (summary.samples_read, summary.samples_dropped, summary.samples_mapped) == (6, 2, 4)


def test_a_failing_batch_runs_again_sample_by_sample(tmp_path):
    make_shards(tmp_path / "in", shards=1, per_shard=10)
    script = write(tmp_path / "bad.py", '''
def process_batch(samples):
    for s in samples:
        if s["__key__"] in ("s0/k0003", "s0/k0007"):
            raise ValueError("cannot embed " + s["__key__"])
    return samples
''')
    summary = htools.map_shards(str(tmp_path / "in/data-0.tar"), str(tmp_path / "o-0.tar"),
                                str(script), batch_size=4, max_errors=2, workers=1,
                                quiet=True)
    assert summary.ok, summary.failures
    assert summary.samples_failed == 2 and summary.samples_written == 8
    assert sorted(e["key"] for e in summary.errors) == ["s0/k0003", "s0/k0007"]
    assert "cannot embed s0/k0003" in summary.errors[0]["error"]
    assert len(read_wds([tmp_path / "o-0.tar"])) == 8
    # past the budget: the shard fails, naming the key, and writes nothing
    summary = htools.map_shards(str(tmp_path / "in/data-0.tar"), str(tmp_path / "p-0.tar"),
                                str(script), batch_size=4, max_errors=1, workers=1,
                                quiet=True)
    assert not summary.ok
    assert "process_batch raised on key 's0/k0007'" in summary.failures[0]["error"]
    assert not (tmp_path / "p-0.tar").exists()


def test_prepare_sample_errors_count_per_sample(tmp_path):
    make_shards(tmp_path / "in", shards=1, per_shard=5)
    script = write(tmp_path / "prep.py", '''
def prepare_sample(sample):
    if sample["__key__"] == "s0/k0002":
        raise OSError("truncated image")
    return sample

def process_batch(samples):
    return samples
''')
    summary = htools.map_shards(str(tmp_path / "in/data-0.tar"), str(tmp_path / "o-0.tar"),
                                str(script), max_errors=1, workers=1, quiet=True)
    assert summary.ok and summary.samples_failed == 1 and summary.samples_written == 4
    assert summary.errors[0]["key"] == "s0/k0002"
    assert "truncated image" in summary.errors[0]["error"]


def test_python_api_batch_fn(tmp_path):
    make_shards(tmp_path / "in", shards=2, per_shard=7)

    def prepare(sample):
        sample["up.txt"] = sample["txt"].upper()
        return sample

    def model(samples):
        return [{"up.txt": s["up.txt"], "n.txt": str(len(samples)).encode()} for s in samples]

    summary = htools.map_shards(str(tmp_path / "in/data-{0..1}.tar"),
                                str(tmp_path / "o-@2.tar"), batch_fn=model, prepare_fn=prepare,
                                batch_size=5, prepare_threads=2, workers=1, quiet=True)
    assert summary.ok, summary.failures
    got = read_wds(sorted(tmp_path.glob("o-*.tar")))
    assert [s["n.txt"] for s in got] == [b"5"] * 5 + [b"2"] * 2 + [b"5"] * 5 + [b"2"] * 2
    assert got[0]["up.txt"] == "CAPTION 0 0 ü".encode()  # bytes.upper(): ASCII only


# ------------------------------------------------------------------ bad input --

@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size 0: give a whole number of 1 or more"),
    (["--batch-size", "-3"], "--batch-size -3: give a whole number of 1 or more"),
    (["--prepare-threads", "0"], "--prepare-threads 0: give a whole number of 1 or more"),
])
def test_bad_numbers_are_one_line(tmp_path, args, message):
    make_shards(tmp_path / "in", shards=1, per_shard=2)
    p = run("htmapper", "-p", write(tmp_path / "b.py", BATCHED), tmp_path / "in/data-0.tar",
            tmp_path / "o-0.tar", *args, timeout=60)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip() == f"Error: {message}", p.stderr
    assert not (tmp_path / "o-0.tar").exists()


def test_both_entry_points_are_refused_before_any_task(tmp_path):
    both = write(tmp_path / "both.py", PER_SAMPLE + BATCHED)
    with pytest.raises(ScriptError, match=r"both\.py defines both process_sample\(\) and "
                                          r"process_batch\(\)"):
        htools.map_shards(str(tmp_path / "nowhere-0.tar"), str(tmp_path / "o-0.tar"), str(both))
    with pytest.raises(HtoolsError, match="go with a script that defines process_batch"):
        htools.map_shards(str(tmp_path / "nowhere-0.tar"), str(tmp_path / "o-0.tar"),
                          str(write(tmp_path / "one.py", PER_SAMPLE)), batch_size=4)
    prep = write(tmp_path / "prep.py", PER_SAMPLE + "\ndef prepare_sample(s):\n    return s\n")
    with pytest.raises(ScriptError, match="prepare_sample.. without process_batch"):
        htools.map_shards(str(tmp_path / "nowhere-0.tar"), str(tmp_path / "o-0.tar"), str(prep))


@pytest.mark.parametrize("body, message", [
    ("return {s['__key__']: s for s in samples}",
     "process_batch returned dict for the batch of 4 samples from key 's0/k0000'"),
    ("return (s for s in samples)",
     "process_batch returned a generator for the batch of 4 samples"),
    ("return samples[:-1]",
     "process_batch returned a list of 3 entries for a batch of 4 samples"),
    ("return ['text'] * len(samples)",
     "key 's0/k0000': process_batch returned str; expected a dict, None, or a list of dicts"),
    ("return [[1]] * len(samples)",
     "key 's0/k0000': process_batch returned a list holding int; expected dicts"),
])
def test_bad_results_fail_the_shard_with_one_line(tmp_path, body, message):
    make_shards(tmp_path / "in", shards=1, per_shard=6)
    script = write(tmp_path / "bad.py", f"def process_batch(samples):\n    {body}\n")
    p = run("htmapper", "-p", script, tmp_path / "in/data-0.tar", tmp_path / "o-0.tar",
            "--batch-size", "4", "--max-errors", "5", "-q")
    assert p.returncode == 1
    failed = [line for line in p.stderr.splitlines() if line.startswith("htools: FAILED")]
    assert len(failed) == 1 and message in failed[0], p.stderr
    assert str(tmp_path / "in/data-0.tar") in failed[0]
    assert not (tmp_path / "o-0.tar").exists()
    assert not list(tmp_path.glob("o-0*"))  # no temporary left either


# ------------------------------------------------------- the pipeline alone --

class Namespace:
    def __init__(self, **fns):
        self.__dict__.update(fns)


def _samples(n: int, delay: float = 0.0):
    for i in range(n):
        time.sleep(delay)
        yield {"__key__": f"k{i:04d}", "x": str(i).encode()}


def test_overlap_runs_at_the_slowest_stage_not_the_sum():
    """Reading, the model and writing each take about the same time per batch: the
    pipeline takes about one of them per batch, not the sum of the three."""
    n, size, per = 64, 8, 0.004  # 8 batches; reading and writing 32 ms a batch each

    def model(samples):
        time.sleep(2 * per * len(samples))  # as long as read + write of the batch
        return samples

    out: list[dict] = []

    def slow_write(sample: dict) -> None:
        time.sleep(per)
        out.append(sample)

    result = ShardResult(input="mem")
    t0 = time.perf_counter()
    run_batches(_samples(n, per), Namespace(process_batch=model), result, "mem", slow_write,
                BatchSpec(size, 1))
    wall = time.perf_counter() - t0
    total = 4 * per * n  # read + model + write, one after the other
    assert [s["__key__"] for s in out] == [f"k{i:04d}" for i in range(n)]
    assert result.samples_read == result.samples_mapped == n
    # the model alone takes half of that; the overlapped pipeline about that plus a batch
    assert wall < 0.7 * total, (wall, total)


def test_prepare_threads_run_in_parallel_and_in_order():
    seen = []
    lock = threading.Lock()
    busy = [0, 0]

    def prepare(sample):
        with lock:
            busy[0] += 1
            busy[1] = max(busy[1], busy[0])
        time.sleep(0.01)
        with lock:
            busy[0] -= 1
        return sample

    def model(samples):
        seen.extend(s["__key__"] for s in samples)
        return samples

    result = ShardResult(input="mem")
    run_batches(_samples(40), Namespace(process_batch=model, prepare_sample=prepare), result,
                "mem", lambda s: None, BatchSpec(8, 4))
    assert seen == [f"k{i:04d}" for i in range(40)]
    assert busy[1] > 1  # several prepare threads ran at once
    assert busy[1] <= 4


def test_look_ahead_is_bounded():
    """The reader stays about two batches ahead of a slow model."""
    read = [0]

    def counting():
        for s in _samples(200):
            read[0] += 1
            yield s

    ahead = []

    def model(samples):
        time.sleep(0.02)
        ahead.append(read[0] - int(samples[-1]["__key__"][1:]) - 1)
        return samples

    run_batches(counting(), Namespace(process_batch=model), ShardResult(input="mem"), "mem",
                lambda s: None, BatchSpec(10, 1))
    assert max(ahead) <= 2 * 10 + 2, ahead


def test_a_write_error_stops_the_pipeline():
    def fail(sample):
        raise ScriptError("disk full")

    with pytest.raises(ScriptError, match="disk full"):
        run_batches(_samples(100), Namespace(process_batch=lambda s: s),
                    ShardResult(input="mem"), "mem", fail, BatchSpec(4, 1))
    assert not [t for t in threading.enumerate()  # the pipeline's own threads are gone
                if t.name.startswith(("htools-prepare", "htools-read", "htools-write"))]


# ------------------------------------------------------------- embeddings out --

EMBED = '''
import io
import numpy as np

def process_batch(samples):
    rng = np.random.default_rng(len(samples))
    out = []
    for s in samples:
        v = np.frombuffer(s["jpg"][:16].ljust(16, b"\\0"), np.uint8).astype(np.float32) / 255
        buf = io.BytesIO()
        np.save(buf, v[:DIM])
        out.append({"__key__": s["__key__"], "emb.npy": buf.getvalue()})
    return out
'''


def _embedded(tmp_path: Path, dims=(8, 8)) -> list[Path]:
    make_shards(tmp_path / "in", shards=len(dims), per_shard=6)
    for i, dim in enumerate(dims):
        script = write(tmp_path / f"embed{dim}.py", f"DIM = {dim}\n" + EMBED)
        ok(run("htmapper", "-p", script, tmp_path / f"in/data-{i}.tar",
               tmp_path / f"emb-{i}.tar", "-q", "--workers", "1"))
    return [tmp_path / f"emb-{i}.tar" for i in range(len(dims))]


def test_npy_field_extracts_as_fixed_size_list(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    _embedded(tmp_path)
    ok(run("htextract", "-f", "__key__,emb.npy", "--format", "parquet", "-o",
           tmp_path / "emb.parquet", str(tmp_path / "emb-{0..1}.tar"), "-q"))
    table = pq.read_table(tmp_path / "emb.parquet")
    typ = table.schema.field("emb.npy").type
    assert pa.types.is_fixed_size_list(typ) and typ.list_size == 8, typ
    assert typ.value_type == pa.float32()
    col = table.column("emb.npy").combine_chunks()
    matrix = col.flatten().to_numpy().reshape(len(col), 8)
    expect = np.stack([np.load(__import__("io").BytesIO(s["emb.npy"]))
                       for s in read_wds(sorted(tmp_path.glob("emb-*.tar")))])
    assert matrix.dtype == np.float32 and np.array_equal(matrix, expect)
    frame = table.to_pandas()
    assert np.array_equal(np.stack(frame["emb.npy"].to_numpy()), expect)
    duckdb = require_module("duckdb")  # reads it as FLOAT[] (parquet has no fixed size)
    rows = duckdb.sql(f"select \"emb.npy\" from '{tmp_path / 'emb.parquet'}'").fetchnumpy()
    assert np.array_equal(np.stack(rows["emb.npy"]), expect)


def test_npy_fields_of_different_lengths_are_one_list_type(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _embedded(tmp_path, dims=(8, 4))
    p = ok(run("htextract", "-f", "__key__,emb.npy", "--format", "parquet", "-o",
               tmp_path / "emb-@2.parquet", str(tmp_path / "emb-{0..1}.tar")))
    assert "emb.npy fixed_size_list" in p.stderr, p.stderr  # the narrower files rewritten
    types = [pq.read_schema(tmp_path / f"emb-{i}.parquet").field("emb.npy").type
             for i in range(2)]
    assert all(pa.types.is_list(t) and t.value_type == pa.float32() for t in types), types


def test_extract_arrays_gives_a_2d_array(tmp_path):
    import numpy as np

    _embedded(tmp_path)
    data = htools.extract(str(tmp_path / "emb-{0..1}.tar"), fields="__key__,emb.npy",
                          arrays=True, workers=1, quiet=True)
    assert data.arrays["emb.npy"].shape == (12, 8)
    assert data.arrays["emb.npy"].dtype == np.float32
    assert list(data["__key__"])[:2] == ["s0/k0000", "s0/k0001"]
    assert np.array_equal(data["emb.npy"].iloc[3], data.arrays["emb.npy"][3])
    with pytest.raises(HtoolsError, match="arrays=True"):
        htools.extract(str(tmp_path / "emb-0.tar"), fields="emb.npy", arrays=True, count=3)


# ------------------------------------------------------------ examples/embed.py --

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_embed_example_matches_a_plain_loop(tmp_path, monkeypatch):
    """examples/embed.py under htmapper (batches of 8, 2 prepare threads) writes the same
    samples as its functions called in this process on the same images; an image Pillow
    cannot read is that sample's error."""
    import importlib.util
    import io

    from PIL import Image

    wds = require_module("webdataset")
    (tmp_path / "in").mkdir()
    with wds.TarWriter(str(tmp_path / "in/img-0.tar")) as w:
        for i in range(20):
            buf = io.BytesIO()
            Image.new("RGB", (20 + i, 12), (10 * i, 200 - 5 * i, 90)).save(buf, "JPEG")
            w.write({"__key__": f"im{i:03d}", "jpg": buf.getvalue() if i != 13 else b"junk",
                     "cls": str(i % 3).encode()})
    monkeypatch.setenv("EMBED_WEIGHTS", str(EXAMPLES / "embed_weights.npz"))
    p = ok(run("htmapper", "-p", EXAMPLES / "embed.py", tmp_path / "in/img-0.tar",
               tmp_path / "emb-0.tar", "--batch-size", "8", "--prepare-threads", "2",
               "--max-errors", "1", "--workers", "1", env=child_env()))
    assert "key 'im013': UnidentifiedImageError" in p.stderr, p.stderr
    got = read_wds([tmp_path / "emb-0.tar"])
    spec = importlib.util.spec_from_file_location("embed_example", EXAMPLES / "embed.py")
    embed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(embed)
    embed.init()
    samples = [s for s in wds.WebDataset(str(tmp_path / "in/img-0.tar"), shardshuffle=False)
               if s["__key__"] != "im013"]
    want = []
    for start in range(0, len(samples), 8):
        batch = [embed.prepare_sample(dict(s)) for s in samples[start:start + 8]]
        want += embed.process_batch(batch)
    assert [s["__key__"] for s in got] == [s["__key__"] for s in want]
    for g, w_ in zip(got, want):
        assert {k: v for k, v in g.items() if k != "__key__"} == \
            {k: v for k, v in w_.items() if k != "__key__"}
