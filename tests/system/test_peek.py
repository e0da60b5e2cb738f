"""htools in a notebook: head() and sample() read a few samples on the client and show
them as a table (thumbnails for images, escaped text, sizes for other bytes); extract()
without out= returns its rows and counts as data with the summary as .summary; a job
summary renders as escaped HTML and prints readably."""

from __future__ import annotations

import base64
import io
import json
import re
from collections import Counter

import pytest
from helpers import require_module

import htools
from htools.errors import NotFound
from htools.summary import JobSummary, ShardResult

SCRIPT = "<script>alert('x')</script>"


def png_bytes(colour=(200, 30, 30), size=(12, 8)) -> bytes:
    image = require_module("PIL.Image")
    buf = io.BytesIO()
    image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def ppm_bytes(w=4, h=3) -> bytes:
    return f"P6\n{w} {h}\n255\n".encode() + bytes(range(w * h * 3))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 shards of 5 samples: png, ppm, txt (with markup), cls, json and binary fields."""
    wds = require_module("webdataset")
    folder = tmp_path_factory.mktemp("peek")
    for s in range(3):
        with wds.TarWriter(str(folder / f"d-{s}.tar")) as w:
            for i in range(5):
                w.write({"__key__": f"s{s}/k{i}", "png": png_bytes((40 * i, 50 * s, 90)),
                         "thumb.ppm": ppm_bytes(), "txt": f"{SCRIPT} {s}-{i}\n".encode(),
                         "cls": str(i % 2).encode(), "meta.json": json.dumps({"i": i}).encode(),
                         "bin": bytes(range(256)) * 3})
    return folder


def keys(samples) -> list[str]:
    return [s["__key__"] for s in samples]


# -------------------------------------------------------------------------- head --

def test_head_reads_only_the_shards_it_needs(data):
    # d-{0..9}.tar names ten shards, of which only d-0 .. d-2 exist (5 samples each):
    # head() opens shards in order and only while samples are missing
    pattern = str(data / "d-{0..9}.tar")
    assert keys(htools.head(pattern, n=2)) == ["s0/k0", "s0/k1"]
    assert keys(htools.head(pattern, n=5)) == [f"s0/k{i}" for i in range(5)]
    assert keys(htools.head(pattern, n=7)) == [f"s0/k{i}" for i in range(5)] + ["s1/k0", "s1/k1"]
    assert len(htools.head(pattern, n=15)) == 15
    with pytest.raises(NotFound):  # a 16th sample does need d-3.tar
        htools.head(pattern, n=16)
    assert len(htools.head(str(data / "d-@3.tar"), n=100)) == 15
    assert htools.head(pattern, n=0) == []


def test_head_samples_are_plain_dicts_of_bytes_and_fields_select(data):
    first = htools.head(str(data / "d-@3.tar"), n=2)
    assert isinstance(first, htools.Samples) and isinstance(first, list)
    assert first[0]["png"] == png_bytes((0, 0, 90)) and first[0]["cls"] == b"0"
    assert first[0]["__url__"].endswith("d-0.tar")
    some = htools.head(str(data / "d-@3.tar"), n=2, fields="cls,txt")
    assert set(some[0]) == {"__key__", "__url__", "cls", "txt"}
    assert isinstance(first[:1], htools.Samples)


def test_head_html_shows_png_thumbnails_escaped_text_and_sizes(data):
    shown = htools.head(str(data / "d-@3.tar"), n=3)._repr_html_()
    assert shown.count("<tr>") == 1 + 3  # the header, then one row per sample
    # the png itself, embedded (small enough), one per sample
    embedded = re.findall(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)'", shown)
    assert len(embedded) == 6  # png and thumb.ppm (converted to PNG) of 3 samples
    assert base64.b64decode(embedded[0]) == png_bytes((0, 0, 90))
    converted = base64.b64decode(embedded[1])
    assert converted[:8] == b"\x89PNG\r\n\x1a\n"
    # text stays text: the markup is escaped, never live
    assert "<script" not in shown
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; 0-0" in shown
    assert "{&quot;i&quot;: 0}" in shown  # JSON as (escaped) text
    assert "768 B" in shown  # other bytes: their size


def test_head_prints_a_plain_text_table(data):
    first = htools.head(str(data / "d-@3.tar"), n=2)
    text = str(first)
    assert text == repr(first)
    lines = text.splitlines()
    # fields in the order of the tar (webdataset writes them sorted)
    assert lines[0].split() == ["__key__", "bin", "cls", "meta.json", "png", "thumb.ppm", "txt"]
    assert lines[2].startswith("s0/k0 ") and lines[3].startswith("s0/k1 ")
    assert "<png " in lines[2] and "<768 B>" in lines[2] and '{"i": 0}' in lines[2]
    assert "<img" not in text and "base64" not in text
    assert str(htools.Samples()) == "(no samples)"


def test_a_ppm_without_pillow_shows_its_size(data, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pil(name, *a, **kw):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("no Pillow here")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    shown = htools.head(str(data / "d-@3.tar"), n=1)._repr_html_()
    assert shown.count("<img") == 1  # the png still shows; the ppm is named with its size
    assert f"<i>ppm</i><br><small>{len(ppm_bytes())} B</small>" in shown


# ------------------------------------------------------------------------ sample --

def test_sample_is_reproducible_by_seed(data):
    pattern = str(data / "d-@3.tar")
    a = htools.sample(pattern, n=4, seed=7)
    assert keys(a) == keys(htools.sample(pattern, n=4, seed=7))
    assert len(a) == 4 and len(set(keys(a))) == 4
    every = {f"s{s}/k{i}" for s in range(3) for i in range(5)}
    assert set(keys(a)) <= every
    draws = {tuple(keys(htools.sample(pattern, n=4, seed=seed))) for seed in range(8)}
    assert len(draws) > 1  # other seeds, other samples
    assert set(keys(htools.sample(pattern, n=100, seed=1, shards_read=3))) == every
    one_shard = htools.sample(pattern, n=3, seed=2, shards_read=1)
    assert len({s["__url__"] for s in one_shard}) == 1
    assert "<img" in one_shard._repr_html_()


# ----------------------------------------------------------------------- extract --

def test_extract_returns_a_dataframe_of_the_rows(data, threads_client):
    pd = require_module("pandas")
    rows = htools.extract(str(data / "d-@3.tar"), fields=["__key__", "cls", "txt", "bin"],
                          client=threads_client, quiet=True)
    assert isinstance(rows, pd.DataFrame)
    assert list(rows.columns) == ["__key__", "cls", "txt", "bin"]
    assert list(rows["__key__"]) == [f"s{s}/k{i}" for s in range(3) for i in range(5)]
    # typed as parquet types them: numbers as int64, text as str, other bytes as bytes
    assert list(rows["cls"]) == [i % 2 for _s in range(3) for i in range(5)]
    assert str(rows["cls"].dtype) == "int64"
    assert rows["txt"][0] == f"{SCRIPT} 0-0\n"
    assert isinstance(rows["bin"][0], bytes) and len(rows["bin"][0]) == 768
    assert isinstance(rows.summary, JobSummary)
    assert rows.summary.ok and rows.summary.samples_written == 15


def test_extract_counts_and_plain_python_results(data, threads_client):
    pd = require_module("pandas")
    counts = htools.extract(str(data / "d-@3.tar"), fields="cls", count=5, client=threads_client,
                            quiet=True)
    assert isinstance(counts, pd.DataFrame)
    assert counts.to_dict("records") == [{"cls": "0", "count": 9}, {"cls": "1", "count": 6}]
    assert counts.summary.samples_read == 15
    plain = htools.extract(str(data / "d-@3.tar"), fields="cls", count=5, client=threads_client,
                           quiet=True, frame=False)
    assert isinstance(plain, Counter) and plain == Counter({"0": 9, "1": 6})
    assert plain.summary.ok
    pairs = htools.extract(str(data / "d-@3.tar"), fields="cls,meta.json", count=1,
                           client=threads_client, quiet=True, frame=False)
    assert list(pairs.values()) == [3] and list(pairs)[0][0] in ("0", "1")
    rows = htools.extract(str(data / "d-@3.tar"), fields="__key__,cls", client=threads_client,
                          quiet=True, frame=False)
    assert type(rows).__bases__ == (list,)
    assert rows[:2] == [{"__key__": "s0/k0", "cls": 0}, {"__key__": "s0/k1", "cls": 1}]
    assert rows.summary.samples_written == 15


def test_extract_with_out_writes_rows_and_returns_the_summary(data, threads_client):
    out = io.StringIO()
    summary = htools.extract(str(data / "d-@3.tar"), fields="__key__,cls", count=0, out=out,
                             client=threads_client, quiet=True)
    assert isinstance(summary, JobSummary) and summary.samples_written == 15
    assert out.getvalue().splitlines()[:2] == ["s0/k0\t0", "s0/k1\t1"]
    plan = htools.extract(str(data / "d-@3.tar"), client=threads_client, quiet=True, dry_run=True)
    assert isinstance(plan, JobSummary) and len(plan.plan) == 3


# ----------------------------------------------------------------------- summary --

def failed_summary() -> JobSummary:
    summary = JobSummary("htmapper", shards_total=3)
    ok = ShardResult(input="in-0.tar", output="out-0.tar", samples_read=10, samples_mapped=9,
                     samples_written=9, samples_failed=1, sample_errors=1,
                     bytes_in=2_000_000, bytes_out=1_000_000, max_errors=5)
    ok.errors.append({"url": "in-0.tar", "key": "k<7>", "error": "ValueError: <b>bad</b>",
                      "traceback": ""})
    summary.add(ok.as_dict())
    bad = ShardResult(input="s3://alice:s3cret@bucket/in-1.tar", output="out-1.tar",
                      samples_read=4)
    bad.fail(f"RuntimeError: {SCRIPT} in s3://alice:s3cret@bucket/in-1.tar")
    summary.add(bad.as_dict())
    summary.add(ShardResult(input="in-2.tar", output="out-2.tar", status="skipped").as_dict())
    summary.seconds = 2.0
    return summary


def test_summary_html_escapes_errors_and_shows_the_counts():
    summary = failed_summary()
    shown = summary._repr_html_()
    assert "<script" not in shown and "<b>bad</b>" not in shown
    assert "RuntimeError: &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in shown
    assert "ValueError: &lt;b&gt;bad&lt;/b&gt;" in shown and "key k&lt;7&gt;" in shown
    assert "s3cret" not in shown
    assert "1 done, 1 skipped, 1 failed of 3" in shown
    assert "14 read, 9 written, 0 dropped, 5 failed" in shown
    assert "2.0 MB in, 1.0 MB out" in shown and "7 samples/s, 1.0 MB/s in" in shown
    assert "FAILED" in shown


def test_summary_str_is_the_line_and_the_failures():
    summary = failed_summary()
    text = str(summary)
    lines = text.splitlines()
    assert lines[0] == summary.line()
    assert lines[1] == f"  failed shard s3://bucket/in-1.tar: RuntimeError: {SCRIPT} in " \
                       "s3://bucket/in-1.tar"
    assert lines[2] == "  failed sample k<7> of in-0.tar: ValueError: <b>bad</b>"
    assert summary.samples_written == summary.as_dict()["samples_written"] == 9
    assert str(JobSummary("htextract", shards_total=1, shards_done=1)).count("\n") == 0
