"""htupload's local files: a directory tree or a list file scanned into samples (files
grouped by key, sized as the writer will write them), and the task that writes a shard
of them; ``write_samples_shard`` is the write step every htupload task ends with."""

from __future__ import annotations

import os
from collections.abc import Iterator
from operator import attrgetter
from typing import NamedTuple

from htools import tar
from htools.errors import HtoolsError
from htools.runtime.shardio import write_shard
from htools.runtime.task import shard_task
from htools.summary import ShardResult
from htools.tar.header import BLOCK, MAX_OCTAL_SIZE

READ_MAX = 1 << 26  # bytes of a file read at once
SMALL = 1 << 20  # a file below this many bytes is read by one os.read, inline


class FileSample(NamedTuple):
    """A sample of local files; a task gets it as a plain tuple (:func:`as_tuples`)."""

    key: str
    files: tuple[tuple[str, str], ...]  # (field, local path)
    size: int  # bytes in the tar, headers included
    sizes: tuple[int, ...] = ()  # of each file, as scanned


def sample_size(key: str, fields) -> int:
    """Bytes a sample's members take in the output tar, as the writer writes them: a
    header each (two for a name that needs a pax record) and padded data."""
    return sum(tar.member_size(key, field, n) for field, n in fields)


def scan_directory(root: str) -> list[FileSample]:
    """Every file below ``root`` (links to folders followed), grouped into samples by key,
    sorted by key.  Files whose name starts with ``.``, has no extension or a field
    starting with ``_`` are not sample members.  A folder that cannot be listed, a file
    that cannot be sized (it vanished, a broken link) and a link that leads back to a
    folder above it are refused in one line."""
    if not os.path.isdir(root):
        raise HtoolsError(f"{root}: not a directory")
    top = os.path.abspath(root)
    samples: list[FileSample] = []
    _scan_folder(top if top != "/" else "", "", samples, {_identity(top): top})
    if not samples:
        raise HtoolsError(f"{root}: no files to upload (a member needs an extension, "
                          "like n01.jpg)")
    samples.sort(key=attrgetter("key"))
    return samples


def _scan_folder(path: str, prefix: str, samples: list[FileSample],
                 above: dict[tuple[int, int], str]) -> None:
    """Add the samples of the folder ``path`` (keys starting with ``prefix``) and of the
    folders below it to ``samples``; ``above``: the folders it lies in, by identity.  The
    files of a sample share a folder (a key ends in the basename), so each folder's files
    are grouped on their own."""
    groups: dict[str, list[tuple[str, str, int]]] = {}
    folders = []
    try:
        with os.scandir(path or "/") as entries:
            for entry in entries:
                name = entry.name
                full = f"{path}/{name}"
                try:
                    is_folder = entry.is_dir()  # a link to a folder is one
                except OSError:
                    is_folder = False
                if is_folder:
                    folders.append((full, name))
                    continue
                dot = name.find(".")
                if dot <= 0 or name[dot + 1:dot + 2] in ("", "_"):
                    continue  # hidden, no extension, or a private field
                try:
                    size = entry.stat().st_size
                except OSError as e:
                    raise HtoolsError(f"{full}: {e.strerror or e}") from None
                groups.setdefault(name[:dot], []).append((name[dot + 1:], full, size))
    except OSError as e:
        raise HtoolsError(f"cannot list {path or '/'}: {e.strerror or e}") from None
    ascii_prefix = prefix.isascii()
    for stem, members in groups.items():
        key = prefix + stem
        members.sort()
        size = 0
        for field, _p, n in members:
            if ascii_prefix and len(key) + len(field) < 100 and n <= MAX_OCTAL_SIZE \
                    and stem.isascii() and field.isascii():
                size += BLOCK + n + -n % BLOCK  # tar.member_size()'s common case
            else:
                size += tar.member_size(key, field, n)
        samples.append(FileSample(key, tuple([(f, p) for f, p, _n in members]), size,
                                  tuple([n for _f, _p, n in members])))
    for full, name in sorted(folders):
        ident = _identity(full)
        if ident in above:
            raise HtoolsError(f"{full}: a symlink loop (it leads back to {above[ident]}); "
                              "remove the link, or list the files to upload in a list file")
        _scan_folder(full, f"{prefix}{name}/", samples, {**above, ident: full})


def _identity(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as e:
        raise HtoolsError(f"{path}: {e.strerror or e}") from None
    return st.st_dev, st.st_ino


def scan_list(list_file: str) -> list[FileSample]:
    """Paths from a list file, one per line; keys are the paths as written."""
    try:
        with open(list_file, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f]
    except OSError as e:
        raise HtoolsError(f"cannot read list file {list_file}: {e.strerror or e}") from None
    base = os.path.dirname(os.path.abspath(list_file))
    paths = []
    for ln in lines:
        if ln and not ln.startswith("#"):
            full = ln if os.path.isabs(ln) else os.path.join(base, ln)
            paths.append((_list_key_path(ln, list_file), full))
    return group_files(paths, list_file)


def _list_key_path(line: str, list_file: str) -> str:
    """The member path a list-file line gives: without leading ``/`` and ``./``; no ``..``."""
    path = line.lstrip("/")
    while path.startswith("./"):
        path = path[2:]
    if ".." in path.split("/"):
        raise HtoolsError(f"{list_file}: {line!r} climbs out with '..'; list paths below "
                          "the dataset's root")
    return path


def group_files(paths: list[tuple[str, str]], where: str) -> list[FileSample]:
    groups: dict[str, dict[str, str]] = {}
    for rel, full in paths:
        key, field = tar.split_key(rel)
        if not field or field.startswith("_") or os.path.basename(rel).startswith("."):
            continue  # no extension: not a sample member; hidden files are skipped
        fields = groups.setdefault(key, {})
        if field in fields:
            raise HtoolsError(f"{where}: {rel!r} appears twice")
        fields[field] = full
    samples = []
    for key in sorted(groups):
        files = tuple(sorted(groups[key].items()))
        try:
            sizes = tuple([os.path.getsize(p) for _f, p in files])
        except OSError as e:
            raise HtoolsError(f"{e.filename}: {e.strerror}") from None
        samples.append(FileSample(key, files, sample_size(key, zip([f for f, _p in files],
                                                                    sizes)), sizes))
    if not samples:
        raise HtoolsError(f"{where}: no files to upload (a member needs an extension, "
                          "like n01.jpg)")
    return samples


def as_tuples(samples: list[FileSample]) -> list[tuple]:
    """``samples`` as the plain tuples a task's arguments carry: 100,000 of them pickle
    on the client and unpickle on a worker in 0.35 s, as FileSamples in 0.7 s (as
    dataclasses: 1.1 s)."""
    return [tuple(s) for s in samples]


def write_file_shard(output: str, samples: list[tuple], *, options: dict | None = None,
                     mtime: float | None = 0, index: bool = True) -> dict:
    """Task: write local files, grouped into samples (FileSample fields, as tuples), as
    one shard."""
    with shard_task(f"{len(samples)} samples", output) as result:
        write_samples_shard(output, _file_samples(samples, result), result, options, mtime, index)
    return result.as_dict()


def _file_samples(samples: list[tuple], result: ShardResult) -> Iterator[dict]:
    """The samples of local files, each file read whole.  A file below ``SMALL`` bytes
    takes one ``os.open``/``os.read``/``os.close`` here, inline (a function call a file
    costs 0.3 us of the 3 us it takes); a larger one, a file that changed size, and one
    that cannot be read go through :func:`_read_local`, which reads it or says why not."""
    open_, read, close, rdonly = os.open, os.read, os.close, os.O_RDONLY
    for key, files, _size, sizes in samples:
        sample = {"__key__": key}
        for (field, path), size in zip(files, sizes):
            data = None
            if size < SMALL:
                try:
                    fd = open_(path, rdonly)
                except OSError:
                    pass  # _read_local names the error
                else:
                    try:
                        data = read(fd, size + 1)  # one byte more: a file that grew
                    finally:
                        close(fd)
            if data is None or len(data) != size:
                data = _read_local(path, size)
            sample[field] = data
        result.bytes_in += sum(sizes)
        yield sample


def write_samples_shard(output: str, samples: Iterator[dict], result: ShardResult,
                 options: dict | None, mtime: float | None, index: bool = True) -> None:
    """Copy ``samples`` into the shard ``output``, counting (and hashing it for the shard
    index when ``index``); a failure leaves no output."""
    with write_shard(output, options, result, mtime=mtime, index=index) as w:
        for sample in samples:
            result.samples_read += 1
            w.write(sample)
            result.samples_mapped += 1
            result.samples_written += 1


def _read_local(path: str, size: int) -> bytes:
    """The bytes of the file ``path``, which had ``size`` bytes when it was scanned.  A
    file whose size changed since is refused: the shard's planned size (``--maxsize``)
    would no longer hold."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            parts = [os.read(fd, min(size + 1, READ_MAX))]
            n = len(parts[0])
            while n <= size:  # the rest, until the file ends or has more than ``size``
                more = os.read(fd, min(max(1 << 20, size + 1 - n), READ_MAX))
                if not more:
                    break
                parts.append(more)
                n += len(more)
        finally:
            os.close(fd)
    except OSError as e:
        raise HtoolsError(f"{path}: {e.strerror or e}") from None
    if n != size:
        raise HtoolsError(f"{path}: the file changed while htupload ran ({size} bytes when "
                          f"listed, {'more' if n > size else n} now)")
    return parts[0] if len(parts) == 1 else b"".join(parts)
