"""A sample's value (htools.selection.values): the JSON member read through
``parse_json`` gives exactly what ``json.loads`` gives, value or error, and a batch's
values (``member_values``) are each sample's ``sample_value``, errors apart."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from htools.selection.spec import Selection
from htools.selection.values import member_values, parse_json, sample_value, string_form

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
    values, bad, complete = member_values(batch, sel)
    assert not complete
    assert [i for i, _e in bad] == [3, 4]
    for i, s in enumerate(batch):
        if i in (3, 4):
            assert values[i] is None
            with pytest.raises(ValueError):
                sample_value(s, sel)
        else:
            assert values[i] == sample_value(s, sel)
    assert values[:2] == [b"a1", b"7"] and values[6] == b'{"a": [true], "b": 1}'


def _reference(doc, member: str):
    """``sample_value`` as the spec reads it: json.loads, then the member's string form."""
    obj = json.loads(doc)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    m = obj.get(member)
    return m.encode("utf-8") if isinstance(m, str) else string_form(m)


def _result(fn, *args):
    try:
        return "value", fn(*args)
    except (ValueError, RecursionError) as e:
        return "error", type(e).__name__


def _batch_results(docs: list, member: str = "uid") -> list:
    sel = Selection("keep", "list.txt", "json", member, member)
    try:
        values, bad, complete = member_values([{"json": d} for d in docs], sel)
    except RecursionError:
        return ["recursion"]
    errors = dict(bad)
    assert complete == (None not in values)
    return [("error", type(errors[i]).__name__) if i in errors else ("value", v)
            for i, v in enumerate(values)]


def _expected(docs: list, member: str = "uid") -> list:
    out = [_result(_reference, d, member) for d in docs]
    if ("error", "RecursionError") in out:
        return ["recursion"]
    return out


EDGE = [b'{"uid": 18446744073709551615}', b'{"uid": 18446744073709551616}',
        b'{"uid": -9223372036854775809}', b'{"uid": 100000000000000000000000}',
        b'{"uid": [1, 100000000000000000000000]}', b'{"uid": {"a": 1e22, "b": 1e400}}',
        b'{"uid": 1e400}', b'{"uid": 1.7976931348623159e308}', b'{"uid": -0}',
        b'{"uid": -0.0}', b'{"uid": 1E2}', b'{"uid": 0.30000000000000004}',
        b'{"uid": 4.9e-324}', b'{"uid": 9007199254740993}', b'{"uid": true}',
        b'{"uid": "\\ud800"}', b'{"uid": "\\ud83d\\ude00"}', b'{"uid": "\xed\xa0\x80"}',
        b'{"\\u0075id": "a", "uid": "b"}', b'{"uid": "a", "\\u0075id": "b"}',
        b'{"uid": "a", "uid": 2}', b'{"uid": 2, "uid": "a"}', b'{"uid": "\\u0000\\/"}',
        b'{"uid": "a"} x', b'{"uid": "a"}\x00', b'\xef\xbb\xbf{"uid": "a"}',
        '{"uid": "a"}'.encode("utf-16"), '{"uid": "a"}'.encode("utf-16-le"),
        b' \t{"uid": "a"}\r\n', b'{"uid": NaN}', b'{"uid": "a", "n": Infinity}',
        b'{"uid": "\xc3\xa9\xf0\x9f\x98\x80"}', b'{"uid": "\xc0\x80"}', b'[{"uid": "a"}]',
        b'"uid"', b"null", b"", b"{", b'{"uid": "a",}']


@pytest.mark.parametrize("doc", EDGE)
def test_member_values_are_json_loads_at_the_edges(doc):
    """Where orjson and json differ (big integers, floats past the range, surrogates,
    BOMs, UTF-16), the member is json's: value, or error."""
    assert _batch_results([doc]) == _expected([doc])


def test_member_values_deep_documents_are_json_loads():
    """A document deep enough for json's recursion limit (orjson reads 1024 levels)
    fails as json fails; a shallow one of the same length reads as json reads."""
    deep = b'{"uid": "a", "d": ' + b"[" * 1010 + b"]" * 1010 + b"}"
    wide = b'{"uid": "a", "d": [' + b"[], " * 600 + b"[]]}"
    assert _batch_results([deep]) == _expected([deep])
    assert _batch_results([wide]) == _expected([wide]) == [("value", b"a")]


_scalars = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from(["uid", "a", "b"]), inner, max_size=3),
                     max_leaves=8)
_keys = st.sampled_from(['"uid"', '"\\u0075id"', '"ui\\u0064"', '"a"', '"b"', '"\\ud800"'])


@st.composite
def documents(draw) -> bytes:
    """An object (duplicate keys, escaped keys, any values) as JSON text, often mutated."""
    pairs = draw(st.lists(st.tuples(_keys, _json), max_size=4))
    ascii_only = draw(st.booleans())
    body = ", ".join(f"{k}: {json.dumps(v, ensure_ascii=ascii_only)}" for k, v in pairs)
    doc = ("{" + body + "}").encode("utf-8")
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(doc)))
        cut = draw(st.integers(0, 2))
        doc = doc[:at] + draw(st.binary(max_size=2)) + doc[at + cut:]
    return doc


@settings(max_examples=1500, deadline=None)
@given(st.lists(documents(), min_size=1, max_size=4))
def test_member_values_are_json_loads(docs):
    """Whatever the document, every sample's member is what json.loads makes of it."""
    assert _batch_results(docs) == _expected(docs)
