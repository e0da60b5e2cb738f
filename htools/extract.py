"""htextract: pull fields, field-name sets, or value counts out of every shard.

Each task renders its shard's rows (TSV or JSON lines) or counts its values;
the client writes rows in shard order as shards finish in order, holding at
most a small window of shards in memory.
"""

from __future__ import annotations

import base64
import json
import posixpath
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from htools import shards, storage
from htools.errors import HtoolsError, hide_credentials
from htools.extract_arrays import extract_with_arrays
from htools.extract_data import as_data as data_of
from htools.fields import check_present
from htools.naming import CONTROL_CHARS, TEXT_FIELDS
from htools.options import RunOptions
from htools.parquet import extract_parquet, gather, parquet_shard
from htools.parquet_schema import python_values
from htools.runtime import engine, preflight
from htools.runtime.engine import Task
from htools.runtime.shardio import read_shard
from htools.runtime.task import shard_task
from htools.scratch import default_scratch
from htools.selection import Selection, parse, prepared, selected
from htools.summary import JobSummary, ShardResult


@dataclass(frozen=True)
class ExtractSpec:
    """What to pull out of each sample."""

    fields: tuple[str, ...] = ("__key__",)
    field_names: bool = False  # -K: the set of field names of each sample
    count: int = 0  # --count N: the N most common values
    format: str = "tsv"  # tsv | jsonl
    binary: str = "length"  # length | base64
    to_dir: str | None = None  # --to-dir: write the selected fields as files


def render_value(value, binary: str, field: str = ""):
    """Text fields as text; other bytes as text only if they are printable UTF-8,
    else marked with their length, ``<binary: 2 bytes>`` (or as base64)."""
    if value is None or isinstance(value, str):
        return value
    raw = bytes(value)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and (field.rsplit(".", 1)[-1] in TEXT_FIELDS
                             or not CONTROL_CHARS.intersection(text)):
        return text
    if binary == "base64":
        return base64.b64encode(raw).decode("ascii")
    return f"<binary: {len(raw)} bytes>"


MISSING = "<missing>"  # --count: a value of a sample without the field ("" is an empty one)
# -o FILE: the format its suffix names (--format may only agree)
SUFFIX_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv",
                  ".txt": "tsv"}


def output_format(out, format: str | None) -> str:
    """The format rows go out in: ``format``, else the one ``-o``'s suffix names, else
    TSV; a suffix that names another format than ``format`` is refused."""
    path = out.split("?", 1)[0] if isinstance(out, str) and out != "-" else ""
    suffix = posixpath.splitext(path.rsplit("/", 1)[-1])[1].lower()
    by_suffix = SUFFIX_FORMATS.get(suffix)
    if format is None:
        return by_suffix or "tsv"
    if by_suffix and by_suffix != format:
        raise HtoolsError(f"-o {hide_credentials(out)}: a {suffix} file holds {by_suffix}, "
                          f"not --format {format}: drop --format or change the suffix")
    return format


def _tsv_cell(v, missing: str = "") -> str:
    if v is None:
        return missing
    s = str(v)
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def row_values(sample: dict, spec: ExtractSpec) -> list:
    if spec.field_names:
        names = sorted(k for k in sample if not k.startswith("__"))
        return [sample["__key__"], ",".join(names)]
    return [render_value(sample.get(f), spec.binary, f) for f in spec.fields]


def format_row(values: list, spec: ExtractSpec) -> str:
    if spec.format == "jsonl":
        names = ("__key__", "fields") if spec.field_names else spec.fields
        return json.dumps(dict(zip(names, values)), ensure_ascii=False)
    return "\t".join(_tsv_cell(v) for v in values)


def safe_member_path(key: str, field: str) -> str:
    """``key.field`` as a relative path that cannot escape the target directory."""
    name = f"{key}.{field}"
    norm = posixpath.normpath(name)
    if (name.startswith("/") or norm.startswith("../") or norm == ".." or "\\" in name
            or "/../" in f"/{name}/" or "\x00" in name):
        raise HtoolsError(f"refusing to write {name!r}: it would escape the target directory")
    return norm


def extract_shard(input: str, spec: ExtractSpec, *, options: dict | None = None,
                  select: Selection | None = None) -> dict:
    """Task: the rows (or value counts) of one shard (its samples that ``select``
    keeps), plus the usual counts."""
    rows: list[str] = []
    counts: Counter = Counter()
    seen: set[str] = set()
    with shard_task(input) as result:
        for sample in _samples(input, options, result, select):
            seen.update(sample)
            values = row_values(sample, spec)
            if spec.to_dir:
                _write_files(sample, spec, options, result)
            if spec.count:
                counts[tuple(v if not isinstance(v, list) else tuple(v) for v in values)] += 1
            elif not spec.to_dir:
                rows.append(format_row(values, spec))
            result.samples_mapped += 1
            result.samples_written += 1
    if result.status == "failed":
        rows, counts = [], Counter()
    result.extra = {"rows": rows, "counts": [[list(k), n] for k, n in counts.items()],
                    "seen": sorted(seen)}
    return result.as_dict()


def _samples(url: str, options, result: ShardResult,
             select: Selection | None = None) -> Iterator[dict]:
    with read_shard(url, options, result) as samples:
        for sample in selected(samples, select, result, url, options):
            result.samples_read += 1
            yield sample


def _write_files(sample: dict, spec: ExtractSpec, options, result: ShardResult) -> None:
    fields = [f for f in spec.fields if not f.startswith("__")] or \
        [f for f in sample if not f.startswith("__")]
    for f in fields:
        if f not in sample:
            continue
        rel = safe_member_path(sample["__key__"], f)
        with storage.open_write(storage.join(spec.to_dir, rel), options) as out:
            out.write(bytes(sample[f]) if not isinstance(sample[f], str) else sample[f].encode())
        result.bytes_out += len(sample[f])


def plan(inputs, spec: ExtractSpec, opts: RunOptions,
         select: Selection | None = None) -> list[Task]:
    if spec.format not in ("tsv", "jsonl"):
        raise HtoolsError(f"unknown format {spec.format!r}: use tsv, jsonl or parquet")
    if spec.binary not in ("length", "base64"):
        raise HtoolsError(f"unknown binary rendering {spec.binary!r}: use length or base64")
    kw = {"spec": spec, "options": storage.resolve_options(opts.storage_options),
          "select": select}
    return [Task(extract_shard, {"input": u, **kw}, input=u) for u in shards.expand_all(inputs)]


def extract(inputs, *, fields=("__key__",), field_names: bool = False, count: int = 0,
            format: str | None = None, binary: str = "length", to_dir: str | None = None,
            out: IO[str] | str | None = None, frame: bool | None = None,
            allow_missing: bool = False, arrays: bool = False, keep: str | None = None,
            drop: str | None = None, select_by: str | None = None,
            select_column: str | None = None, **options):
    """Extract fields of every sample of ``inputs``, in shard order.

    Without ``out`` the results come back as data, with the job summary as their
    ``.summary`` attribute: the rows as a pandas ``DataFrame`` (one column per field;
    ``frame=False``, or pandas missing: a list of dicts), or with ``count=N`` the N most
    common values as a ``DataFrame`` sorted by count (the fields' columns, then ``count``;
    ``frame=False``: a ``collections.Counter`` keyed by the value, or by the tuple of values
    with several fields).  The rows' values have the types a parquet file of them has
    (:mod:`htools.parquet_schema`): ``int`` when every value of the field is an integer,
    ``float`` when a number, ``str`` when text, else ``bytes``; None where a sample lacks
    the field.  Rows are held in memory: for big outputs give ``out``.

    With ``out`` (a text file object such as stdout, or a path or URL written atomically:
    complete or absent, refused when it exists unless ``overwrite``, skipped with
    ``resume``) the rows go there as TSV or JSON lines (the format ``format`` names, else
    the one ``out``'s suffix names: ``.jsonl``/``.json``, ``.tsv``/``.txt``,
    ``.parquet``; else TSV), a binary value as ``<binary: N bytes>`` (or base64 with
    ``binary="base64"``); with ``count=N`` the lines ``count<TAB>values``, ``<missing>``
    for a sample without the field.  The :class:`JobSummary` is returned, the counts also
    in ``summary.extra["counts"]`` as ``[[values, n], ...]``.  So does a call with
    ``to_dir`` (the files are the result) or ``dry_run`` (the plan is in ``summary.plan``).

    A field of ``fields`` that no sample of the job has (a typo) is refused with one
    line naming the fields the samples have, unless ``allow_missing``.

    ``format="parquet"`` with ``out`` a path writes the fields as a typed parquet table
    (``meta.parquet``: one file, rows in shard order; ``meta-@N.parquet``, or ``to_dir``
    for ``DIR/NAME.parquet`` of a shard ``NAME.tar``: one file per input shard, written by
    the tasks, every file typing each column alike) and returns the summary; see
    :mod:`htools.parquet`.

    ``arrays=True`` (without ``out``): each ``.npy`` field's values as numpy arrays, and
    the result's ``.arrays[FIELD]`` one 2-D array of them (see :mod:`htools.extract_arrays`).

    ``keep``/``drop``: a list (text, one value a line, or ``.parquet``) of the values
    (``select_by``: ``__key__``, a FIELD or FIELD:MEMBER) whose samples are the only
    ones extracted / are left out (see :mod:`htools.selection`); every output format
    takes it, and ``summary.extra["selection"]`` counts what it matched.
    """
    opts = RunOptions.of(options)
    select = parse(keep, drop, select_by, select_column, opts.storage_options)
    if isinstance(fields, str):
        fields = tuple(f for f in fields.split(",") if f)
    if arrays:
        return _with_arrays(inputs, tuple(fields), opts, binary, frame,
                            field_names or count or out is not None or to_dir
                            or format is not None or select is not None)
    format = output_format(out, format)
    if format == "parquet" and (field_names or count):
        raise HtoolsError("--format parquet writes fields (-f): not with -K or --count")
    spec = ExtractSpec(tuple(fields), field_names, count, format, binary, to_dir)
    with prepared(select, opts, lambda o: default_scratch(o, _beside(out, to_dir))) as job:
        result = _extract(inputs, spec, out, frame, allow_missing, job.selection, job.opts)
        job.finish(result if isinstance(result, JobSummary) else result.summary)
        return result


def _beside(out, to_dir: str | None) -> shards.OutputSet:
    """Where a job's scratch goes on a cluster elsewhere: beside ``out`` or in ``to_dir``
    (rows on a stream: beside the current folder)."""
    if to_dir:
        return shards.OutputSet.parse(storage.join(shards.absolute(to_dir), "rows"))
    if isinstance(out, str) and out not in ("", "-"):
        return shards.OutputSet.parse(shards.absolute(out))
    return shards.OutputSet.parse(shards.absolute("rows"))


def _extract(inputs, spec: ExtractSpec, out, frame: bool | None, allow_missing: bool,
             select: Selection | None, opts: RunOptions):
    """:func:`extract` with its selection built: the data, or the summary."""
    fields, count, field_names = spec.fields, spec.count, spec.field_names
    if spec.format == "parquet":
        return extract_parquet(inputs, fields, out if isinstance(out, str) else None,
                               opts, to_dir=spec.to_dir, allow_missing=allow_missing,
                               select=select)
    if out is None and not spec.to_dir and not field_names and not count:
        return _typed_rows(inputs, fields, opts, frame, allow_missing, select)
    as_data = out is None and not spec.to_dir
    spec = ExtractSpec(fields, field_names, count, "jsonl" if as_data else spec.format,
                       spec.binary, spec.to_dir)
    tasks = plan(inputs, spec, opts, select)
    if as_data:
        summary, top, rows = _run(tasks, spec, opts, None, allow_missing)
        summary = engine.finish(summary, opts)
        if opts.dry_run:
            return summary
        names = ["__key__", "fields"] if field_names else list(spec.fields)
        return data_of(names, [json.loads(r) for r in rows], top if count else None,
                        summary, frame)
    return _to_text(tasks, spec, out, opts, allow_missing)


def _to_text(tasks: list[Task], spec: ExtractSpec, out, opts: RunOptions,
             allow_missing: bool) -> JobSummary:
    """The rows (or counts) written to ``out``: a text stream, or a file or URL
    written atomically; returns the summary."""
    out = sys.stdout if out is None else out
    target = shards.absolute(out) if isinstance(out, str) and out != "-" else None
    if opts.resume and (target is None or spec.to_dir):
        raise HtoolsError("--resume goes with -o FILE (skipped when it exists); rows on "
                          "stdout or files of --to-dir are made again: drop --resume")
    if target is not None and shards.OutputSet.parse(out).fixed != (target,):
        raise HtoolsError(f"-o {hide_credentials(out)} names several files: rows go to one "
                          "file (--format parquet writes one per shard)")
    written = [target] if target else [storage.join(spec.to_dir, "x")] if spec.to_dir else []
    preflight.check([t.input for t in tasks], written, opts.storage_options,
                    write=not opts.dry_run)
    if target is not None and engine.plan_outputs([target], opts) and not opts.dry_run:
        summary = JobSummary("htextract", shards_total=len(tasks), shards_skipped=len(tasks))
        summary.notes.append(f"{hide_credentials(target)} exists (--resume): skipped")
        return engine.finish(summary.finish(), opts)
    if target is None or opts.dry_run:
        summary, _top, _rows = _run(tasks, spec, opts, out if target is None else None,
                                    allow_missing)
        return engine.finish(summary, opts)
    writer = storage.open_write(target, storage.resolve_options(opts.storage_options))
    try:
        summary, _top, _rows = _run(tasks, spec, opts, _Text(writer), allow_missing)
    except BaseException:
        writer.abort()
        raise
    if summary.ok:
        summary.bytes_out = writer.tell()
        writer.commit()
    else:
        writer.abort()
        summary.notes.append(f"{hide_credentials(target)} not written: "
                             f"{summary.shards_failed} shard(s) failed")
    return engine.finish(summary, opts)


class _Text:
    """Text written as UTF-8 onto a storage writer."""

    def __init__(self, writer):
        self.writer = writer

    def write(self, text: str) -> None:
        self.writer.write(text.encode("utf-8"))

    def flush(self) -> None:
        pass


def _run(tasks: list[Task], spec: ExtractSpec, opts: RunOptions, out,
         allow_missing: bool) -> tuple[JobSummary, list, list[str]]:
    """Run the tasks: rows written to ``out`` as they come in shard order (or, without
    ``out``, returned), the top counts written after; returns the summary (not yet
    finished), the top counts and the rows kept."""
    counts: Counter = Counter()
    seen: set[str] = set()
    collected: list[str] = []

    def on_result(_i: int, r: dict) -> None:
        extra = r.pop("extra", {})
        rows = extra.get("rows", [])
        if rows and out is None:
            collected.extend(rows)
        elif rows:
            out.write("\n".join(rows) + "\n")
            out.flush()
        for values, n in extra.get("counts", []):
            counts[tuple(tuple(v) if isinstance(v, list) else v for v in values)] += n
        seen.update(extra.get("seen", []))

    summary = engine.run("htextract", tasks, opts, on_result=on_result, ordered=True,
                         check_outputs=False)
    if not spec.field_names and summary.samples_read and not opts.dry_run:
        note = check_present(spec.fields, seen, allow_missing)
        summary.notes += [note] if note else []
    top = counts.most_common(spec.count) if spec.count else []
    if spec.count:
        if out is not None:
            for values, n in top:
                out.write(f"{n}\t" + "\t".join(_tsv_cell(v, MISSING) for v in values) + "\n")
        summary.extra["counts"] = [[list(v), n] for v, n in top]
    if out is not None:
        out.flush()
    return summary, top, collected


def _typed_rows(inputs, fields: tuple[str, ...], opts: RunOptions, frame: bool | None,
                allow_missing: bool, select: Selection | None = None):
    """``extract(inputs, fields=...)`` as data: every row, typed as parquet types it."""
    if not fields:
        raise HtoolsError("extract() needs at least one field")
    options = storage.resolve_options(opts.storage_options)
    tasks = [Task(parquet_shard, {"input": u, "fields": fields, "out": None,
                                  "options": options, "select": select}, input=u)
             for u in shards.expand_all(inputs)]
    preflight.check([t.input for t in tasks], [], opts.storage_options, write=False)
    rows, summary = gather(tasks, fields, opts, allow_missing)
    summary = engine.finish(summary, opts)
    if opts.dry_run:
        return summary
    columns = {f: python_values(f, [r[i] for r in rows]) for i, f in enumerate(fields)}
    return data_of(list(fields), columns, None, summary, frame)


def _with_arrays(inputs, fields: tuple[str, ...], opts: RunOptions, binary: str,
                 frame: bool | None, other: object):
    if other:
        raise HtoolsError("extract(arrays=True) returns rows as data: not with out=, to_dir=, "
                          "count=, field_names=, format=, keep= or drop=")
    rows, stacked, summary = extract_with_arrays(
        inputs, fields, opts, lambda value, name: render_value(value, binary, name))
    data = data_of(list(fields), rows, None, summary, frame)
    object.__setattr__(data, "arrays", stacked)  # on a DataFrame, without pandas' warning
    return data
