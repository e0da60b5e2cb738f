"""htupload: turn a local dataset into sharded tars at any supported URL.

Sources:

* a local **directory tree**: files are grouped into samples by the WebDataset
  key rule (``a/n01.jpg`` + ``a/n01.cls`` -> sample ``a/n01``), whatever order
  the directory lists them in;
* a **list file** (``@files:LIST``, or any existing local file that is not a tar):
  one local path per line, grouped the same way (keys are the paths as written);
* existing **tar shards** (any shard-set pattern): samples are re-sharded, in
  order, after a counting pre-pass that reads each input once.  ``--keep/--drop``
  (:mod:`htools.selection`) choose the samples in that pre-pass (it counts them, and
  outputs are balanced by the samples kept); the copy filters again without counting.

Outputs: ``@N`` (or any pattern naming N URLs) splits into exactly N shards
balanced by sample count; an open-ended numbered pattern (``out-%06d.tar``)
starts a new shard whenever ``--maxcount`` samples or ``--maxsize`` bytes would
be exceeded.  One Dask task writes each output shard, atomically.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from operator import itemgetter

from htools import lineage, lineage_record, shards, storage, tar
from htools.clusters.info import workers_elsewhere
from htools.errors import HtoolsError, hide_credentials
from htools.naming import TAR_SUFFIXES
from htools.options import RunOptions
from htools.runtime import engine, preflight
from htools.runtime.engine import Task
from htools.runtime.executors import LocalExecutor
from htools.runtime.forkpool import ForkPool
from htools.runtime.streams import Counting
from htools.runtime.task import shard_task
from htools.scratch import default_scratch
from htools.selection import Selection, parse, selection_lineage
from htools.summary import JobSummary
from htools.tar import compress
from htools.upload_files import (
    FileSample,
    as_tuples,
    collector_paused,
    reported_sizes,
    scan_directory,
    scan_list,
    write_file_shard,
    write_samples_shard,
)
from htools.upload_start import workers_meanwhile

CLIENT_WRITERS = 8  # shards the client writes at once when the workers cannot see the files


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, stop)`` of one input shard."""

    url: str
    start: int
    stop: int
    offset: int | None = None  # byte offset of sample ``start`` in an uncompressed tar


# -------------------------------------------------------------- tar input --

def count_shard(input: str, *, options: dict | None = None, select: Selection | None = None,
                max_errors: int = 0) -> dict:
    """Task (pre-pass): the tar size of every sample of one input shard (that ``select``
    keeps), and for an uncompressed tar the byte offset where each starts (so a copy
    task can range-read its samples instead of reading the shard from the beginning)."""
    from htools.selection.filter import select_items  # numpy: not for an upload of files

    sizes: list[int] = []
    offsets: list[int] = []
    with shard_task(input, max_errors=max_errors) as result:
        with storage.open_read(input, options) as raw:
            stream = tar.open_stream_reader(Counting(raw, result, "bytes_in"), input)
            field = select.field if select is not None else None
            counted = _counted(tar.iter_members(stream, input), input, field)
            for _stub, size, offset in select_items(counted, itemgetter(0), select, result,
                                                    input, options):
                sizes.append(size)
                offsets.append(offset)
        result.samples_read += len(sizes)
        result.samples_mapped = len(sizes)
    seekable = compress.compression_for(input) is None and storage.protocol(input) != "pipe"
    result.extra = {"sizes": sizes, "offsets": offsets if seekable else None}
    return result.as_dict()


def _counted(members, url: str, field: str | None) -> Iterator[tuple[dict, int, int]]:
    """(sample, tar size, offset) of each sample of ``members``; the sample holds its
    key and (only) ``field``, what a selection matches."""
    key, size, start, end = None, 0, 0, 0
    stub: dict = {}
    for name, data, hoff in members:
        k, f = tar.split_key(name)
        if k != key:
            if key is not None:
                yield stub, size, start
            key, size, start, stub = k, 0, end, {"__key__": k}
        if not f.startswith("_"):
            size += tar.member_size(k, f, len(data))
        if f == field:
            stub[f] = data
        end = hoff + 512 + -(-len(data) // 512) * 512
    if key is not None:
        yield stub, size, start


def write_tar_shard(output: str, segments: list[Segment], *, options: dict | None = None,
                    mtime: float | None = 0, index: bool = True,
                    select: Selection | None = None) -> dict:
    """Task: copy samples ``[start, stop)`` of each segment's input (numbered among
    those ``select`` keeps) into one shard."""
    with shard_task([s.url for s in segments], output) as result:
        write_samples_shard(output, _segment_samples(segments, options, result, select), result,
                     options, mtime, index)
    return result.as_dict()


def _segment_samples(segments: list[Segment], options, result,
                     select: Selection | None = None) -> Iterator[dict]:
    from htools.selection import selected

    for seg in segments:
        skip = seg.start if seg.offset is None else 0
        with storage.open_range(seg.url, seg.offset or 0, None, options) as raw:
            stream = tar.open_stream_reader(Counting(raw, result, "bytes_in"), seg.url)
            samples = selected(tar.read_samples(stream, seg.url), select, None, seg.url,
                               options)  # counted by the pre-pass
            for i, sample in enumerate(samples):
                if i >= seg.stop - seg.start + skip:
                    break
                if i >= skip:
                    yield sample


# -------------------------------------------------------------- planning --

def split_counts(sizes: list[int], n: int | None, maxcount: int | None,
                 maxsize: int | None) -> list[tuple[int, int]]:
    """Split items (with tar sizes) into ``[start, stop)`` ranges, one per output."""
    total = len(sizes)
    if n is not None:  # the exchange's cuts (in shards: its package costs 0.1 s to import)
        return shards.split(total, n, allow_empty=True)
    if not maxcount and not maxsize:
        raise HtoolsError("an open-ended output pattern needs --maxcount or --maxsize")
    if maxsize and maxsize < tar.archive_size(0):
        raise HtoolsError(f"--maxsize {maxsize} is less than {tar.archive_size(0)} bytes, the "
                          "least a tar file takes (one 10240-byte record)")
    bounds, start, count, size = [], 0, 0, 0  # size: of the members, as written
    for i, s in enumerate(sizes):
        if count and ((maxcount and count + 1 > maxcount)
                      or (maxsize and tar.archive_size(size + s) > maxsize)):
            bounds.append((start, i))
            start, count, size = i, 0, 0
        count += 1
        size += s
    if count or not bounds:
        bounds.append((start, total))
    return bounds


def source_kind(source: str) -> str:
    if source.startswith("@files:"):
        return "list"
    if os.path.isdir(source):
        return "dir"
    if os.path.isfile(source) and not source.endswith(TAR_SUFFIXES):
        return "list"
    return "tars"


def plan(source: str, outputs: str, opts: RunOptions, *, maxcount: int | None = None,
         maxsize: int | None = None, shuffle: bool = False, seed: int = 0,
         mtime: float | None = 0, select: Selection | None = None,
         counted: list[JobSummary] | None = None,
         scanned: list[FileSample] | None = None) -> list[Task]:
    """The copy tasks; with tar inputs the counting pre-pass runs first (its summary,
    with the samples the selection left out, appended to ``counted``); ``scanned``: a
    folder's or list's samples when :func:`scan` already listed them."""
    outset = shards.OutputSet.parse(outputs)
    n = outset.count
    if n is not None and (maxcount or maxsize):
        raise HtoolsError(f"{outputs!r} names exactly {n} outputs; use a numbered pattern "
                          "such as out-%06d.tar with --maxcount/--maxsize")
    options = storage.resolve_options(opts.storage_options)
    kind = source_kind(source)
    if kind == "tars":
        if shuffle:
            raise HtoolsError("--shuffle re-orders files of a directory or list; to shuffle "
                              "samples of existing tar shards use htshuffle")
        return _plan_tars(source, outset, maxcount, maxsize, opts, options, mtime, select,
                          counted)
    samples = list(scanned if scanned is not None else scan(source))
    if shuffle:
        random.Random(seed).shuffle(samples)
    bounds = split_counts([s.size for s in samples], n, maxcount, maxsize)
    outs = outset.urls(len(bounds))
    return [Task(write_file_shard, {"output": o, "samples": as_tuples(samples[a:b]),
                                    "options": options,
                                    "mtime": mtime, "index": opts.index},
                 input=f"{source} [{a}:{b}]", output=o)
            for o, (a, b) in zip(outs, bounds)]


def scan(source: str, sized: bool = True) -> list[FileSample]:
    """A folder's or a list file's samples, in key order; ``sized=False``: a folder's files
    without their sizes (:func:`~htools.upload_files.scan_directory`)."""
    if source_kind(source) == "list":
        return scan_list(source.removeprefix("@files:"))
    return scan_directory(source, sized)


def _plan_tars(source, outset, maxcount, maxsize, opts, options, mtime, select=None,
               counted: list[JobSummary] | None = None) -> list[Task]:
    inputs = shards.expand_all(source, opts.storage_options)
    sizes: dict[int, dict] = {}
    kw = {"options": options, "select": select, "max_errors": opts.max_errors}
    counts = engine.run("htupload-count",
                        [Task(count_shard, {"input": u, **kw}, input=u) for u in inputs],
                        opts.with_(dry_run=False, summary=None), check_outputs=False,
                        on_result=lambda i, r: sizes.__setitem__(i, r))
    if counted is not None:
        counted.append(counts)
    if not counts.ok:
        failed = counts.failures[0]
        raise HtoolsError(f"cannot read input {hide_credentials(str(failed['input']))}: "
                          f"{failed['error']}")
    flat: list[int] = []
    owners: list[tuple[str, int]] = []  # (input url, offset of its first sample in flat)
    for i, url in enumerate(inputs):
        owners.append((url, len(flat)))
        flat.extend(sizes[i]["extra"]["sizes"])
    bounds = split_counts(flat, outset.count, maxcount, maxsize)
    outs = outset.urls(len(bounds))
    tasks = []
    for o, (a, b) in zip(outs, bounds):
        segs = [_segment(url, a - first, b - first, sizes[i]["extra"])
                for i, (url, first) in enumerate(owners)
                if first < b and first + len(sizes[i]["extra"]["sizes"]) > a]
        tasks.append(Task(write_tar_shard, {"output": o, "segments": segs, "options": options,
                                            "mtime": mtime, "index": opts.index,
                                            "select": select},
                          input=[s.url for s in segs], output=o))
    return tasks


def _segment(url: str, start: int, stop: int, counted: dict) -> Segment:
    start, stop = max(start, 0), min(stop, len(counted["sizes"]))
    offsets = counted["offsets"]
    return Segment(url, start, stop, offsets[start] if offsets is not None else None)


def upload(source: str, outputs: str, *, maxcount: int | None = None,
           maxsize: int | None = None, shuffle: bool = False, seed: int = 0,
           mtime: float | None = 0, keep: str | None = None, drop: str | None = None,
           select_by: str | None = None, select_column: str | None = None,
           **options) -> JobSummary:
    """Shard a local directory, a list file of paths, or existing tar shards into
    ``outputs``; returns the job summary, prints nothing.  Tar sources share one
    cluster between the counting pass and the copy, and take ``keep``/``drop`` (a list
    of the values, ``select_by``, whose samples are kept/dropped: see
    :mod:`htools.selection`)."""
    opts = RunOptions.of(options)
    kw = {"maxcount": maxcount, "maxsize": maxsize, "shuffle": shuffle, "seed": seed,
          "mtime": mtime}
    outset = shards.OutputSet.parse(outputs)
    files = source_kind(source) != "tars"
    if files and (keep is not None or drop is not None):
        raise HtoolsError("--keep/--drop choose samples of tar shards: not of a directory "
                          "or a list of files (list the files you want instead)")
    select = parse(keep, drop, select_by, select_column, opts.storage_options)
    ins = [] if files else shards.expand_all(source, opts.storage_options)
    preflight.check(ins, [outset.first()], opts.storage_options, write=not opts.dry_run)
    made = None if files else _lineage(outset, {**kw, **selection_lineage(select)}, ins)
    replacing = lineage_record.check_lineage(outset, made, opts)  # tars: before counting
    if files:
        with collector_paused() as built:
            return _upload_files(source, outputs, opts, outset, kw, built)
    if opts.dry_run:
        tasks = plan(source, outputs, opts, **kw)
        summary = engine.run("htupload", tasks, opts)
        return lineage_record.finish(summary, opts, outset, [t.output for t in tasks], made)
    from htools.selection import prepared

    with prepared(select, opts, lambda o: default_scratch(o, outset)) as job, \
            engine.cluster(job.opts) as client:
        copy = job.opts.with_(client=client)
        counted: list[JobSummary] = []
        tasks = plan(source, outputs, copy, select=job.selection, counted=counted, **kw)
        summary = engine.run("htupload", tasks, copy.with_(summary=None), on_start=lambda kept:
                             lineage_record.start_record(outset, made, copy, replacing, kept))
        for counts in counted:  # what the selection left out (or could not read)
            summary.samples_read += counts.samples_dropped + counts.samples_failed
            summary.samples_dropped += counts.samples_dropped
            summary.samples_failed += counts.samples_failed
            summary.sample_errors += counts.sample_errors
            summary.errors = counts.errors + summary.errors
        summary = lineage_record.finish(summary, copy.with_(summary=None), outset,
                                    [t.output for t in tasks], made)
        return job.finish(summary)


def _upload_files(source: str, outputs: str, opts: RunOptions, outset: shards.OutputSet,
                  kw: dict, built: Callable[[], None] = lambda: None) -> JobSummary:
    """htupload of a folder or a list, its embedded cluster started while the files are
    scanned.  A job that needs no sizes before its tasks run (no ``--maxsize`` split, no
    ``--resume``/``--overwrite`` lineage check) scans a folder without a ``stat`` a file:
    its tasks report the sizes, and the lineage is made from them at the end.  ``built``
    is called once the scan's and the plan's objects are made (:func:`collector_paused`)."""
    sized = bool(kw["maxsize"] or opts.resume or opts.overwrite)
    by_key: dict[str, int] = {}  # the tar size of each sample, as its task reported it

    def reported(i: int, result: dict) -> None:  # while the other tasks run
        sizes = result.get("extra", {}).get("sizes")
        if sizes is not None:
            by_key.update(zip([s[0] for s in tasks[i].kwargs["samples"]], sizes))

    with workers_meanwhile(opts, outset.first()) as ready:
        scanned = scan(source, sized)
        unsized = not scanned[0].sizes  # a list's files are sized all the same
        made = None if unsized else _lineage(outset, kw, samples=scanned)
        replacing = lineage_record.check_lineage(outset, made, opts)
        tasks = plan(source, outputs, opts, scanned=scanned, **kw)
        paths = _lineage_paths(scanned) if unsized and not opts.dry_run else None  # cluster starting
        start = lineage.sized_later(_lineage(outset, kw), paths) if paths is not None else made
        built()
        running, pool = ready()
        summary = _run_files(tasks, running, reported if unsized else None,
                             lambda kept: lineage_record.start_record(outset, start, opts, replacing,
                                                                 kept), pool)
    if paths is not None:
        sizes = reported_sizes(scanned, by_key)
        made = _lineage(outset, kw, paths, sizes=sizes) if sizes is not None else None
    return lineage_record.finish(summary, opts, outset, [t.output for t in tasks], made)


def _lineage_paths(samples: list[FileSample]) -> list[str]:
    """The lineage's entry of each sample of local files: its paths."""
    return ["\t".join([p for _f, p in s.files]) for s in samples]


def _lineage(outset: shards.OutputSet, kw: dict, inputs: list[str] = (),
             samples: list[FileSample] = (), sizes: list[int] | None = None) -> dict:
    """htupload's lineage (:mod:`htools.lineage`): tar inputs by URL; local files (a
    folder or a list) by their paths and sizes as scanned (in key order: --shuffle's
    order is the seed's, recorded), one entry per sample: given as ``samples``, or as
    their :func:`_lineage_paths` and tar ``sizes``; with the count of outputs ``outset``
    fixes (:func:`htools.lineage.counted`)."""
    if samples:
        inputs, sizes = _lineage_paths(samples), [s.size for s in samples]
    made = lineage.make("htupload", inputs=list(inputs), outputs=outset.pattern, sizes=sizes,
                        options={**kw, "seed": kw["seed"] if kw["shuffle"] else None})
    return lineage.counted(made, outset.count)


# ------------------------------------------------------ from the client --

def _run_files(tasks: list[Task], opts: RunOptions,
               on_result: Callable[[int, dict], None] | None = None,
               on_start: Callable[[int], Callable[[], None] | None] | None = None,
               pool: ForkPool | None = None) -> JobSummary:
    """Write the shards of local files: by the workers (of ``pool``, when given), or by
    this process when the workers of a cluster elsewhere cannot see the files (or a local
    output folder)."""
    run = partial(engine.run, on_result=on_result, on_start=on_start, executor=pool)
    if opts.dry_run or not tasks or not workers_elsewhere(opts):
        return run("htupload", tasks, opts)
    first = next((FileSample(*t.kwargs["samples"][0]).files[0][1] for t in tasks
                  if t.kwargs["samples"]), None)
    with engine.cluster(opts) as client:
        hidden = preflight.unseen(client, [first], [t.output for t in tasks])
        if not hidden:
            return run("htupload", tasks, opts.with_(client=client))
    if not opts.quiet:
        print(f"htools: the workers cannot see {hidden[0]}: this machine reads the files "
              f"and writes the {len(tasks)} shards itself", file=sys.stderr, flush=True)
    return write_here(tasks, opts, on_result=on_result, on_start=on_start)


def write_here(tasks: list[Task], opts: RunOptions, writers: int = CLIENT_WRITERS,
               on_result: Callable[[int, dict], None] | None = None,
               on_start: Callable[[int], Callable[[], None] | None] | None = None
               ) -> JobSummary:
    """Run upload tasks in this process, ``writers`` shards at a time (each holds one
    sample in memory), through the engine's run loop: the same resume/overwrite,
    retries of transient faults (and their backoff), progress and summary as on workers."""
    return engine.run("htupload", tasks, opts, on_result=on_result, on_start=on_start,
                      executor=LocalExecutor(min(writers, len(tasks)), "htupload"))
