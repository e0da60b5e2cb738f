"""The shard index read by wids, webdataset's own random-access reader: every sample it
finds by its global index is the sample webdataset's sequential reader sees at that
place, byte for byte (the index's shard order, URLs relative to it, and nsamples are
what wids needs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_shards, read_wds

import htools
from htools.extract_index import index_shards

wids = pytest.importorskip("wids", reason="wids is a test dependency (scripts/setup)")


def by_index(index: Path, cache: Path) -> list[dict]:
    """Every sample of the index, in wids's global order, fields as bytes."""
    ds = wids.ShardListDataset(str(index), transformations=[], cache_dir=str(cache))
    out = []
    for i in range(len(ds)):
        sample = ds[i]
        fields = {k.lstrip("."): v.read() if hasattr(v, "read") else v
                  for k, v in sample.items() if not k.startswith("__")}
        out.append({"__key__": sample["__key__"], **fields})
    return out


def test_wids_reads_the_index_of_each_tool(tmp_path, processes_client):
    make_shards(tmp_path / "in", shards=4, per_shard=9)
    src = str(tmp_path / "in" / "data-@4.tar")
    jobs = {
        "mapped": lambda out: htools.map_shards(src, out, lambda s: s, client=processes_client,
                                                quiet=True),
        "sorted": lambda out: htools.sort(src, out, key="cls", client=processes_client, quiet=True),
        "shuffled": lambda out: htools.shuffle(src, out, seed=3, client=processes_client, quiet=True),
    }
    for name, job in jobs.items():
        s = job(str(tmp_path / name / "part-@4.tar"))
        assert s.ok, s.failures
        shards = sorted((tmp_path / name).glob("part-*.tar"))
        got = by_index(tmp_path / name / "part.index.json", tmp_path / f"cache-{name}")
        assert got == read_wds(shards), name
        assert len(got) == 36


def test_wids_reads_an_index_built_for_existing_shards(tmp_path):
    """htextract --index over shards written by webdataset, the index in another folder:
    URLs are relative to the index's own place."""
    make_shards(tmp_path / "data" / "train", shards=3, per_shard=5)
    s = index_shards(str(tmp_path / "data" / "train" / "data-@3.tar"),
                     str(tmp_path / "data" / "train.index.json"), workers=1, quiet=True)
    assert s.ok, s.failures
    shards = sorted((tmp_path / "data" / "train").glob("data-*.tar"))
    assert by_index(tmp_path / "data" / "train.index.json", tmp_path / "cache") \
        == read_wds(shards)
