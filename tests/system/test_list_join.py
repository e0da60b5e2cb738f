"""htshuffle and htsort --keep/--drop with a list larger than a worker fetches: the list
joins the samples through the exchange (issue 23, item 4).  The same job with the
threshold forced both ways (HTOOLS_LIST_FETCH_BYTES) writes the same bytes with the same
extra.selection counts; a worker killed in a decide task changes nothing; the dry run
says which mode was chosen."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path

import cloudpickle
import pytest
import webdataset as wds
from distributed import Client, LocalCluster
from test_dedup_semijoin import KillOnce

import htools
from htools.errors import HtoolsError
from htools.exchange import listjoin

SCRIPT = '''
def process_sample(sample):
    sample["txt"] = sample["__key__"].upper().encode()
    return sample
'''


def make_shards(folder: Path, shards: int = 6, per_shard: int = 30) -> list[str]:
    """Shards of samples with a JSON uid (a few without one, a few with equal ones) and
    an int ``grp`` (many equal sort keys); the uids, in input order."""
    rng = random.Random(5)
    folder.mkdir(parents=True, exist_ok=True)
    uids = []
    for s in range(shards):
        with wds.TarWriter(str(folder / f"d-{s:02d}.tar")) as w:
            for i in range(per_shard):
                uid = f"{rng.getrandbits(64):016x}" if rng.random() > 0.1 else uids[-1] \
                    if uids else "first"
                doc = {"uid": uid} if rng.random() > 0.05 else {"other": 1}
                w.write({"__key__": f"s{s:02d}-{i:03d}", "json": json.dumps(doc).encode(),
                         "grp": str(rng.randrange(4)).encode(),
                         "img": rng.randbytes(rng.randrange(1, 300))})
                uids.append(uid)
    return uids


def digests(folder: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("o-*.tar"))]


def run_job(tool: str, src: str, out: Path, lst: Path, mode: str, client, join: bool,
            monkeypatch, **kw):
    with monkeypatch.context() as m:
        m.setenv(listjoin.FETCH_ENV, "0" if join else str(1 << 40))
        fn = htools.shuffle if tool == "shuffle" else htools.sort
        if tool == "sort":
            kw = {"key": "grp", "key_type": "int", **kw}
        target = str(out / "o-%03d.tar") if "maxcount" in kw else str(out / "o-@3.tar")
        s = fn(src, target, select_by="json:uid", client=client, quiet=True,
               **{mode: str(lst)}, **kw)
    assert s.ok, s.failures
    assert s.extra["list_mode"] == ("join" if join else "fetch")
    return s


def totals(s) -> dict:
    names = ("samples_read", "samples_mapped", "samples_written", "samples_dropped",
             "samples_failed")
    return {n: getattr(s, n) for n in names}


CASES = [("shuffle", {}), ("shuffle", {"maxcount": 25}), ("shuffle", {"script": "S"}),
         ("sort", {"maxcount": 20}), ("sort", {}), ("sort", {"reverse": True}),
         ("sort", {"fan_in": 2, "memory": 32 << 10, "maxcount": 30})]


@pytest.mark.parametrize("mode", ["keep", "drop"])
@pytest.mark.parametrize("tool,kw", CASES, ids=[f"{t}-{'-'.join(k) or 'plain'}"
                                                for t, k in CASES])
def test_join_writes_the_bytes_of_the_small_path(tmp_path, processes_client, monkeypatch,
                                                 mode, tool, kw):
    uids = make_shards(tmp_path / "in")
    listed = sorted(set(random.Random(1).sample(uids, 70))) + ["not-in-any-sample"]
    (tmp_path / "list.txt").write_text("\n".join(listed) + "\n")
    if kw.get("script"):
        (tmp_path / "s.py").write_text(SCRIPT)
        kw = {**kw, "script": str(tmp_path / "s.py")}
    src = str(tmp_path / "in" / "d-{00..05}.tar")
    args = (tool, src)
    small = run_job(*args, tmp_path / "small", tmp_path / "list.txt", mode, processes_client,
                    False, monkeypatch, **kw)
    joined = run_job(*args, tmp_path / "join", tmp_path / "list.txt", mode, processes_client,
                     True, monkeypatch, scratch=str(tmp_path / "scratch"), **kw)
    assert digests(tmp_path / "join") == digests(tmp_path / "small")
    assert len(digests(tmp_path / "join")) >= 2
    assert joined.extra["selection"] == small.extra["selection"]
    assert joined.extra["selection"]["listed"] == len(listed)
    assert 0 < joined.extra["selection"]["matched"] < len(listed)
    assert joined.extra["selection"]["unselected"] > 0
    assert totals(joined) == totals(small)
    assert joined.extra["decide_tasks"] >= 1
    assert not any((tmp_path / "scratch").rglob("*.bin"))


def test_keep_and_drop_split_the_samples(tmp_path, processes_client, monkeypatch):
    uids = make_shards(tmp_path / "in", shards=2)
    (tmp_path / "list.txt").write_text("\n".join(uids[::3]) + "\n")
    src = str(tmp_path / "in" / "d-{00..01}.tar")
    kept = run_job("shuffle", src, tmp_path / "k", tmp_path / "list.txt", "keep",
                   processes_client, True, monkeypatch)
    dropped = run_job("shuffle", src, tmp_path / "d", tmp_path / "list.txt", "drop",
                      processes_client, True, monkeypatch)
    assert kept.samples_written + dropped.samples_written == 60
    assert kept.samples_written == sum(
        1 for x in _read(tmp_path / "k") if json.loads(x["json"]).get("uid") in set(uids[::3]))


def _read(folder: Path) -> list[dict]:
    return [x for p in sorted(folder.glob("o-*.tar")) for x in wds.WebDataset(
        str(p), shardshuffle=False)]


def test_dry_run_says_which_mode(tmp_path, monkeypatch):
    make_shards(tmp_path / "in", shards=2)
    (tmp_path / "list.txt").write_text("a\nb\n")
    src = str(tmp_path / "in" / "d-{00..01}.tar")
    sized = []  # the list file's size stands for the table's: asked once a dry run
    real = listjoin.storage.size
    monkeypatch.setattr(listjoin.storage, "size", lambda url, *a: (
        sized.append(url) if url.endswith("list.txt") else None) or real(url, *a))
    for env, word in (("0", "joined through the exchange"), ("1000000", "fetches it once")):
        monkeypatch.setenv(listjoin.FETCH_ENV, env)
        sized.clear()
        s = htools.shuffle(src, str(tmp_path / "o" / "o-@2.tar"), keep=str(tmp_path / "list.txt"),
                           dry_run=True, quiet=True)
        line = next(x for x in s.plan if x.startswith("selection: --keep by __key__, a digest"))
        assert word in line, s.plan
        assert ("decide_tasks" in s.extra) == (env == "0")
        assert len(sized) == 1, sized


def test_a_large_list_with_dedup_is_refused_in_one_line(tmp_path, monkeypatch):
    make_shards(tmp_path / "in", shards=1)
    (tmp_path / "list.txt").write_text("a\n")
    monkeypatch.setenv(listjoin.FETCH_ENV, "0")
    with pytest.raises(HtoolsError, match="does not combine with --dedup") as e:
        htools.sort(str(tmp_path / "in" / "d-00.tar"), str(tmp_path / "o" / "o-@2.tar"),
                    key="grp", dedup="img", keep=str(tmp_path / "list.txt"), quiet=True,
                    workers=1)
    assert "\n" not in str(e.value)


def test_worker_killed_in_a_decide_task_gives_the_same_output(tmp_path, monkeypatch):
    uids = make_shards(tmp_path / "in")
    (tmp_path / "list.txt").write_text("\n".join(uids[::2]) + "\n")
    src = str(tmp_path / "in" / "d-{00..05}.tar")
    mark = tmp_path / "kill-mark"
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cloudpickle.register_pickle_by_value(sys.modules[KillOnce.__module__])
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=40) as cluster, \
            Client(cluster) as client:
        clean = run_job("sort", src, tmp_path / "clean", tmp_path / "list.txt", "keep", client,
                        True, monkeypatch, maxcount=40)
        client.register_plugin(KillOnce(r"htsort-join-[0-9a-f]{8}-", str(mark)))
        killed = run_job("sort", src, tmp_path / "killed", tmp_path / "list.txt", "keep",
                         client, True, monkeypatch, maxcount=40,
                         scratch=str(tmp_path / "scratch"))
    assert mark.exists()
    assert digests(tmp_path / "killed") == digests(tmp_path / "clean")
    assert totals(killed) == totals(clean)
    assert killed.extra["selection"] == clean.extra["selection"]
    assert not any((tmp_path / "scratch").rglob("*.bin"))
    assert os.path.exists(tmp_path / "killed")


def test_decide_tasks_stream_the_digests_in_chunks(tmp_path, threads_client, monkeypatch):
    """Decide tasks looking up a few digest records at a time (in-process workers): the
    same bytes and counts as the small path."""
    monkeypatch.setattr(listjoin, "CHUNK", 7)
    uids = make_shards(tmp_path / "in", shards=3)
    (tmp_path / "list.txt").write_text("\n".join(uids[1::3]) + "\n")
    src = str(tmp_path / "in" / "d-{00..02}.tar")
    for mode in ("keep", "drop"):
        small = run_job("sort", src, tmp_path / f"s-{mode}", tmp_path / "list.txt", mode,
                        threads_client, False, monkeypatch)
        joined = run_job("sort", src, tmp_path / f"j-{mode}", tmp_path / "list.txt", mode,
                         threads_client, True, monkeypatch)
        assert digests(tmp_path / f"j-{mode}") == digests(tmp_path / f"s-{mode}")
        assert joined.extra["selection"] == small.extra["selection"]
        assert totals(joined) == totals(small)
