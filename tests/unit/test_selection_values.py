"""A sample's value (htools.selection.values): the JSON member read through
``parse_json`` gives exactly what ``json.loads`` gives, value or error, and a batch's
values (``member_values``) are each sample's ``sample_value``, errors apart."""

from __future__ import annotations

import json

import pytest

from htools.selection.spec import Selection
from htools.selection.values import member_values, parse_json, sample_value

DOCS = [b'{"uid": "x"}', b'{"uid": "x"}  \n', b'{"uid": "x"} x', b'{"a": 1}{', b"{",
        b'{"a": NaN, "b": 1e999}', b'{"a": "\xed\xa0\x80"}', b'{"a": "\xff"}', b"[1]",
        b'  {"a": 1}', b'{"a": 1, "a": 2}', b'{"a" 1}', b"{\x00", b'\xef\xbb\xbf{"a":1}',
        '{"a": 1}'.encode("utf-16-le"), b'{"a": 12345678901234567890123}', b"{}",
        b"{ }\t", b'{"a":1}\x0b', b'{"a": "\\u00e9\\ud800"}']


def _outcome(fn, doc):
    try:
        return "value", repr(fn(doc))
    except ValueError as e:
        return "error", type(e).__name__, str(e)


@pytest.mark.parametrize("doc", DOCS)
def test_parse_json_is_json_loads(doc):
    assert _outcome(parse_json, doc) == _outcome(json.loads, doc)


def test_member_values_are_sample_values():
    sel = Selection("keep", "list.txt", "json", "uid", "uid")
    batch = [{"json": b'{"uid": "a1"}'}, {"json": '{"uid": 7}'}, {"txt": b"no json"},
             {"json": b'{"uid": '}, {"json": b"[1, 2]"}, {"json": b'{"uid": null}'},
             {"json": b'{"uid": {"b": 1, "a": [true]}}'}]
    values, bad = member_values(batch, sel)
    assert [i for i, _e in bad] == [3, 4]
    for i, s in enumerate(batch):
        if i in (3, 4):
            assert values[i] is None
            with pytest.raises(ValueError):
                sample_value(s, sel)
        else:
            assert values[i] == sample_value(s, sel)
    assert values[:2] == [b"a1", b"7"] and values[6] == b'{"a": [true], "b": 1}'
