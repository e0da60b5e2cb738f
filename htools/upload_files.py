"""htupload's local files: a directory tree or a list file scanned into samples (files
grouped by key, sized as the writer will write them), and the task that writes a shard
of them; ``write_samples_shard`` is the write step every htupload task ends with."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from operator import attrgetter
from typing import NamedTuple

from htools import tar
from htools.errors import HtoolsError
from htools.runtime.shardio import write_shard
from htools.runtime.task import shard_task
from htools.summary import ShardResult

READ_MAX = 1 << 26  # bytes of a file read at once
CHUNK = 1 << 16  # the first read of a file not sized by the scan (1 MiB would be mmap'ed)


class FileSample(NamedTuple):
    """A sample of local files; a task gets it as a plain tuple (:func:`as_tuples`)."""

    key: str
    files: tuple[tuple[str, str], ...]  # (field, local path)
    size: int  # bytes in the tar, headers included (0: not sized by the scan)
    sizes: tuple[int, ...] = ()  # of each file, as scanned (empty: not sized)


def sample_size(key: str, fields) -> int:
    """Bytes a sample's members take in the output tar, as the writer writes them: a
    header each (two for a name that needs a pax record) and padded data."""
    return sum(tar.member_size(key, field, n) for field, n in fields)


@contextmanager
def collector_paused() -> Iterator[Callable[[], None]]:
    """Python's cyclic garbage collector paused while a job builds its scan and plan, and
    their objects left out of its passes until the block ends.  The scan's hundreds of
    thousands of tuples and strings hold no cycles, but each of them counts towards the
    next collection, and each full collection walks all of them again: at 200,000 files
    that was 0.1-0.25 of the scan's 0.35-0.5 CPU-s.  The block calls the function it gets
    once they are built: they are frozen (:func:`gc.freeze`) and the collector runs again
    for what the job makes after; leaving the block unfreezes them.  Objects someone else
    froze are left as they are (nothing is frozen or unfrozen then)."""
    enabled, mine = gc.isenabled(), gc.get_freeze_count() == 0
    frozen = False

    def built() -> None:
        nonlocal frozen
        if mine and not frozen:
            gc.freeze()
            frozen = True
        if enabled:
            gc.enable()

    gc.disable()
    try:
        yield built
    finally:
        if frozen:
            gc.unfreeze()
        if enabled:
            gc.enable()


def scan_directory(root: str, sized: bool = True) -> list[FileSample]:
    """Every file below ``root`` (links to folders followed), grouped into samples by key,
    sorted by key.  Files whose name starts with ``.``, has no extension or a field
    starting with ``_`` are not sample members.  A folder that cannot be listed, a file
    that cannot be sized (it vanished, a broken link) and a link that leads back to a
    folder above it are refused in one line.

    ``sized=False`` (a plan that needs no sizes) spares a ``stat`` a file (0.4 of the
    scan's 0.9 s at 200,000 files): samples get ``size`` 0 and no ``sizes``, and the task
    that writes them reports their sizes (:func:`write_file_shard`); a link is still
    followed here, so that a broken one is refused before any shard is written."""
    if not os.path.isdir(root):
        raise HtoolsError(f"{root}: not a directory")
    top = os.path.abspath(root)
    samples: list[FileSample] = []
    _scan_folder(top if top != "/" else "", "", samples, {_identity(top): top}, sized)
    if not samples:
        raise HtoolsError(f"{root}: no files to upload (a member needs an extension, "
                          "like n01.jpg)")
    samples.sort(key=attrgetter("key"))
    return samples


def _scan_folder(path: str, prefix: str, samples: list[FileSample],
                 above: dict[tuple[int, int], str], sized: bool) -> None:
    """Add the samples of the folder ``path`` (keys starting with ``prefix``) and of the
    folders below it to ``samples``; ``above``: the folders it lies in, by identity.  The
    files of a sample share a folder (a key ends in the basename), so each folder's files
    are grouped on their own: sorted by name, a sample's files (``STEM.*``) lie side by
    side, in the order of their fields.  The folder is listed through a descriptor, so
    that each file's ``stat`` looks up one name, not the whole path."""
    names: list[str] = []  # of every entry that is not a folder
    sizes: dict[str, int] = {}  # of the member files sized here (all, or the links)
    folders = []
    try:
        fd = os.open(path or "/", os.O_RDONLY | os.O_DIRECTORY)
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir():  # a link to a folder is one
                            folders.append(entry.name)
                            continue
                    except OSError:
                        pass
                    name = entry.name
                    names.append(name)
                    if (sized or entry.is_symlink()) and (dot := name.find(".")) > 0 \
                            and name[dot + 1:dot + 2] not in ("", "_"):  # a member
                        try:
                            sizes[name] = entry.stat().st_size
                        except OSError as e:
                            raise _unreadable(f"{path}/{name}", e) from None
        finally:
            os.close(fd)
    except OSError as e:
        raise HtoolsError(f"cannot list {path or '/'}: {e.strerror or e}") from None
    names.sort()
    _group(names, path, prefix, samples, sizes if sized else None)
    for name in sorted(folders):
        full = f"{path}/{name}"
        ident = _identity(full)
        if ident in above:
            raise HtoolsError(f"{full}: a symlink loop (it leads back to {above[ident]}); "
                              "remove the link, or list the files to upload in a list file")
        _scan_folder(full, f"{prefix}{name}/", samples, {**above, ident: full}, sized)


def _group(names: list[str], path: str, prefix: str, samples: list[FileSample],
           sizes: dict[str, int] | None) -> None:
    """Add the samples of one folder's files ``names`` (sorted) to ``samples``, sized from
    ``sizes`` (by name) unless None.  Names that are hidden, have no extension or a field
    starting with ``_`` are not sample members."""
    make = tuple.__new__  # no NamedTuple.__new__ call
    member_size, append, base = tar.member_size, samples.append, f"{path}/"
    stem = key = None
    files: list[tuple[str, str]] = []
    got: list[int] = []
    total = 0
    for (s, _dot, field), name in zip([n.partition(".") for n in names], names):
        if not s or not field or field[0] == "_":
            continue  # hidden, no extension, or a private field
        if s != stem:
            if stem is not None:
                append(make(FileSample, (key, tuple(files), total, tuple(got))))
            stem, key, files, got, total = s, prefix + s, [], [], 0
        files.append((field, base + name))
        if sizes is not None:
            n = sizes[name]
            got.append(n)
            total += member_size(key, field, n)
    if stem is not None:
        append(make(FileSample, (key, tuple(files), total, tuple(got))))


def _identity(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as e:
        raise _unreadable(path, e) from None
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


def reported_sizes(samples: list[FileSample], by_key: dict[str, int]) -> list[int] | None:
    """The tar sizes of ``samples`` (scanned without them): as their tasks reported them
    (``by_key``), else from the files as they are now (a task that failed); None when a
    file is gone (that job's lineage is not recorded)."""
    get = by_key.get
    try:
        return [n if (n := get(s.key)) is not None
                else sample_size(s.key, [(f, os.path.getsize(p)) for f, p in s.files])
                for s in samples]
    except OSError:
        return None


def as_tuples(samples: list[FileSample]) -> list[tuple]:
    """``samples`` as the plain tuples a task's arguments carry: 100,000 of them pickle
    on the client and unpickle on a worker in 0.35 s, as FileSamples in 0.7 s (as
    dataclasses: 1.1 s)."""
    return [tuple(s) for s in samples]


def write_file_shard(output: str, samples: list[tuple], *, options: dict | None = None,
                     mtime: float | None = 0, index: bool = True) -> dict:
    """Task: write local files, grouped into samples (FileSample fields, as tuples), as
    one shard.  Samples scanned without sizes get them here: the result's
    ``extra["sizes"]`` holds each one's tar size, for the job's lineage."""
    unsized = bool(samples) and not samples[0][3]
    sizes: list[int] | None = [] if unsized else None
    with shard_task(f"{len(samples)} samples", output) as result:
        write_samples_shard(output, _file_samples(samples, result), result, options, mtime,
                            index, sizes)
    done = result.as_dict()
    if unsized and result.status == "ok":  # not through as_dict(), which would deep-copy
        done["extra"] = {"sizes": sizes}  # them (1 us a sample)
    return done


def _file_samples(samples: list[tuple], result: ShardResult) -> Iterator[dict]:
    """The samples of local files, each file read whole, inline: one ``os.open``, an
    ``os.read`` of its scanned size and one byte more (of ``CHUNK`` bytes and a second
    read that sees its end when the scan did not size it: a network file system may return
    fewer bytes than asked before the end) and ``os.close`` (a function call a file costs
    0.3 us of the 3 us it takes).  A file those reads do not end, one that changed size
    and one that cannot be opened go on to :func:`_read_local`, which reads the rest or
    says why not."""
    open_, read, close, rdonly = os.open, os.read, os.close, os.O_RDONLY
    for key, files, _size, sizes in samples:
        sample = {"__key__": key}
        n = 0
        for (field, path), size in zip(files, sizes or (-1,) * len(files)):
            try:
                fd = open_(path, rdonly)
            except OSError:
                data = _read_local(path, size)  # names the error
            else:
                try:
                    data = read(fd, min(size + 1, READ_MAX) if size >= 0 else CHUNK)
                    if size < 0:  # not sized by the scan: it ends where a read gives nothing
                        more = read(fd, CHUNK) if data else b""
                        if more:
                            data = _read_local(path, size, fd, data + more)
                    elif len(data) != size:  # it grew or shrank (or a short read)
                        data = _read_local(path, size, fd, data)
                except OSError as e:  # EIO, EISDIR (a folder since the scan), ...
                    raise _unreadable(path, e) from None
                finally:
                    close(fd)
            sample[field] = data
            n += len(data)
        result.bytes_in += n
        yield sample


def write_samples_shard(output: str, samples: Iterator[dict], result: ShardResult,
                        options: dict | None, mtime: float | None, index: bool = True,
                        sizes: list[int] | None = None) -> None:
    """Copy ``samples`` into the shard ``output``, counting (and hashing it for the shard
    index when ``index``; each sample's tar size appended to ``sizes`` when given); a
    failure leaves no output."""
    with write_shard(output, options, result, mtime=mtime, index=index) as w:
        for sample in samples:
            result.samples_read += 1
            n = w.write(sample)
            if sizes is not None:
                sizes.append(n)
            result.samples_mapped += 1
            result.samples_written += 1


def _unreadable(path: str, e: OSError) -> HtoolsError:
    """The error of a file that cannot be read (or statted): the file and why."""
    return HtoolsError(f"{path}: {e.strerror or e}")


def _read_local(path: str, size: int, fd: int | None = None, first: bytes = b"") -> bytes:
    """The bytes of the file ``path``, which had ``size`` bytes when it was scanned (-1:
    not sized); ``fd``: the file already open, ``first`` its bytes read so far.  A file
    whose size changed since is refused: the shard's planned size (``--maxsize``) would
    no longer hold.  A file not sized ends where a read returns nothing (a network file
    system may return fewer bytes than asked before the end)."""
    if fd is None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise _unreadable(path, e) from None
        try:
            return _read_local(path, size, fd)
        finally:
            os.close(fd)
    parts, n = [first], len(first)
    try:
        while size < 0 or n <= size:  # the rest, to the end (or past ``size``)
            more = os.read(fd, min(max(1 << 20, size + 1 - n), READ_MAX))
            if not more:
                break
            parts.append(more)
            n += len(more)
    except OSError as e:
        raise _unreadable(path, e) from None
    if size >= 0 and n != size:
        raise HtoolsError(f"{path}: the file changed while htupload ran ({size} bytes when "
                          f"listed, {'more' if n > size else n} now)")
    return parts[0] if len(parts) == 1 else b"".join(parts)
