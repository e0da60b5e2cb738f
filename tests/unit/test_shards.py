from __future__ import annotations

import pytest

from htools import shards
from htools.errors import PatternError


def test_at_notation_pads_to_width_as_written():
    urls = shards.expand("gs://b/Volume_@1000.tgz")
    assert len(urls) == 1000
    assert urls[0] == "gs://b/Volume_0000.tgz"
    assert urls[-1] == "gs://b/Volume_0999.tgz"
    assert shards.expand("x-@0010.tar") == [f"x-{i:04d}.tar" for i in range(10)]
    assert shards.expand("x-@3.tar") == ["x-0.tar", "x-1.tar", "x-2.tar"]


def test_at_notation_ignores_credentials_in_host():
    assert shards.expand("http://u:pw@127.0.0.1/a-@2.tar") == [
        "http://u:pw@127.0.0.1/a-0.tar", "http://u:pw@127.0.0.1/a-1.tar"]
    assert shards.expand("http://u:pw@127.0.0.1/plain.tar") == ["http://u:pw@127.0.0.1/plain.tar"]


def test_brace_ranges_and_lists():
    urls = shards.expand("shard-{000000..000147}.tar")
    assert len(urls) == 148 and urls[0] == "shard-000000.tar" and urls[-1] == "shard-000147.tar"
    assert shards.expand("{train,val}-{00..02}.tar") == [
        "train-00.tar", "train-01.tar", "train-02.tar", "val-00.tar", "val-01.tar", "val-02.tar"]
    assert shards.expand("a{1..3}") == ["a1", "a2", "a3"]
    assert shards.expand("x{a..c}") == ["xa", "xb", "xc"]
    assert shards.expand("{a,b{1..2}}.tar") == ["a.tar", "b1.tar", "b2.tar"]


def test_double_colon_joins_patterns():
    assert shards.expand("a-{0..1}.tar::b.tar::c-@2.tar") == [
        "a-0.tar", "a-1.tar", "b.tar", "c-0.tar", "c-1.tar"]


def test_list_file(tmp_path):
    f = tmp_path / "shards.txt"
    f.write_text("# my shards\ns3://b/one.tar\n\ns3://b/two-{0..1}.tar\n")
    assert shards.expand(f"@list:{f}") == ["s3://b/one.tar", "s3://b/two-0.tar", "s3://b/two-1.tar"]


def test_pipe_is_not_expanded():
    assert shards.expand("pipe:curl -s http://x/{a,b}") == ["pipe:curl -s http://x/{a,b}"]


@pytest.mark.parametrize("bad,why", [
    ("x-{5..2}.tar", "runs backwards"),
    ("x-@0.tar", "N >= 1"),
    ("x-{0..2.tar", "unbalanced"),
    ("x-0..2}.tar", "unbalanced"),
    ("x-{ab..cd}.tar", "bad range"),
    ("x-{abc}.tar", "neither a range"),
    ("", "empty"),
    ("a::", "empty element"),
])
def test_malformed_patterns_are_one_line_errors(bad, why):
    with pytest.raises(PatternError) as e:
        shards.expand(bad)
    msg = str(e.value)
    assert why in msg and "\n" not in msg
    if bad:
        assert repr(bad) in msg


def test_missing_list_file(tmp_path):
    with pytest.raises(PatternError, match="cannot read list file"):
        shards.expand(f"@list:{tmp_path}/nope.txt")


def test_numbered_and_output_urls():
    assert shards.is_numbered("s3://b/out-%06d.tar")
    assert shards.numbered("s3://b/out-%06d.tar", 12) == "s3://b/out-000012.tar"
    assert shards.output_urls("s3://b/o-%03d.tar", 2) == ["s3://b/o-000.tar", "s3://b/o-001.tar"]
    assert shards.output_urls("gs://b/o-@3.tar", 3) == ["gs://b/o-0.tar", "gs://b/o-1.tar",
                                                         "gs://b/o-2.tar"]
    with pytest.raises(PatternError, match="names 3 outputs but 4 are needed"):
        shards.output_urls("o-@3.tar", 4)
    assert shards.count_of("o-@7.tar") == 7 and shards.count_of("o-%d.tar") is None


def test_local_paths_become_absolute_for_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shards.expand_all("d/x-@2.tar") == [f"{tmp_path}/d/x-0.tar", f"{tmp_path}/d/x-1.tar"]
    assert shards.output_urls("o-%d.tar", 1) == [f"{tmp_path}/o-0.tar"]
    for url in ("http://h/a.tar", "s3://b/a.tar", "file:///a.tar", "pipe:cat a.tar", "-"):
        assert shards.expand_all(url) == [url]


def test_pattern_errors_never_show_credentials():
    with pytest.raises(PatternError) as e:
        shards.expand("http://user:secret@127.0.0.1/x-{5..2}.tar")
    assert "secret" not in str(e.value) and "http://127.0.0.1/x-{5..2}.tar" in str(e.value)
