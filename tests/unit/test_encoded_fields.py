"""The field names read back from a sample's encoded tar members (the write tasks count
them for the shard index): plain headers read in place, long and pax names too."""

from __future__ import annotations

import pytest

from htools.exchange.runfile import SampleEncoder
from htools.tar import header


def sample(key: str, fields: dict[str, bytes]) -> dict:
    return {"__key__": key, **fields}


@pytest.mark.parametrize("s", [
    sample("a/b/n01", {"jpg": b"x" * 700, "seg.png": b"", "cls": b"1"}),
    sample("k" * 98, {"j": b"1"}),  # the name just fits the name field
    sample("d" * 120 + "/e", {"txt": b"2"}),  # split into prefix and name
    sample("p" * 300, {"json": b"{}", "cls": b"3"}),  # a pax path
    sample("été/n\udc80", {"légende.txt": b"4", "ü": b"5"}),  # not ASCII, not UTF-8
    sample("no-field", {"": b"6"}),
    sample("big", {"bin": bytes(70_000), "cls": b"7"}),  # a value written directly
])
def test_fields_of_every_kind_of_header(s):
    data = SampleEncoder("x.tar", mtime=0).encode(s)
    want = [k for k in s if k != "__key__"]
    for given in (data, bytearray(data), memoryview(data), memoryview(b"--" + data)[2:]):
        assert sorted(header.encoded_fields(given)) == sorted(want)


def test_the_caches_stay_small(monkeypatch):
    monkeypatch.setattr(header, "_CACHED", 3)
    monkeypatch.setattr(header, "_FIELD_NAMES", {})
    monkeypatch.setattr(header, "_SIZES", {})
    enc = SampleEncoder("x.tar", mtime=0)
    for i in range(10):
        s = sample(f"k{i}", {f"f{i}": bytes(i), "cls": b"1"})
        assert sorted(header.encoded_fields(enc.encode(s))) == sorted([f"f{i}", "cls"])
    assert len(header._FIELD_NAMES) <= 3 and len(header._SIZES) <= 3
