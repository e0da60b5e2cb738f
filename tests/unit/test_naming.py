"""htools.naming, the one home of WebDataset naming, and the one byte-size formatter:
every module that names shards, text fields or index entries agrees with it."""

from __future__ import annotations

import pytest

from htools import naming, parquet, peek
from htools.exchange.sizing import human_size
from htools.extract import render_value
from htools.shardindex import index_url
from htools.shards import OutputSet
from htools.summary import COUNTERS, JobSummary, Written, format_bytes
from htools.tar import compress

CODEC = {".tar": None, ".tgz": "gzip", ".tar.gz": "gzip", ".tar.zst": "zstd", ".tzst": "zstd"}


def test_the_tar_suffixes_are_the_codec_s():
    """The codec keeps its own suffix table (it imports nothing of htools): every tar
    suffix decides the codec the name promises, and every codec suffix of a tar is one."""
    assert set(naming.TAR_SUFFIXES) == set(CODEC)
    for suffix, codec in CODEC.items():
        assert compress.compression_for(f"s3://b/x-0001{suffix}") == codec, suffix


@pytest.mark.parametrize("suffix", naming.TAR_SUFFIXES)
def test_every_tar_suffix_is_stripped_alike(suffix):
    assert index_url(OutputSet.parse(f"/d/thumbs-@8{suffix}")) == "/d/thumbs.index.json"
    assert parquet.shard_name(f"http://h/d/train-0003{suffix}?sig=x") == "train-0003"


def test_text_fields_by_name_and_by_content():
    """extract and peek read the same table: a text field by name is text even with control
    characters; another field is text only when printable."""
    ctrl = "a\x01b".encode()
    assert render_value(ctrl, "length", "meta.txt") == "a\x01b"
    assert render_value(ctrl, "length", "meta.bin") == "<binary: 3 bytes>"
    assert render_value(b"plain\tline\n", "length", "bin") == "plain\tline\n"
    assert peek._text("meta.txt", ctrl) == "a\x01b" and peek._text("meta.bin", ctrl) is None
    assert {"txt", "json", "cls"} <= naming.TEXT_FIELDS and "\t" not in naming.CONTROL_CHARS


def test_index_entry_is_one_shape_for_the_summary_and_the_index():
    result = {"status": "ok", "input": "in.tar", "output": "o-0.tar", "samples_written": 3,
              "bytes_out": 10240, "sha256": "ab" * 32, "fields": {"jpg": 3, "cls": 2}}
    entry = naming.index_entry("o-0.tar", result)
    assert entry == {"output": "o-0.tar", "nsamples": 3, "filesize": 10240,
                     "sha256": "ab" * 32, "fields": {"jpg": 3, "cls": 2}}
    assert list(Written([entry])) == [entry]  # the summary's compact rows give it back
    s = JobSummary(tool="t")
    s.add({**dict.fromkeys(COUNTERS, 0), "errors": [], **result})
    assert list(s.written) == [entry]


@pytest.mark.parametrize("n, text", [(0, "0 B"), (768, "768 B"), (1234, "1.2 kB"),
                                     (3_500_000, "3.5 MB"), (2 * 10**12, "2.0 TB"),
                                     (5 * 10**15, "5,000.0 TB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_human_size_gives_the_exact_count_and_the_formatted_one():
    assert human_size(999) == "999 bytes"
    assert human_size(123_456_789) == "123456789 bytes (123.5 MB)"
