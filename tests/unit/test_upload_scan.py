"""htupload's scan of a local folder, without Dask: the samples (keys, files, sizes, in
key order) are those the former ``os.walk`` scan found, the shards written from them are
pinned byte for byte (balanced ``@N``, ``--maxcount``, ``--maxsize``), and a symlink loop, a
folder that cannot be listed or a file that vanishes is refused in one clear line."""

from __future__ import annotations

import hashlib
import os

import pytest

from htools import tar, upload_files
from htools.errors import HtoolsError
from htools.options import RunOptions
from htools.shards import OutputSet
from htools.summary import ShardResult
from htools.upload import _lineage, _lineage_paths, plan, write_here
from htools.upload_files import FileSample, as_tuples, reported_sizes, scan_directory

NAMES = [  # (path, size): names that sort around "/", ".", "-", nested, long, non-ASCII
    ("a.txt", 10), ("a.cls", 1), ("a-1.txt", 700), ("b.txt", 512), ("empty.txt", 0),
    ("a/x.txt", 3), ("a/x.json", 1500), ("a/y.seg.png", 9000), ("a.b/c.txt", 5),
    ("a-1/z.txt", 6), ("d/e/f/g.txt", 7), ("d/e/f/g.cls", 2), ("d/e/h.txt", 1025),
    (".hid.txt", 4), ("d/.hidden.txt", 4), ("README", 3), ("n._x", 3), ("n.txt", 3),
    ("l" * 90 + "/" + "m" * 30 + ".txt", 100), ("k" * 120 + ".bin", 2000),
    ("\u00e9t\u00e9/\u00fc.txt", 50), ("z/0.txt", 1), ("z0.txt", 1), ("z.0/a.txt", 1),
]


def make_tree(root) -> None:
    for name, size in NAMES:
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(hashlib.sha256(name.encode()).digest() * (size // 32 + 1))
            f.truncate(size)
    os.symlink("d", os.path.join(root, "link"))  # a linked folder is followed
    os.symlink("b.txt", os.path.join(root, "lf.txt"))  # a linked file is read


def walk_scan(root: str) -> list[FileSample]:
    """The scan as it was: os.walk, then files grouped by key and sized one by one."""
    groups: dict[str, dict[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in filenames:
            full = os.path.abspath(os.path.join(dirpath, name))
            rel = os.path.relpath(full, root)
            key, field = tar.split_key(rel)
            if field and not field.startswith("_") and not name.startswith("."):
                groups.setdefault(key, {})[field] = full
    out = []
    for key in sorted(groups):
        files = tuple(sorted(groups[key].items()))
        sizes = tuple(os.path.getsize(p) for _f, p in files)
        out.append(FileSample(key, files, sum(tar.member_size(key, f, n)
                                              for (f, _p), n in zip(files, sizes)), sizes))
    return out


def test_scan_finds_what_os_walk_found(tmp_path):
    make_tree(tmp_path / "src")
    for root in (str(tmp_path / "src"), str(tmp_path / "src") + "/", "src", "./src/../src"):
        os.chdir(tmp_path)
        assert scan_directory(root) == walk_scan(root), root


# sha256 of each shard written for make_tree() (and a list file of some of its files) by
# the scan, the list and the writer before issue 26
PINNED = {
    "@3": ["b9e5c2cfd433c345", "14dc52c561e59377", "865de1d5738cc67b"],
    "maxcount": ["ad607afbcdc231c9", "0e84cb0b6f3c0b99", "af6eafb6ab57b1f8", "e3937944d5be4c75",
                 "e65d49f703b65422"],
    "maxsize": ["b9e5c2cfd433c345", "c49933575a598e2d", "5e15182f09a6cf56"],
    "shuffle": ["76dbde09b75db2cb", "91194fa9ff8e062d"],
    "list": ["29086fa74aba379d", "5878c371838190d2"],
}
CASES = {  # (output pattern, plan's options)
    "@3": ("o-@3.tar", {}), "maxcount": ("o-%04d.tar", {"maxcount": 4}),
    "maxsize": ("o-%04d.tar", {"maxsize": 20480}),
    "shuffle": ("o-@2.tar", {"shuffle": True, "seed": 3}), "list": ("o-@2.tar", {}),
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_shards_are_pinned(tmp_path, case):
    make_tree(tmp_path / "src")
    source = str(tmp_path / "src")
    if case == "list":
        source += "/files.lst"
        with open(source, "w") as f:
            f.write("a/x.txt\n./a/x.json\nb.txt\n# note\n\nd/e/h.txt\nz0.txt\n")
    pattern, kw = CASES[case]
    opts = RunOptions.of({"quiet": True})
    tasks = plan(source, str(tmp_path / "out" / pattern), opts, **kw)
    assert write_here(tasks, opts).ok
    digests = [hashlib.sha256(open(t.output, "rb").read()).hexdigest()[:16] for t in tasks]
    assert digests == PINNED[case]


def test_a_symlink_loop_is_refused(tmp_path):
    make_tree(tmp_path / "src")
    os.symlink("..", tmp_path / "src" / "d" / "e" / "up")
    with pytest.raises(HtoolsError, match=r"src/d/e/up: a symlink loop \(it leads back to .*src/d\)"):
        scan_directory(str(tmp_path / "src"))


def test_a_vanished_file_is_named(tmp_path):
    make_tree(tmp_path / "src")
    os.symlink("gone.txt", tmp_path / "src" / "a" / "w.txt")  # listed, then not there
    with pytest.raises(HtoolsError, match=r"a/w\.txt: No such file or directory"):
        scan_directory(str(tmp_path / "src"))


def test_a_folder_that_cannot_be_listed_is_named(tmp_path, monkeypatch):
    make_tree(tmp_path / "src")
    open_ = os.open

    def refused(path, flags, *a, **kw):  # what a folder without read permission does
        if str(path).endswith("d/e"):  # (root reads any)
            raise PermissionError(13, "Permission denied", str(path))
        return open_(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(HtoolsError, match=r"cannot list .*src/d/e: Permission denied"):
        scan_directory(str(tmp_path / "src"))


@pytest.mark.parametrize("read_max", [upload_files.READ_MAX, 1000, 4096])
def test_a_file_is_read_whole_and_a_changed_size_is_refused(tmp_path, monkeypatch, read_max):
    monkeypatch.setattr(upload_files, "READ_MAX", read_max)
    path = tmp_path / "f.bin"
    for n in (0, 1, 300, 4096, 70000):
        data = os.urandom(n)
        path.write_bytes(data)
        assert upload_files._read_local(str(path), n) == data
        for scanned in (n + 1, max(n - 1, 0)) if n else (1,):
            now = "more" if n > scanned else n
            with pytest.raises(HtoolsError, match=rf"f\.bin: the file changed while htupload "
                               rf"ran \({scanned} bytes when listed, {now} now\)"):
                upload_files._read_local(str(path), scanned)


def test_a_task_reads_each_file_once_and_refuses_one_that_changed(tmp_path):
    """The task's inline read (one read of a file's size and a byte more) and its
    fallback (the rest of a file the scan did not size) read the bytes scanned, and a
    file that grew, shrank or vanished since the scan fails the shard."""
    big = os.urandom((1 << 20) + 5)
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "a.big").write_bytes(big)
    (tmp_path / "e.txt").write_bytes(b"")
    samples = as_tuples(scan_directory(str(tmp_path)))
    result = ShardResult("in", "out")
    got = list(upload_files._file_samples(samples, result))
    assert got == [{"__key__": "a", "big": big, "bin": b"abc"}, {"__key__": "e", "txt": b""}]
    assert result.bytes_in == len(big) + 3
    unsized = as_tuples(scan_directory(str(tmp_path), sized=False))  # read to their end
    assert list(upload_files._file_samples(unsized, ShardResult("in", "out"))) == got
    for change, now in ((b"abcd", "more"), (b"ab", "2"), (None, None)):
        if change is None:
            os.remove(tmp_path / "a.bin")
            says = r"a\.bin: No such file or directory"
        else:
            (tmp_path / "a.bin").write_bytes(change)
            says = rf"a\.bin: the file changed while htupload ran \(3 bytes when listed, {now} now\)"
        with pytest.raises(HtoolsError, match=says):
            list(upload_files._file_samples(samples, ShardResult("in", "out")))


@pytest.mark.parametrize("sized", [True, False])
def test_a_file_that_cannot_be_read_fails_the_shard_naming_it(tmp_path, sized):
    """A read that fails (here: a scanned file that is a folder now, EISDIR) fails the
    shard with the file and the reason, not as an htools bug."""
    (tmp_path / "a.bin").write_bytes(b"abc")
    samples = as_tuples(scan_directory(str(tmp_path), sized=sized))
    os.remove(tmp_path / "a.bin")
    os.mkdir(tmp_path / "a.bin")
    with pytest.raises(HtoolsError, match=r"a\.bin: Is a directory$"):
        list(upload_files._file_samples(samples, ShardResult("in", "out")))


def test_an_unsized_read_that_comes_back_short_reads_on_to_the_end(tmp_path, monkeypatch):
    """A network file system may return fewer bytes than asked before a file's end: a file
    the scan did not size is read to its end, never cut at the first short read."""
    data = os.urandom(5000)
    (tmp_path / "a.bin").write_bytes(data)
    real = os.read
    monkeypatch.setattr(upload_files.os, "read", lambda fd, n: real(fd, min(n, 700)))
    unsized = as_tuples(scan_directory(str(tmp_path), sized=False))
    assert list(upload_files._file_samples(unsized, ShardResult("in", "out"))) == \
        [{"__key__": "a", "bin": data}]


@pytest.mark.parametrize("case", ["@3", "maxcount", "shuffle"])
def test_a_scan_without_sizes_writes_the_same_shards_and_lineage(tmp_path, case):
    """A plan by count scans without a stat a file: the shards are the pinned ones, and the
    sizes the tasks report make the lineage the sized scan makes (which --resume checks)."""
    make_tree(tmp_path / "src")
    source = str(tmp_path / "src")
    sized = scan_directory(source)
    unsized = scan_directory(source, sized=False)
    assert [(s.key, s.files) for s in unsized] == [(s.key, s.files) for s in sized]
    assert {(s.size, s.sizes) for s in unsized} == {(0, ())}
    pattern, kw = CASES[case]
    opts = RunOptions.of({"quiet": True})
    tasks = plan(source, str(tmp_path / "out" / pattern), opts, scanned=unsized, **kw)
    by_key: dict = {}
    assert write_here(tasks, opts, on_result=lambda i, r: by_key.update(
        zip([s[0] for s in tasks[i].kwargs["samples"]], r["extra"]["sizes"]))).ok
    digests = [hashlib.sha256(open(t.output, "rb").read()).hexdigest()[:16] for t in tasks]
    assert digests == PINNED[case]
    sizes = reported_sizes(unsized, by_key)
    assert sizes == [s.size for s in sized]
    kw = {"maxcount": None, "maxsize": None, "shuffle": False, "seed": 0, "mtime": 0, **kw}
    outset = OutputSet.parse(pattern)
    assert _lineage(outset, kw, _lineage_paths(unsized), sizes=sizes) == _lineage(
        outset, kw, samples=sized)
    assert reported_sizes(unsized, {}) == sizes  # no reports: sized by the client
    os.remove(tmp_path / "src" / "b.txt")
    assert reported_sizes(unsized, {}) is None  # a file gone: no lineage


def test_a_scan_without_sizes_still_refuses_a_broken_link(tmp_path):
    make_tree(tmp_path / "src")
    os.symlink("gone.txt", tmp_path / "src" / "a" / "w.txt")
    with pytest.raises(HtoolsError, match=r"a/w\.txt: No such file or directory"):
        scan_directory(str(tmp_path / "src"), sized=False)


def test_the_collector_pauses_for_the_scan_and_comes_back():
    """collector_paused: no collection while the scan's objects are built, those objects
    frozen (left out of later passes) while the job runs, everything as before after."""
    import gc

    assert gc.isenabled() and gc.get_freeze_count() == 0
    with upload_files.collector_paused() as built:
        assert not gc.isenabled()
        built()
        assert gc.isenabled() and gc.get_freeze_count() > 0
    assert gc.isenabled() and gc.get_freeze_count() == 0
    with pytest.raises(ValueError), upload_files.collector_paused():
        raise ValueError  # a failed scan
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        with upload_files.collector_paused() as built:
            built()
            assert not gc.isenabled()  # the caller's choice stays
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.enable()
