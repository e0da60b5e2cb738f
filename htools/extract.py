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
from htools.errors import HtoolsError
from htools.options import RunOptions
from htools.runtime import engine, preflight
from htools.runtime.engine import Task
from htools.runtime.shardio import read_shard
from htools.runtime.task import shard_task
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


# Fields that hold text by WebDataset convention (the last extension decides).
TEXT_FIELDS = {"txt", "text", "cls", "cls2", "index", "inx", "id", "json", "jsn", "jsonl",
               "tsv", "csv", "html", "xml", "yaml", "yml", "key", "url", "md", "label"}
_CONTROL = {chr(c) for c in range(32)} - {"\t", "\n", "\r"}


def render_value(value, binary: str, field: str = ""):
    """Text fields as text; other bytes as text only if they are printable UTF-8,
    else as their length (or base64)."""
    if value is None or isinstance(value, str):
        return value
    raw = bytes(value)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and (field.rsplit(".", 1)[-1] in TEXT_FIELDS
                             or not _CONTROL.intersection(text)):
        return text
    return base64.b64encode(raw).decode("ascii") if binary == "base64" else len(raw)


def _tsv_cell(v) -> str:
    if v is None:
        return ""
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


def extract_shard(input: str, spec: ExtractSpec, *, options: dict | None = None) -> dict:
    """Task: the rows (or value counts) of one shard, plus the usual counts."""
    rows: list[str] = []
    counts: Counter = Counter()
    with shard_task(input) as result:
        for sample in _samples(input, options, result):
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
    result.extra = {"rows": rows, "counts": [[list(k), n] for k, n in counts.items()]}
    return result.as_dict()


def _samples(url: str, options, result: ShardResult) -> Iterator[dict]:
    with read_shard(url, options, result) as samples:
        for sample in samples:
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


def plan(inputs, spec: ExtractSpec, opts: RunOptions) -> list[Task]:
    if spec.format not in ("tsv", "jsonl"):
        raise HtoolsError(f"unknown format {spec.format!r}: use tsv, jsonl or parquet")
    if spec.binary not in ("length", "base64"):
        raise HtoolsError(f"unknown binary rendering {spec.binary!r}: use length or base64")
    kw = {"spec": spec, "options": storage.resolve_options(opts.storage_options)}
    return [Task(extract_shard, {"input": u, **kw}, input=u) for u in shards.expand_all(inputs)]


def extract(inputs, *, fields=("__key__",), field_names: bool = False, count: int = 0,
            format: str = "tsv", binary: str = "length", to_dir: str | None = None,
            out: IO[str] | str | None = None, frame: bool | None = None,
            arrays: bool = False, **options):
    """Extract fields of every sample of ``inputs``, in shard order.

    Without ``out`` the results come back as data, with the job summary as their
    ``.summary`` attribute: the rows as a pandas ``DataFrame`` (one column per field;
    ``frame=False``, or pandas missing: a list of dicts), or with ``count=N`` the N most
    common values as a ``DataFrame`` sorted by count (the fields' columns, then ``count``;
    ``frame=False``: a ``collections.Counter`` keyed by the value, or by the tuple of values
    with several fields).  Text fields are ``str``, other bytes their length (or base64
    with ``binary="base64"``).  Rows are held in memory: for big outputs give ``out``.

    With ``out`` (a text file; the CLI passes stdout) the rows go there as TSV or JSON
    lines as shards finish, with ``count=N`` the lines ``count<TAB>values``, and the
    :class:`JobSummary` is returned, the counts also in ``summary.extra["counts"]`` as
    ``[[values, n], ...]``.  So does a call with ``to_dir`` (the files are the result)
    or ``dry_run`` (the plan is in ``summary.plan``).

    ``format="parquet"`` with ``out`` a path writes the fields as a typed parquet table
    (``meta.parquet``: one file, rows in shard order; ``meta-@N.parquet``, or ``to_dir``
    for ``DIR/NAME.parquet`` of a shard ``NAME.tar``: one file per input shard, written by
    the tasks, every file typing each column alike) and returns the summary; see
    :mod:`htools.parquet`.

    ``arrays=True`` (without ``out``): each ``.npy`` field's values as numpy arrays, and
    the result's ``.arrays[FIELD]`` one 2-D array of them (see :mod:`htools.extract_arrays`).
    """
    opts = RunOptions.of(options)
    if isinstance(fields, str):
        fields = tuple(f for f in fields.split(",") if f)
    if arrays:
        return _with_arrays(inputs, tuple(fields), opts, binary, frame,
                            field_names or count or out is not None or to_dir
                            or format != "tsv")
    if format == "parquet":
        if field_names or count:
            raise HtoolsError("--format parquet writes fields (-f): not with -K or --count")
        from htools.parquet import extract_parquet

        return extract_parquet(inputs, tuple(fields), out, opts, to_dir=to_dir)
    as_data = out is None and not to_dir
    if as_data:
        format = "jsonl"  # parsed back into values below
    spec = ExtractSpec(tuple(fields), field_names, count, format, binary, to_dir)
    out = out or (None if as_data else sys.stdout)
    tasks = plan(inputs, spec, opts)
    preflight.check([t.input for t in tasks], [storage.join(to_dir, "x")] if to_dir else [],
                    opts.storage_options, write=not opts.dry_run)
    counts: Counter = Counter()
    collected: list[dict] = []

    def on_result(_i: int, r: dict) -> None:
        rows = r.get("extra", {}).get("rows", [])
        if rows and as_data:
            collected.extend(json.loads(row) for row in rows)
        elif rows:
            out.write("\n".join(rows) + "\n")
            out.flush()
        for values, n in r.get("extra", {}).get("counts", []):
            counts[tuple(tuple(v) if isinstance(v, list) else v for v in values)] += n
        r.pop("extra", None)

    summary = engine.run("htextract", tasks, opts, on_result=on_result, ordered=True,
                         check_outputs=False)
    top = counts.most_common(spec.count) if spec.count else []
    if spec.count:
        if not as_data:
            for values, n in top:
                out.write(f"{n}\t" + "\t".join(_tsv_cell(v) for v in values) + "\n")
        summary.extra["counts"] = [[list(v), n] for v, n in top]
    if not as_data:
        out.flush()
    summary = engine.finish(summary, opts)
    if not as_data or opts.dry_run:
        return summary
    names = ["__key__", "fields"] if field_names else list(spec.fields)
    return _as_data(names, collected, top if spec.count else None, summary, frame)


def _with_arrays(inputs, fields: tuple[str, ...], opts: RunOptions, binary: str,
                 frame: bool | None, other: object):
    if other:
        raise HtoolsError("extract(arrays=True) returns rows as data: not with out=, to_dir=, "
                          "count=, field_names= or format=")
    from htools.extract_arrays import extract_with_arrays

    return extract_with_arrays(inputs, fields, opts, binary, frame)


class Rows(list):
    """``extract``'s rows as a list of dicts (no pandas); the job summary is ``.summary``."""

    summary: JobSummary


class Counts(Counter):
    """``extract``'s value counts (no pandas); the job summary is ``.summary``."""

    summary: JobSummary


def _as_data(names: list[str], rows: list[dict], top: list | None, summary: JobSummary,
             frame: bool | None):
    pd = None
    if frame is not False:
        try:
            import pandas as pd
        except ImportError:
            if frame:
                raise HtoolsError("extract(frame=True) needs pandas: pip install pandas") from None
    if top is not None:
        if pd is not None:
            data = pd.DataFrame([[*values, n] for values, n in top], columns=[*names, "count"])
        else:
            data = Counts({values[0] if len(values) == 1 else values: n for values, n in top})
    elif pd is not None:
        data = pd.DataFrame(rows, columns=names)
    else:
        data = Rows(rows)
    data.summary = summary  # a plain instance attribute, also on a DataFrame
    return data
