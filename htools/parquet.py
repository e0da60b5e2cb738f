"""htextract --format parquet: the selected fields of every sample as a typed table.

One column per field: ``__key__`` (and other ``__`` names) as strings; a field whose
every present value parses as an integer as int64 (as float64 when they parse as
numbers but not all as 64-bit integers); else strings when every value is valid
UTF-8; else binary.  A sample without the field has a null there.

``-o meta.parquet`` gathers every row on the client, in shard order, and writes one
file; a pattern (``-o meta-@N.parquet``, N the number of input shards) has every task
write its own shard's file.  Files are written through :mod:`htools.storage`
(atomic, any protocol).  pyarrow is an optional extra: ``pip install 'htools[parquet]'``.
"""

from __future__ import annotations

import io
import re

from . import engine, preflight, shards, storage, tario
from .engine import RunOptions, Task
from .errors import HtoolsError, hide_credentials
from .streams import Counting
from .summary import JobSummary
from .task import shard_task

_INT = re.compile(rb"[+-]?[0-9]+")
_FLOAT = re.compile(rb"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(inf|infinity|nan)",
                    re.IGNORECASE)


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise HtoolsError("--format parquet needs pyarrow: pip install 'htools[parquet]'"
                          ) from None
    return pa, pq


def column(name: str, values: list):
    """One typed pyarrow array of a field's values (bytes, str or None)."""
    pa, _pq = _pyarrow()
    if name.startswith("__") or all(v is None or isinstance(v, str) for v in values):
        return pa.array([None if v is None else str(v) for v in values], pa.string())
    raw = [None if v is None else v.encode("utf-8", "surrogateescape") if isinstance(v, str)
           else bytes(v) for v in values]
    present = [v.strip() for v in raw if v is not None]
    if present and all(_INT.fullmatch(v) for v in present):
        ints = [None if v is None else int(v) for v in raw]
        if all(v is None or -(1 << 63) <= v < (1 << 63) for v in ints):
            return pa.array(ints, pa.int64())
    if present and all(_FLOAT.fullmatch(v) for v in present):
        return pa.array([None if v is None else float(v) for v in raw], pa.float64())
    try:
        return pa.array([None if v is None else v.decode("utf-8") for v in raw], pa.string())
    except UnicodeDecodeError:
        return pa.array(raw, pa.binary())


def table(names: list[str], rows: list[list]):
    pa, _pq = _pyarrow()
    return pa.table({n: column(n, [r[i] for r in rows]) for i, n in enumerate(names)})


def write(names: list[str], rows: list[list], url: str, options: dict | None) -> int:
    """Write the rows as one parquet file at ``url`` (atomic); returns its size."""
    _pa, pq = _pyarrow()
    buf = io.BytesIO()
    pq.write_table(table(names, rows), buf)
    data = buf.getvalue()
    with storage.open_write(url, options) as out:
        out.write(data)
    return len(data)


def parquet_shard(input: str, fields: tuple[str, ...], out: str | None,
                  options: dict | None) -> dict:
    """Task: the selected fields of one shard; written to ``out`` as parquet, or (without
    ``out``) returned as rows for the client to gather."""
    rows: list[list] = []
    with shard_task(input, out or "") as result:
        with storage.open_read(input, options) as raw:
            stream = tario.open_stream_reader(Counting(raw, result, "bytes_in"), input)
            for sample in tario.read_samples(stream, input):
                result.samples_read += 1
                rows.append([sample.get(f) for f in fields])
                result.samples_mapped += 1
                result.samples_written += 1
        if out:
            result.bytes_out = write(list(fields), rows, out, options)
    result.extra = {"rows": rows if out is None and result.status == "ok" else []}
    return result.as_dict()


def extract_parquet(inputs, fields: tuple[str, ...], out, opts: RunOptions) -> JobSummary:
    """``extract(..., format="parquet", out=PATH)``: see the module's docstring."""
    _pyarrow()
    if not isinstance(out, str) or not out or out == "-":
        raise HtoolsError("--format parquet needs -o FILE.parquet (one file) or a pattern "
                          "such as -o meta-@N.parquet (one file per input shard)")
    if not fields:
        raise HtoolsError("--format parquet needs at least one field (-f)")
    urls = shards.expand_all(inputs if isinstance(inputs, str) else list(inputs))
    outset = shards.OutputSet.parse(out)
    if outset.count is None:
        raise HtoolsError(f"{out!r} is open-ended: name one parquet file per input shard with "
                          f"@{len(urls)} (e.g. meta-@{len(urls)}.parquet)")
    single = list(outset.fixed) == [shards.absolute(out)]
    if not single and outset.count != len(urls):
        raise HtoolsError(f"{out!r} names {outset.count} parquet files but there are "
                          f"{len(urls)} input shards: one file per shard (@{len(urls)})")
    targets = list(outset.fixed)
    options = storage.resolve_options(opts.storage_options)
    kw = {"fields": tuple(fields), "options": options}
    if single:
        tasks = [Task(parquet_shard, {"input": u, "out": None, **kw}, input=u) for u in urls]
    else:
        tasks = [Task(parquet_shard, {"input": u, "out": t, **kw}, input=u, output=t)
                 for u, t in zip(urls, targets)]
    preflight.check(urls, targets[:1], opts.storage_options, write=not opts.dry_run)
    # a single file is refused before work starts when it exists (unless --overwrite)
    if single and engine.plan_outputs(targets, opts) and not opts.dry_run:
        summary = JobSummary("htextract", shards_total=len(urls), shards_skipped=len(urls))
        summary.notes.append(f"{hide_credentials(targets[0])} exists (--resume): skipped")
        return engine.finish(summary.finish(), opts)
    rows: dict[int, list] = {}

    def on_result(i: int, r: dict) -> None:
        rows[i] = r.pop("extra", {}).get("rows", [])

    summary = engine.run("htextract", tasks, opts, on_result=on_result, ordered=True,
                         check_outputs=not single)
    if single and not opts.dry_run:
        if summary.ok:
            gathered = [row for i in sorted(rows) for row in rows[i]]
            summary.bytes_out = write(list(fields), gathered, targets[0], options)
        else:
            summary.notes.append(f"{hide_credentials(targets[0])} not written: "
                                 f"{summary.shards_failed} shard(s) failed")
    return engine.finish(summary, opts)
