"""htools.tar / htools.tar.compress: read what GNU tar, tarfile and webdataset write;
write what they read back byte for byte; named errors with URL, member and offset."""

from __future__ import annotations

import gzip
import io
import os
import random
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from helpers import require_module, require_tool

from htools import tar
from htools.errors import TarFormatError
from htools.tar import compress
from htools.tar import header as tarformat
from htools.tar import read as tarread

LONG_DIR = "d" * 60 + "/" + "e" * 60  # > 100 bytes with a file name: prefix or longname
UTF8_NAME = "données/ünïcødé-名前.txt"


# --------------------------------------------------------------------------- helpers


class Trickle(io.RawIOBase):
    """A non-seekable stream that returns at most ``step`` bytes per read."""

    def __init__(self, data: bytes, step: int = 777):
        super().__init__()
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


def members_of(data: bytes, url: str = "t.tar") -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, payload, _ in tar.iter_members(tar.open_stream_reader(io.BytesIO(data), url),
                                               url):
        assert name not in out
        out[name] = payload
    return out


def tarfile_regular(data: bytes) -> dict[str, bytes]:
    """Independent reader: Python's tarfile, regular files only."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf:
            if m.isreg():
                member = tf.extractfile(m)
                assert member is not None
                out[m.name.removeprefix("./")] = member.read()
    return out


def make_tree(root: Path) -> dict[str, bytes]:
    """A tree with nested dirs, long and non-ASCII names, empty files, a symlink; returns
    the regular files (relative name -> bytes)."""
    rng = random.Random(7)
    files = {
        "a/n01.jpg": rng.randbytes(3000),
        "a/n01.cls": b"3",
        "a/b/c/n02.seg.png": rng.randbytes(512),
        "a/empty.txt": b"",
        f"{LONG_DIR}/{'f' * 90}.bin": rng.randbytes(100),  # 212 bytes: ustar prefix ok
        UTF8_NAME: "çà et là".encode(),
        "top.json": b'{"x": 1}',
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "emptydir").mkdir()
    (root / "a" / "link.jpg").symlink_to("n01.jpg")
    (root / "a" / ("l" * 120 + ".lnk")).symlink_to("x" * 150)  # long link target: 'K'
    return files


def sample_set(n: int = 20, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"__key__": f"shard/s{i:04d}", "jpg": rng.randbytes(rng.randrange(0, 5000)),
         "cls": str(i).encode(), "seg.png": rng.randbytes(rng.randrange(0, 700))}
        for i in range(n)
    ]


def written(samples: list[dict], url: str = "out.tar", **kw) -> bytes:
    buf = io.BytesIO()
    tar.write_samples(buf, samples, url=url, **kw)
    return buf.getvalue()


def tar_of(names, data: bytes = b"z", fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    """A tar (Python's tarfile) of members named ``names``, each holding ``data``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def without_meta(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if k != "__url__"}


# --------------------------------------------------------------------------- split_key


@pytest.mark.parametrize("name,expected", [
    ("a/b/n01.seg.png", ("a/b/n01", "seg.png")),
    ("a.b/c.d.e", ("a.b/c", "d.e")),
    ("n01.jpg", ("n01", "jpg")),
    ("noext", ("noext", "")),
    ("dir.x/noext", ("dir.x/noext", "")),
    ("a/b.", ("a/b", "")),
    ("", ("", "")),
])
def test_split_key(name, expected):
    assert tar.split_key(name) == expected


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "pax", "posix", "ustar"])
@pytest.mark.parametrize("dot", [True, False], ids=["C-dot", "names"])
def test_read_gnu_tar(tmp_path, fmt, dot, gnu_tar):
    files = make_tree(tmp_path / "src")
    archive = tmp_path / "x.tar"
    what = ["."] if dot else sorted(os.listdir(tmp_path / "src"))
    proc = subprocess.run([gnu_tar, f"--format={fmt}", "-cf", str(archive),
                           "-C", str(tmp_path / "src"), *what], capture_output=True)
    if fmt == "ustar":  # ustar cannot store the long symlink target: tar warns, skips it
        assert proc.returncode in (0, 2), proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
    data = archive.read_bytes()
    got = members_of(data)
    assert got == files
    assert got == tarfile_regular(data)


def test_read_gnu_tar_v7(tmp_path, gnu_tar):
    files = {"a/n01.jpg": os.urandom(2000), "a/n01.txt": b"hi", "b/e.x": b""}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    subprocess.run([gnu_tar, "--format=v7", "-cf", str(tmp_path / "x.tar"), "-C",
                    str(tmp_path), "a", "b"], check=True)
    assert members_of((tmp_path / "x.tar").read_bytes()) == files  # v7 dirs end in "/"


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_read_python_tarfile(fmt):
    rng = random.Random(3)
    names = ["k/s1.jpg", "k/s1.txt", "k/s2.jpg", "x" * 150 + "/s3.bin",
             "y/" + "z" * 98 + ".b", "w" * 98 + ".c"]  # 100-byte name fields: no NUL
    if fmt != tarfile.USTAR_FORMAT:
        names += [UTF8_NAME, "q" * 300 + ".long"]
    files = {n: rng.randbytes(rng.randrange(0, 3000)) for n in names}
    buf = io.BytesIO()
    pax = {"comment": "global header"} if fmt == tarfile.PAX_FORMAT else None
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax) as tf:
        d = tarfile.TarInfo("k")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("k/s9.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "s1.jpg" if fmt == tarfile.USTAR_FORMAT else "t" * 200
        tf.addfile(link)
        hard = tarfile.TarInfo("k/s8.jpg")
        hard.type = tarfile.LNKTYPE
        hard.linkname = "k/s1.jpg"
        tf.addfile(hard)
    assert members_of(buf.getvalue()) == files


def test_read_webdataset_writer(tmp_path):
    wds = require_module("webdataset")
    samples = sample_set(15)
    path = tmp_path / "w.tar"
    with wds.TarWriter(str(path), encoder=False) as w:
        for s in samples:
            w.write(s)
    got = list(tar.read_samples(open(path, "rb"), str(path)))
    assert [without_meta(s) for s in got] == samples
    assert all(s["__url__"] == str(path) for s in got)


def test_read_base256_size_and_signed_checksum():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo("a.bin")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    data = bytearray(buf.getvalue())
    data[124:136] = b"\x80" + (5).to_bytes(11, "big")  # GNU base-256 size
    data[0:1] = b"\xe9"  # a high byte in the name: signed and unsigned sums differ
    body = data[:148] + b" " * 8 + data[156:512]
    signed = sum(b - 256 if b > 127 else b for b in body)
    data[148:156] = b"%06o\0 " % signed
    assert members_of(bytes(data)) == {"\udce9.bin": b"hello"}


def _fix_checksum(data: bytearray, at: int) -> None:
    block = data[at:at + 512]
    block[148:156] = b" " * 8
    data[at + 148:at + 156] = b"%06o\0 " % sum(block)


def test_read_pax_size_overrides_header_size():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("big.bin")
        info.size = 5
        info.pax_headers = {"size": "5", "path": "renamed/big.bin"}
        tf.addfile(info, io.BytesIO(b"12345"))
        info = tarfile.TarInfo("next.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"ok"))
    data = bytearray(buf.getvalue())
    ustar = 1024  # pax header block + its records block, then the member's own header
    assert data[ustar + 156:ustar + 157] == b"0"
    data[ustar + 124:ustar + 136] = b"00000000000\0"  # as when the size needs pax
    _fix_checksum(data, ustar)
    assert members_of(bytes(data)) == {"renamed/big.bin": b"12345", "next.txt": b"ok"}


def test_writer_uses_pax_size_for_huge_members():
    writer = tar.TarWriter(io.BytesIO())
    out = writer._long_header("k.bin", b"k.bin", 8**11)
    assert len(out) == 3 * 512 and out[156:157] == b"x"
    records = tarformat.parse_pax(bytes(out[512:1024]).rstrip(b"\0"), "u", 0)
    assert records == {"size": str(8**11)}
    header = tarfile.TarInfo.frombuf(bytes(out[1024:]), "utf-8", "surrogateescape")
    assert (header.name, header.size) == ("k.bin", 0)


def test_read_across_buffer_boundaries_and_big_members():
    rng = random.Random(5)
    sizes = [rng.choice([0, 1, 511, 512, 513, 4000, 70000]) for _ in range(200)]
    sizes += [tarread.CHUNK - 512, tarread.CHUNK, 3 * tarread.CHUNK + 17]
    samples = [{"__key__": f"k{i:04d}", "bin": rng.randbytes(s)} for i, s in enumerate(sizes)]
    data = written(samples)
    for stream in (io.BytesIO(data), Trickle(data, 777), Trickle(data, 100_000)):
        got = [without_meta(s) for s in tar.read_samples(stream, "t.tar")]
        assert got == samples


def test_reader_without_readinto():
    class ReadOnly:
        def __init__(self, data):
            self._b = io.BytesIO(data)

        def read(self, n=-1):
            return self._b.read(min(n, 1000) if n > 0 else n)

    samples = sample_set(30)
    data = written(samples, url="x.tgz")
    got = list(tar.read_samples(tar.open_stream_reader(ReadOnly(data), "x.tgz")))
    assert [without_meta(s) for s in got] == samples


def test_leading_dot_slash_stripped_and_end_without_zero_blocks():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name in ("./a/k.txt", "././b.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tf.addfile(info, io.BytesIO(b"hi"))
    data = buf.getvalue()
    assert members_of(data) == {"a/k.txt": b"hi", "b.txt": b"hi"}
    with pytest.raises(TarFormatError, match="without the end-of-archive marker") as e:
        members_of(data[:4 * 512])  # cut on a block boundary: samples may be missing
    assert e.value.offset == 4 * 512
    assert members_of(b"") == {}  # an empty object is an empty shard


def test_read_samples_groups_consecutive_members():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in [("a/x.jpg", b"1"), ("a/x.cls", b"2"), ("a/y.jpg", b"3"),
                           ("a/x.txt", b"4"), ("noext", b"5")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    got = list(tar.read_samples(io.BytesIO(buf.getvalue()), "u.tar"))
    assert got == [
        {"__key__": "a/x", "__url__": "u.tar", "jpg": b"1", "cls": b"2"},
        {"__key__": "a/y", "__url__": "u.tar", "jpg": b"3"},
        {"__key__": "a/x", "__url__": "u.tar", "txt": b"4"},  # not adjacent: a new sample
        {"__key__": "noext", "__url__": "u.tar", "": b"5"},
    ]


def grouped(members) -> list[dict]:
    """The reference grouping: split_key() on every name, consecutive equal keys."""
    out: list[dict] = []
    for name, data, _ in members:
        key, field = tar.split_key(name)
        if not out or out[-1]["__key__"] != key:
            out.append({"__key__": key, "__url__": "g.tar"})
        assert field not in out[-1]
        out[-1][field] = data
    return out


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_read_samples_group_by_name_bytes_like_split_key(fmt):
    """The hot loop joins a member to the current sample by its name's bytes (the key, a
    dot, a field without '/'); every other name goes through split_key().  Names that
    start with the key and a dot but belong to another key, empty fields, dotless
    names, keys of 99 bytes (key + dot fills the name field), long names, non-ASCII."""
    long_key = "p" * 99
    names = ["k.a", "k.b/c.d", "k.b/c.e", "k.b/c", "k.b/cd", "x.jpg", "x.", "x/y.z",
             ".a", ".b", "./q.r", "q.s", long_key + ".", long_key + ".jj",
             "m" * 99 + ".jj", "m" * 99 + ".", "ü/ø.a", "ü/ø.b", "ü/ø", "ü/ø/.a", "k.a",
             "d" * 150 + "/e.f", "d" * 150 + "/e.g", "e.f", "big.h", "big.i"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for i, name in enumerate(names):
            data = bytes([i]) * (3 * tarread.CHUNK // 2 if name.startswith("big.") else i)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    expected = grouped(tar.iter_members(io.BytesIO(data), "g.tar"))
    assert [s["__key__"] for s in expected] == [
        "k", "k.b/c", "k.b/cd", "x", "x/y", "", "q", long_key, "m" * 99, "ü/ø", "ü/ø/",
        "k", "d" * 150 + "/e", "e", "big"]
    assert list(tar.read_samples(io.BytesIO(data), "g.tar")) == expected
    assert list(tar.read_samples(Trickle(data, 1000), "g.tar")) == expected


@pytest.mark.parametrize("at", [0, 1, 2, 3])
def test_read_samples_skips_a_member_with_an_empty_name(at):
    """A regular member whose name field is empty is skipped (as iter_members does):
    before the first sample, after a sample, after one whose key no plain name can
    start with (here: longer than the name field, from a pax record)."""
    names = ["a.x", "a.y", "p" * 120 + ".x", "b.x"]
    names.insert(at, "EMPTY.z")
    data = bytearray(tar_of(names, b"abc", tarfile.PAX_FORMAT))
    hoff = data.index(b"EMPTY.z")
    data[hoff:hoff + 100] = bytes(100)
    _fix_checksum(data, hoff)
    assert [name for name, _, _ in tar.iter_members(io.BytesIO(bytes(data)))] == \
        [n for n in names if n != "EMPTY.z"]
    assert [without_meta(s) for s in tar.read_samples(io.BytesIO(bytes(data)))] == [
        {"__key__": "a", "x": b"abc", "y": b"abc"}, {"__key__": "p" * 120, "x": b"abc"},
        {"__key__": "b", "x": b"abc"}]


# --------------------------------------------------------------------------- GNU sparse

SPARSE_FORMATS = {  # id -> GNU tar options
    "gnu": ["--format=gnu"],
    "oldgnu": ["--format=oldgnu"],
    "pax-0.0": ["--format=pax", "--sparse-version=0.0"],
    "pax-0.1": ["--format=pax", "--sparse-version=0.1"],
    "pax-1.0": ["--format=pax", "--sparse-version=1.0"],
}


def make_sparse_tree(root: Path) -> dict[str, bytes]:
    """Files with holes (made with truncate and seek writes) and plain ones; returns every
    regular file's real bytes.  Regions are 64 KiB apart so every file system leaves holes."""
    rng = random.Random(11)
    layouts = {  # name -> (real size, [(offset, data length)])
        "hole-only.bin": (3 << 20, []),
        "two.bin": (300_000, [(100_000, 3), (250_000, 5000)]),  # ends in a hole
        "ends-in-data.bin": (200_000, [(0, 700), (199_000, 1000)]),
        # 5 regions: an old GNU header holds 4, the rest go to an extension block;
        # 60: three extension blocks, and a pax 1.0 map longer than one block
        "five.bin": (5 << 16, [(i << 16, 100 + i) for i in range(5)]),
        "sixty.bin": (60 << 16, [((i << 16) + 512 * (i % 3), 1 + 97 * i) for i in range(60)]),
        # stored data bigger than the reader's buffer, between holes
        "big.bin": (3 * tarread.CHUNK, [(tarread.CHUNK // 2, tarread.CHUNK + 12345)]),
        "deep/name/" + "n" * 120 + ".bin": (1 << 20, [(1 << 19, 10)]),  # a long name
    }
    files: dict[str, bytes] = {}
    for name, (size, regions) in layouts.items():
        real = bytearray(size)
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)
            for offset, n in regions:
                chunk = bytes(rng.randrange(1, 256) for _ in range(min(n, 64))) * (n // 64 + 1)
                real[offset:offset + n] = chunk[:n]
                f.seek(offset)
                f.write(chunk[:n])
        files[name] = bytes(real)
    for name, data in {"plain.txt": b"not sparse\n", "empty": b""}.items():
        (root / name).write_bytes(data)
        files[name] = data
    return files


@pytest.mark.parametrize("fmt", list(SPARSE_FORMATS))
def test_read_gnu_tar_sparse_members(tmp_path, fmt, gnu_tar):
    files = make_sparse_tree(tmp_path / "src")
    archive = tmp_path / "s.tar"
    subprocess.run([gnu_tar, "--sparse", *SPARSE_FORMATS[fmt], "-cf", str(archive),
                    "-C", str(tmp_path / "src"), "."], check=True)
    data = archive.read_bytes()
    assert len(data) < 4 * tarread.CHUNK  # the holes are not stored
    theirs = []  # tarfile's (name, bytes) of each regular member, in order
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf:
            if m.isreg():
                theirs.append((m.name.removeprefix("./"), tf.extractfile(m).read(), m.sparse))
    assert {n for n, _, sparse in theirs if sparse is None} == {"plain.txt", "empty"}
    ours = [(n, d) for n, d, _ in tar.iter_members(io.BytesIO(data), "s.tar")]
    assert dict(ours) == files  # the real names and bytes, as GNU tar extracts them
    assert [d for _, d in ours] == [d for _, d, _ in theirs]  # byte for byte, in order
    for (name, _), (their_name, _, _) in zip(ours, theirs):
        # tarfile lets a pax path record override GNU.sparse.name: a 0.1 member whose
        # name needs that record keeps GNU tar's made-up .../GNUSparseFile.<pid>/ name
        assert name == their_name or "/GNUSparseFile." in their_name
    got = {n: d for n, d, _ in tar.iter_members(Trickle(data, 1000), "s.tar")}
    assert got == files
    # and as WebDataset samples, after a regular member
    samples = list(tar.read_samples(io.BytesIO(data), "s.tar"))
    assert {s["__key__"] for s in samples} == {tar.split_key(n)[0] for n in files}


def _cpython_testtar() -> Path | None:
    """CPython's test archive (old GNU and pax 0.0/0.1/1.0 sparse members among others),
    when this interpreter's test package ships it."""
    try:
        import test
    except ImportError:
        return None
    base = Path(test.__file__).parent
    for rel in ("archivetestdata/testtar.tar", "testtar.tar"):
        if (base / rel).is_file():
            return base / rel
    return None


def test_read_cpython_testtar():
    path = _cpython_testtar()
    if path is None:
        pytest.skip("this Python has no test package with testtar.tar (CPython's test suite)")
    data = path.read_bytes()
    expected = tarfile_regular(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        sparse = [m.name for m in tf if m.sparse is not None]
    assert len(sparse) >= 4, sparse  # gnu/sparse, gnu/sparse-0.0, -0.1, -1.0
    got: dict[str, bytes] = {}
    for name, payload, _ in tar.iter_members(io.BytesIO(data), str(path)):
        got[name] = payload  # tarfile_regular keeps the last of a repeated name too
    assert got == expected
    assert all(expected[n] for n in sparse)


def _set_header(data: bytearray, at: int, **fields: tuple[int, bytes]) -> None:
    """Overwrite header fields (offset, bytes) of the header at ``at``; fix its checksum."""
    for offset, value in fields.values():
        data[at + offset:at + offset + len(value)] = value
    data[at + 148:at + 156] = b" " * 8
    data[at + 148:at + 156] = b"%06o\0 " % sum(data[at:at + 512])


def _octal(n: int) -> bytes:
    return b"%011o\0" % n


def _old_gnu_sparse(stored: bytes, regions: list[tuple[int, int]], realsize: int,
                    extended: bool = False) -> bytearray:
    """A GNU-format tar with one 'S' member "s.bin" holding ``stored`` (no extension
    block follows even if ``extended`` says so) and then "after.txt"."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, payload in (("s.bin", stored), ("after.txt", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    data = bytearray(buf.getvalue())
    sparse_map = b"".join(_octal(o) + _octal(n) for o, n in regions)
    _set_header(data, 0, type=(156, b"S"), map=(386, sparse_map),
                ext=(482, b"\1" if extended else b"\0"), real=(483, _octal(realsize)))
    return data


def test_read_old_gnu_sparse_made_by_hand():
    data = _old_gnu_sparse(b"abcdef", [(2, 3), (10, 3)], 16)
    assert members_of(bytes(data)) == {"s.bin": b"\0\0abc\0\0\0\0\0def\0\0\0",
                                       "after.txt": b"x"}
    assert tarfile_regular(bytes(data)) == members_of(bytes(data))


@pytest.mark.parametrize("regions,realsize,why", [
    ([(2, 3), (10, 3)], 12, r"sparse region 10\+3 outside the real size 12"),
    ([(2, 3), (4, 3)], 16, r"sparse region at 4 overlaps or precedes the one ending at 5"),
    ([(0, 3), (10, 30)], 60, r"sparse map needs more than the 6 stored bytes"),
    ([(0, 3), (10, 2)], 60, r"sparse map takes 5 of the 6 stored bytes"),
])
def test_error_old_gnu_sparse_bad_map(regions, realsize, why):
    data = _old_gnu_sparse(b"abcdef", regions, realsize)
    with pytest.raises(TarFormatError, match=rf"^sp.tar, member 's.bin', offset 0: {why}$"):
        list(tar.iter_members(io.BytesIO(bytes(data)), "sp.tar"))


def test_error_sparse_member_expanding_past_the_limit(monkeypatch):
    """Six stored bytes that claim 8 GB of holes: a named error, not an attempt to
    allocate it; the limit is $HTOOLS_MAX_SPARSE_SIZE."""
    data = bytes(_old_gnu_sparse(b"abcdef", [(0, 6)], 8_000_000_000))
    with pytest.raises(TarFormatError, match=r"^sp.tar, member 's.bin', offset 0: sparse "
                                             r"member of real size 8000000000 bytes, over "
                                             r"the 1073741824-byte limit .*HTOOLS_MAX_SPARSE"):
        list(tar.iter_members(io.BytesIO(data), "sp.tar"))
    monkeypatch.setenv("HTOOLS_MAX_SPARSE_SIZE", "16")
    data = bytes(_old_gnu_sparse(b"abcdef", [(0, 6)], 17))
    with pytest.raises(TarFormatError, match="over the 16-byte limit"):
        list(tar.iter_members(io.BytesIO(data), "sp.tar"))
    assert members_of(bytes(_old_gnu_sparse(b"abcdef", [(0, 6)], 16)))["s.bin"] == \
        b"abcdef" + bytes(10)


def test_error_old_gnu_sparse_bad_number_and_missing_extension():
    data = _old_gnu_sparse(b"abcdef", [(0, 6)], 6)
    _set_header(data, 0, bad=(386, b"0000000000z\0"))
    with pytest.raises(TarFormatError, match=r"^sp.tar, member 's.bin', offset 0: bad sparse "
                                             r"map in GNU sparse header"):
        list(tar.iter_members(io.BytesIO(bytes(data)), "sp.tar"))
    # isextended, but the next block is the data, not 21 numbers: a named error
    data = _old_gnu_sparse(b"abcdef" + bytes(506), [(0, 512)], 512, extended=True)
    with pytest.raises(TarFormatError, match=r"^sp.tar, member 's.bin', offset 0: "):
        list(tar.iter_members(io.BytesIO(bytes(data)), "sp.tar"))
    # isextended on the last header before the stream ends
    with pytest.raises(TarFormatError, match=r"^sp.tar, member 's.bin', offset 0: truncated "
                                             r"tar: the stream ends inside a GNU sparse"):
        list(tar.iter_members(io.BytesIO(bytes(data[:512])), "sp.tar"))


def _pax_sparse(stored: bytes, records: dict[str, str]) -> bytes:
    """A pax tar whose member "GNUSparseFile.1/s.bin" carries ``records`` (and the real name
    "s.bin" by default), then after.txt."""
    records = {"GNU.sparse.name": "s.bin", **records}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("GNUSparseFile.1/s.bin")
        info.size = len(stored)
        info.pax_headers = records
        tf.addfile(info, io.BytesIO(stored))
        after = tarfile.TarInfo("after.txt")
        after.size = 1
        tf.addfile(after, io.BytesIO(b"x"))
    return buf.getvalue()


def test_read_pax_sparse_made_by_hand():
    v01 = _pax_sparse(b"abcdef", {"GNU.sparse.map": "2,3,10,3", "GNU.sparse.size": "16",
                                  "GNU.sparse.numblocks": "2", "GNU.sparse.name": "s.bin"})
    v10 = _pax_sparse(b"2\n2\n3\n10\n3\n".ljust(512, b"\0") + b"abcdef",
                      {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                       "GNU.sparse.realsize": "16", "GNU.sparse.name": "s.bin"})
    for data in (v01, v10):
        expected = {"s.bin": b"\0\0abc\0\0\0\0\0def\0\0\0", "after.txt": b"x"}
        assert members_of(data) == expected
        assert tarfile_regular(data) == expected


@pytest.mark.parametrize("stored,records,why", [
    (b"abcdef", {"GNU.sparse.map": "2,3,10", "GNU.sparse.size": "16"},
     r"sparse map with an odd count of numbers"),
    (b"abcdef", {"GNU.sparse.map": "2,3,10,3", "GNU.sparse.size": "16",
                 "GNU.sparse.numblocks": "3"},
     r"sparse map of 2 regions, GNU.sparse.numblocks says 3"),
    (b"abcdef", {"GNU.sparse.map": "2,3,x,3", "GNU.sparse.size": "16"},
     r"bad number in GNU sparse pax records"),
    (b"abcdef", {"GNU.sparse.map": "2,3,10,3"}, r"GNU sparse records without the real size"),
    (b"abcdef", {"GNU.sparse.major": "2", "GNU.sparse.minor": "0",
                 "GNU.sparse.realsize": "16"}, r"unsupported GNU sparse version 2.0"),
    (b"2\n2\n3\n1x\n3\n".ljust(512, b"\0") + b"abcdef",
     {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "16"},
     r"bad number b'1x\\n3\\n.*' in the sparse map \(pax 1.0\)"),
    (b"9999\n2\n3\n",
     {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "16"},
     r"sparse map \(pax 1.0\) of 9999 regions in 9 bytes"),
    (b"2\n2\n3\n10\n3\n".ljust(512, b"\0") + b"abcdef",
     {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "12"},
     r"sparse region 10\+3 outside the real size 12"),
])
def test_error_pax_sparse_bad_map(stored, records, why):
    data = _pax_sparse(stored, records)
    # named by the member's header (after the pax header), with its real name
    with pytest.raises(TarFormatError, match=rf"^sp.tar, member 's.bin', offset 1024: {why}"):
        list(tar.iter_members(io.BytesIO(data), "sp.tar"))


def test_error_sparse_records_in_global_pax_header():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"GNU.sparse.size": "5"}) as tf:
        tf.addfile(tarfile.TarInfo("e"))
    with pytest.raises(TarFormatError, match=r"^g.tar, offset 0: GNU sparse records in a "
                                             r"global pax header"):
        list(tar.iter_members(io.BytesIO(buf.getvalue()), "g.tar"))


# --------------------------------------------------------------------------- writing


@pytest.mark.parametrize("suffix", [".tar", ".tgz", ".tar.zst"])
def test_written_tar_read_by_gnu_tar(tmp_path, suffix, gnu_tar):
    if suffix == ".tar.zst":
        require_tool("zstd")
    samples = sample_set(10)
    samples.append({"__key__": f"{LONG_DIR}/{'g' * 80}", "txt": "prefix split"})  # > 100 bytes
    samples.append({"__key__": "p" * 200 + "/" + "q" * 120, "txt": "pax path"})  # > 255
    samples.append({"__key__": "données/ünï-名前", "txt": "utf-8 name"})
    path = tmp_path / f"out{suffix}"
    with open(path, "wb") as f:
        tar.write_samples(f, samples, url=str(path), user="htools", group="data")
    listing = subprocess.run([gnu_tar, "-tvf", str(path)], capture_output=True, check=True,
                             text=True).stdout.splitlines()
    expected = {f"{s['__key__']}.{f}": (v.encode() if isinstance(v, str) else v)
                for s in samples for f, v in s.items() if not f.startswith("_")}
    assert len(listing) == len(expected)
    assert all(line.startswith("-rw-r--r-- htools/data") for line in listing)
    names = {re.match(r"^\S+ \S+ +\d+ \d{4}-\d\d-\d\d \d\d:\d\d (.*)$", line).group(1)
             for line in listing}
    assert names == set(expected)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run([gnu_tar, "-xf", str(path), "-C", str(out)], check=True)
    for name, data in expected.items():
        assert (out / name).read_bytes() == data


@pytest.mark.parametrize("suffix", [".tar", ".tgz"])
def test_written_tar_read_by_webdataset(tmp_path, suffix):
    wds = require_module("webdataset")
    samples = sample_set(12)
    samples.append({"__key__": "p" * 200 + "/" + "q" * 120, "txt": b"pax path"})
    samples.append({"__key__": "données/ünï-名前", "txt": b"utf-8 name"})
    path = tmp_path / f"out{suffix}"
    with open(path, "wb") as f:
        tar.write_samples(f, samples, url=str(path))
    ds = wds.WebDataset(str(path), shardshuffle=False, empty_check=False)
    got = [{k: v for k, v in s.items() if k not in ("__url__", "__local_path__")} for s in ds]
    assert got == samples
    src = [{"url": str(path), "stream": open(path, "rb")}]
    got2 = [{k: v for k, v in s.items() if k not in ("__url__", "__local_path__")}
            for s in wds.tariterators.tarfile_samples(src)]
    assert got2 == samples


def test_written_tar_read_by_tarfile_and_htools():
    samples = sample_set(8)
    samples[0]["_private"] = b"not written"
    samples[1]["txt"] = "a str value: é"
    samples[2]["mem"] = memoryview(b"from a memoryview")
    data = written(samples)
    names = list(tarfile_regular(data))
    assert names[:3] == ["shard/s0000.cls", "shard/s0000.jpg", "shard/s0000.seg.png"]  # sorted
    assert not any("_private" in n for n in names)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        m = tf.getmembers()[0]
        assert (m.mode, m.uid, m.gid, m.mtime, m.uname, m.gname) == (0o644, 0, 0, 0, "", "")
        assert tf.getmembers()[0].isreg()
    got = [without_meta(s) for s in tar.read_samples(io.BytesIO(data))]
    expected = [{k: (v if k == "__key__" else v.encode() if isinstance(v, str) else bytes(v))
                 for k, v in s.items() if k == "__key__" or not k.startswith("_")}
                for s in samples]
    assert got == expected
    assert len(data) % 10240 == 0


def test_writer_counters_return_values_and_raw_stream_left_open():
    buf = io.BytesIO()
    w = tar.TarWriter(buf)
    n1 = w.write({"__key__": "a", "txt": b"x" * 600})
    assert n1 == 512 + 1024
    assert w.write({"__key__": "b", "_only": b"private"}) == 0  # nothing to write
    n2 = w.write({"__key__": "c" * 300, "txt": b"y"})  # pax header + header + data
    assert n2 == 512 * 4
    w.close()
    w.close()  # idempotent
    assert not buf.closed
    assert w.samples_written == 2
    assert w.bytes_written == len(buf.getvalue()) == 10240
    with pytest.raises(ValueError):
        w.write({"__key__": "d", "txt": b""})
    raw = io.BytesIO()
    with tar.TarWriter(raw, close_raw=True) as w:
        w.write({"__key__": "a", "txt": b""})
    assert raw.closed


@pytest.mark.parametrize("sample,why", [
    ({"txt": b"x"}, "no __key__"),
    ({"__key__": "", "txt": b"x"}, "no __key__"),
    ({"__key__": "dir/a.b", "txt": b"x"}, "'.' in its basename"),
    ({"__key__": "dir/", "txt": b"x"}, "empty basename"),
    ({"__key__": "/abs", "txt": b"x"}, "starts with '/'"),
    ({"__key__": "k", "a/b": b"x"}, "bad field name"),
    ({"__key__": "k", "a": b"ok", "n": 3}, "is a int; expected bytes or str"),
    ({"__key__": "k", "a": b"ok", 7: b"x"}, "field names must be str"),
])
def test_writer_rejects_bad_samples(sample, why):
    buf = io.BytesIO()
    writer = tar.TarWriter(buf, url="bad.tar")
    writer.write({"__key__": "good", "txt": b"fine"})
    with pytest.raises(tar.SampleFormatError, match=why) as info:
        writer.write(sample)
    assert isinstance(info.value, TarFormatError) and isinstance(info.value, ValueError)
    assert str(info.value).startswith("bad.tar")
    writer.close()  # the bad sample left nothing behind
    assert members_of(buf.getvalue()) == {"good.txt": b"fine"}


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("suffix", [".tar", ".tgz", ".tar.zst"])
def test_deterministic_output(tmp_path, suffix):
    samples = sample_set(30)
    a = written(samples, url="a" + suffix)
    path = tmp_path / ("b" + suffix)  # a real file: its name must not reach the gzip header
    with open(path, "wb") as f:
        tar.write_samples(f, samples, url=str(path))
    assert path.read_bytes() == a
    if suffix == ".tgz":
        assert a[:2] == compress.GZIP_MAGIC and a[3] & 0x08 == 0  # no FNAME
        assert a[4:8] == b"\0\0\0\0"  # mtime 0
    plain = written(samples)
    assert compress.open_stream_reader(io.BytesIO(a), "a" + suffix).read() == plain


def test_mtime_now_and_fixed():
    now = written([{"__key__": "a", "x": b""}], mtime=None)
    with tarfile.open(fileobj=io.BytesIO(now)) as tf:
        assert tf.getmembers()[0].mtime > 1_600_000_000
    fixed = written([{"__key__": "a", "x": b""}], mtime=1234567890.7)
    with tarfile.open(fileobj=io.BytesIO(fixed)) as tf:
        assert tf.getmembers()[0].mtime == 1234567890


# --------------------------------------------------------------------------- compression


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compression_by_suffix_and_by_magic(codec):
    samples = sample_set(25)
    suffix = {"gzip": ".tar.gz", "zstd": ".tzst"}[codec]
    blob = written(samples, url="x" + suffix)
    magic = compress.GZIP_MAGIC if codec == "gzip" else compress.ZSTD_MAGIC
    assert blob.startswith(magic)
    assert written(samples, url="x.tar", compress=codec) == blob
    for url in ("x" + suffix, "x.tar", "no-suffix", "x.tgz" if codec == "zstd" else "x.tzst"):
        for stream in (io.BytesIO(blob), Trickle(blob, 4096)):
            got = tar.read_samples(tar.open_stream_reader(stream, url), url)
            assert [without_meta(s) for s in got] == samples


def test_plain_tar_under_compressed_name_and_multimember_gzip():
    samples = sample_set(10)
    plain = written(samples)
    got = tar.read_samples(tar.open_stream_reader(io.BytesIO(plain), "mislabeled.tgz"))
    assert [without_meta(s) for s in got] == samples
    half = len(plain) // 2
    multi = gzip.compress(plain[:half], mtime=0) + gzip.compress(plain[half:], mtime=0)
    got = tar.read_samples(tar.open_stream_reader(Trickle(multi, 1000), "m.tgz"))
    assert [without_meta(s) for s in got] == samples
    cctx = zstandard.ZstdCompressor()
    frames = cctx.compress(plain[:half]) + cctx.compress(plain[half:])
    got = tar.read_samples(tar.open_stream_reader(io.BytesIO(frames), "m.tar.zst"))
    assert [without_meta(s) for s in got] == samples


def test_open_stream_writer_never_closes_raw():
    for url in ("a.tar", "a.tgz", "a.tar.zst"):
        raw = io.BytesIO()
        w = compress.open_stream_writer(raw, url)
        w.write(b"hello")
        w.close()
        assert not raw.closed
        assert compress.open_stream_reader(io.BytesIO(raw.getvalue()), url).read() == b"hello"


def test_compression_for():
    assert compress.compression_for("gs://b/x_0001.tgz") == "gzip"
    assert compress.compression_for("x.TAR.GZ") == "gzip"
    assert compress.compression_for("s3://b/x.tar.zst") == "zstd"
    assert compress.compression_for("http://h/x.tar.zst?sig=1") == "zstd"
    assert compress.compression_for("x.tar") is None
    with pytest.raises(ValueError, match="unknown compression"):
        compress.open_stream_writer(io.BytesIO(), "x.tar", compress="lz4")


# --------------------------------------------------------------------------- errors


def _two_member_tar() -> bytes:
    return written([{"__key__": "s1", "txt": b"a" * 100}, {"__key__": "s2", "txt": b"b" * 2000}])


def test_error_bad_checksum_names_url_member_offset():
    data = bytearray(_two_member_tar())
    data[1024 + 60] = ord("x")  # inside the name field of the second header (offset 1024)
    with pytest.raises(TarFormatError) as info:
        list(tar.read_samples(io.BytesIO(bytes(data)), "gs://b/shard-7.tar"))
    msg = str(info.value)
    assert msg.startswith("gs://b/shard-7.tar, member 's2.txt', offset 1024: bad tar header "
                          "checksum: stored ")
    assert info.value.offset == 1024 and info.value.member == "s2.txt"


def test_error_truncated_member_and_header():
    data = _two_member_tar()
    with pytest.raises(TarFormatError) as info:
        list(tar.read_samples(io.BytesIO(data[:1024 + 512 + 700]), "t.tar"))
    assert str(info.value) == ("t.tar, member 's2.txt', offset 1024: truncated member: "
                               "the stream ends after 700 of its 2000 bytes")
    with pytest.raises(TarFormatError, match=r"^t.tar, offset 1024: truncated tar: the stream "
                                             r"ends inside a header"):
        list(tar.read_samples(io.BytesIO(data[:1024 + 100]), "t.tar"))
    big = written([{"__key__": "big", "bin": os.urandom(3 * tarread.CHUNK)}])
    with pytest.raises(TarFormatError, match=r"member 'big.bin', offset 0: truncated member"):
        list(tar.iter_members(Trickle(big[:2 * tarread.CHUNK], 50_000), "t.tar"))


def test_error_repeated_field():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name in ("a.txt", "b.txt", "b.jpg", "b.txt", "c.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tf.addfile(info, io.BytesIO(b"z"))
    data = buf.getvalue()
    with pytest.raises(TarFormatError) as info:
        list(tar.read_samples(io.BytesIO(data), "r.tar"))
    assert str(info.value) == ("r.tar, member 'b.txt', key 'b', offset 3072: "
                               "field 'txt' repeated within one sample")
    got = []
    with pytest.raises(TarFormatError):
        for sample in tar.read_samples(io.BytesIO(data), "r.tar"):
            got.append(sample["__key__"])
    assert got == ["a"]  # complete samples before the error; none of the bad one


@pytest.mark.parametrize("names,at", [(("a.txt", "b.__key__", "b.txt"), 1024),
                                      (("a.txt", "b.txt", "b.__key__"), 2048),
                                      (("a.__url__",), 0)])
def test_error_reserved_field_first_or_later(names, at):
    """A member named like KEY.__key__ (or .__url__) would overwrite the sample's own
    key: a named error wherever it stands in the sample, its first member included."""
    bad = [n for n in names if ".__" in n][0]
    with pytest.raises(TarFormatError, match=rf"^r.tar, member '{bad}', key '{bad[0]}', "
                                             rf"offset {at}: reserved field name$"):
        list(tar.read_samples(io.BytesIO(tar_of(names)), "r.tar"))


def test_error_truncated_stream_stops_reading():
    data = _two_member_tar()
    got = []
    with pytest.raises(TarFormatError, match="member 's2.txt', offset 1024: truncated"):
        for sample in tar.read_samples(io.BytesIO(data[:1024 + 600]), "t.tar"):
            got.append(sample["__key__"])
    # s1 is complete but is yielded only when the next key starts, which never does
    assert got == []


def test_error_garbage_input():
    junk = random.Random(1).randbytes(5000)
    with pytest.raises(TarFormatError, match=r"^junk.tar, offset 0: bad tar header checksum: "
                                             r".*\(not a tar stream\?\)$"):
        list(tar.read_samples(tar.open_stream_reader(io.BytesIO(junk), "junk.tar"),
                                "junk.tar"))


@pytest.mark.parametrize("url", ["bad.tgz", "bad.tar.zst"])
def test_error_corrupt_compressed_stream(url):
    blob = written(sample_set(40), url=url)
    cases = {
        "truncated": blob[: len(blob) // 2],
        "garbled": blob[:40] + bytes(200) + blob[240:],
        "junk with magic": blob[:4] + random.Random(2).randbytes(3000),
    }
    for what, bad in cases.items():
        with pytest.raises(TarFormatError) as info:
            list(tar.read_samples(tar.open_stream_reader(io.BytesIO(bad), url), url))
        assert str(info.value).startswith(f"{url}, "), what
        assert info.value.offset is not None, what
    # Not compressed at all, no tar magic: the suffix decides and the codec complains.
    junk = random.Random(3).randbytes(3000)
    with pytest.raises(TarFormatError, match=rf"^{url}, offset 0: "):
        list(tar.read_samples(tar.open_stream_reader(io.BytesIO(junk), url), url))


@pytest.mark.parametrize("url", ["mid.tgz", "mid.tar.zst"])
def test_corrupt_compressed_stream_in_the_middle_names_the_compressed_bytes(url):
    """A decode error half-way through a 4 MB stream read through a buffered source (as
    storage hands it out) names the span of compressed bytes it lies in, not offset 0."""
    rng = random.Random(5)
    samples = [{"__key__": f"k{i:03d}", "bin": rng.randbytes(2000) * 50} for i in range(40)]
    blob = bytearray(written(samples, url=url))
    middle = len(blob) // 2
    blob[middle:middle + 4096] = rng.randbytes(4096)
    with pytest.raises(TarFormatError) as info:
        source = io.BufferedReader(io.BytesIO(bytes(blob)), 1 << 16)
        list(tar.read_samples(tar.open_stream_reader(source, url), url))
    text = str(info.value)
    found = re.search(r"compressed bytes ([\d,]+)-([\d,]+)|at or before compressed byte ([\d,]+)",
                      text)
    assert found, text
    numbers = [int(g.replace(",", "")) for g in found.groups() if g]
    assert all(middle <= n <= len(blob) for n in numbers[-1:]), (text, middle, len(blob))
    if found.group(1):
        assert int(found.group(1).replace(",", "")) <= middle + 4096, (text, middle)


def test_error_unsupported_multivolume_member():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("m.bin")
        info.type = b"M"  # GNU multi-volume continuation
        tf.addfile(info)
    with pytest.raises(TarFormatError, match=r"member 'm.bin', offset 0: unsupported tar "
                                             r"member type 'M'"):
        list(tar.iter_members(io.BytesIO(buf.getvalue()), "mv.tar"))


def test_errors_pickle():
    import pickle

    err = TarFormatError("u.tar", "why", key="k", member="k.x", offset=5)
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


# --------------------------------------------------------------------------- property


def test_round_trip_property():
    hypothesis = require_module("hypothesis")
    st = hypothesis.strategies

    segment = st.text(st.characters(blacklist_characters="./\0", blacklist_categories=("Cs",)),
                      min_size=1, max_size=40)
    keys = st.lists(segment, min_size=1, max_size=5).map("/".join)
    fields = st.text(st.characters(blacklist_characters="/\0_", blacklist_categories=("Cs",)),
                     min_size=1, max_size=20)
    sample = st.fixed_dictionaries({"__key__": keys},
                                   optional={}).flatmap(
        lambda s: st.dictionaries(fields, st.binary(max_size=1500), min_size=1, max_size=4)
        .map(lambda d: {**s, **d}))

    @hypothesis.settings(max_examples=60, deadline=None)
    @hypothesis.given(st.lists(sample, max_size=6), st.sampled_from([".tar", ".tgz", ".tar.zst"]))
    def check(samples, suffix):
        # adjacent samples with one key would merge on read: make keys distinct
        seen, uniq = set(), []
        for s in samples:
            if s["__key__"] not in seen:
                seen.add(s["__key__"])
                uniq.append(s)
        blob = written(uniq, url="p" + suffix)
        got = tar.read_samples(tar.open_stream_reader(io.BytesIO(blob), "p" + suffix))
        assert [without_meta(s) for s in got] == uniq

    check()


def test_dotless_members_pass_through_as_the_empty_field(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "README").write_bytes(b"no extension")
    (src / "d" / "n1.txt").write_bytes(b"t")
    subprocess.run(["tar", "-cf", str(tmp_path / "in.tar"), "-C", str(src), "d/README",
                    "d/n1.txt"], check=True)
    with open(tmp_path / "in.tar", "rb") as f:
        samples = list(tar.read_samples(f, "in.tar"))
    assert [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in samples] == [
        ("d/README", [""]), ("d/n1", ["txt"])]
    buf = io.BytesIO()
    with tar.TarWriter(buf) as w:
        for s in samples:
            w.write(s)
    buf.seek(0)
    again = list(tar.read_samples(buf, "out.tar"))
    assert [{k: v for k, v in s.items() if k != "__url__"} for s in again] == \
        [{k: v for k, v in s.items() if k != "__url__"} for s in samples]


# --------------------------------------------------------------------------- pinned bytes


def pinned_samples() -> list[dict]:
    """Every header shape the writer makes, values of every accepted type, and enough
    data to cross the writer's flush threshold."""
    rng = random.Random(11)
    return [
        {"__key__": "s0001", "jpg": rng.randbytes(1000), "cls": "7"},  # short; str value
        {"__key__": "s0002", "": b"dotless", "txt": ""},  # the empty field; empty value
        {"__key__": LONG_DIR + "/s0003", "json": b"{}"},  # ustar prefix split
        {"__key__": "a" * 160 + "/s0004", "txt": b"p"},  # prefix too long: pax path
        {"__key__": "x" * 120, "bin": b"no slash"},  # no '/' to split at: pax path
        {"__key__": "k" * 99, "x": b"."},  # short key, name of 101 bytes: pax path
        {"__key__": UTF8_NAME.removesuffix(".txt"), "txt": "é"},  # non-ASCII key: pax path
        {"__key__": "a/s0008", "ünï": b"u"},  # non-ASCII field: pax path
        {"__key__": "big/s0009", "bin": rng.randbytes(70_000), "cls": b"1",  # > 64 KiB
         "__url__": "ignored", "_private": b"not written"},
        {"__key__": "s0010", "a": bytearray(b"ba"), "b": memoryview(b"mv")},
    ] + [{"__key__": f"bulk/s{i:04d}", "dat": rng.randbytes(rng.randrange(0, 5000))}
         for i in range(400)]


# sha256 of the uncompressed tar written for pinned_samples(): refactors must keep it.
PINNED_TAR = {
    "default": "caf01d48aeee3b8c83e34b5b17071e76e741f8112dacf8aa124229034fc593b8",
    "custom": "3161a4260c5aa21ffeb2884442d0e16f22921b8aa97766b5c401d4b633cf9184",
}
# gzip bytes also depend on the codec library's version: the whole stream is pinned for
# the backend it was made with; what holds with any version is checked everywhere (see
# check_gzip_frame).
PINNED_GZIP = {("isal", "1.9.1"): {
    "default": "a6bdb61a7e022f6c6e80e3890300af516c849d52bbce1fefc31a9ad91db5b0be",
    "custom": "10ec125ca4b9891bcbc2f02d4f6b5b287b152ff53de61aad5d66b7fa55c997a8",
}}


@pytest.mark.parametrize("which", ["default", "custom"])
def test_writer_bytes_are_pinned(which):
    import hashlib

    kw = {} if which == "default" else {"mtime": 1234567890, "user": "üser", "group": "grp",
                                        "mode": 0o600}
    buf = io.BytesIO()
    counts = tar.write_samples(buf, pinned_samples(), url="pin.tar", **kw)
    plain = buf.getvalue()
    assert hashlib.sha256(plain).hexdigest() == PINNED_TAR[which]
    assert counts == (410, len(plain))
    gz = io.BytesIO()
    tar.write_samples(gz, pinned_samples(), url="pin.tgz", **kw)
    check_gzip_frame(gz.getvalue(), plain)
    again = io.BytesIO()
    tar.write_samples(again, pinned_samples(), url="pin.tgz", **kw)
    assert again.getvalue() == gz.getvalue()  # reproducible with this codec version
    version = getattr(__import__(compress.GZIP_BACKEND), "__version__", "")
    pinned = PINNED_GZIP.get((compress.GZIP_BACKEND, version))
    if pinned is not None:
        assert hashlib.sha256(gz.getvalue()).hexdigest() == pinned[which]


def check_gzip_frame(gz: bytes, plain: bytes) -> None:
    """What a shard's gzip stream is with any codec version: one member whose header
    carries no mtime, no file name and no flags (RFC 1952: magic, deflate, FLG 0, MTIME 0,
    XFL, OS 255 "unknown"), whose trailer is the CRC-32 and size of the tar, and which
    decompresses to the tar."""
    import struct
    import zlib

    assert gz[:8] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00" and gz[9] == 0xFF, gz[:10].hex()
    assert gz[-8:] == struct.pack("<II", zlib.crc32(plain), len(plain) & 0xFFFFFFFF)
    assert compress.open_stream_reader(io.BytesIO(gz), "pin.tgz").read() == plain
    assert zlib.decompress(gz, wbits=31) == plain  # an independent reader: stdlib zlib


def test_a_writer_keeps_header_fields_of_many_sizes_right():
    """The writer keeps the size and checksum fields it formatted, and its write plan of
    each field-name set: a long run of distinct sizes and keys writes, sample by sample,
    what a fresh writer writes, and tarfile accepts every header's checksum."""
    samples = [{"__key__": f"d{i % 7}/k{i:05d}", "bin": bytes([i % 251]) * (i * 37 % 3000),
                "txt": b"x" * (i % 600)} for i in range(1500)]
    buf = io.BytesIO()
    with tar.TarWriter(buf) as w:
        alone = []
        for s in samples:
            start = len(w._out)
            w.write(s)
            alone.append(bytes(w._out[start:]) if len(w._out) > start else None)
    for s, got in zip(samples, alone):
        one = io.BytesIO()
        with tar.TarWriter(one) as fresh:
            n = fresh.write(s)
        if got is not None:
            assert got == one.getvalue()[:n], s["__key__"]
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        names = [(m.name, m.size) for m in tf.getmembers()]
    assert names == [(f"{s['__key__']}.{f}", len(s[f])) for s in samples for f in ("bin", "txt")]
