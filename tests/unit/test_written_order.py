"""Written.order finds each output's entry by its hash in a sorted array (issue 26: no
dict of a million URLs): equal hashes of different URLs, URLs named twice, and outputs
with no entry."""

from __future__ import annotations

import pytest

from htools import written
from htools.written import CHUNK, Written


@pytest.fixture(autouse=True, params=["dict", "sorted hashes"])
def way(request, monkeypatch):
    """Each test both ways: up to DICT_MAX outputs in a dict, more by their hashes."""
    monkeypatch.setattr(written, "DICT_MAX", 1 << 30 if request.param == "dict" else 0)
    return request.param


class Colliding(str):
    """A URL whose hash every other one shares."""

    def __hash__(self) -> int:
        return 7


def entry(url: str, n: int = 1) -> dict:
    return {"output": url, "nsamples": n, "filesize": 1024, "sha256": "ab" * 32,
            "fields": {"txt": n}}


def test_urls_of_equal_hash_each_find_their_own_entry():
    urls = [Colliding(f"/d/out-{j}.tar") for j in range(5)]
    w = Written(entry(u, j) for j, u in reversed(list(enumerate(urls[1:], 1))))
    at = w.order(urls)
    assert at[0] == -1  # no entry
    assert [w.entry(at[j])["nsamples"] for j in range(1, 5)] == [1, 2, 3, 4]


def test_an_output_named_twice_takes_its_entry_at_both_places():
    urls = [f"/d/out-{j:06d}.tar" for j in range(CHUNK + 10)]
    named = urls + [urls[3], "/d/none.tar", urls[CHUNK + 5]]
    w = Written(entry(u, j) for j, u in enumerate(urls))
    at = w.order(named)
    assert list(at[:len(urls)]) == list(range(len(urls)))
    assert list(at[len(urls):]) == [3, -1, CHUNK + 5]


def test_no_outputs_and_no_entries():
    assert list(Written().order(["/d/a.tar"])) == [-1]
    assert list(Written([entry("/d/a.tar")]).order([])) == []


def test_an_output_appended_twice_takes_its_last_entry():
    w = Written([entry("/d/a.tar", 1), entry("/d/b.tar", 2), entry("/d/a.tar", 3)])
    assert list(w.order(["/d/b.tar", "/d/a.tar", "/d/a.tar"])) == [1, 2, 2]
    assert list(Written([entry("/d/a.tar")]).order([])) == []
