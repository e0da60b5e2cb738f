"""The column types of ``htextract --format parquet``, and one schema for a whole job.

Each field has a *kind*, ordered ``null < int < float < string < binary``: ``null``
when no row has a value, ``int`` when every value parses as a 64-bit integer,
``float`` when every value parses as a number, ``string`` when every value is UTF-8,
else ``binary``.  ``__`` fields (``__key__``, ``__url__``) are strings.  A kind is
written as int64, float64, string (``null`` too) or binary.

Per-shard files infer their kinds alone; the job's kind of a field is the greatest
of its shards' kinds (:func:`merge`), and a file whose types differ is written again
from its input with those kinds forced (:func:`column` with ``kind``), from the
values' original text: ``007`` forced to string stays ``007``.
"""

from __future__ import annotations

import re

from htools import parquet_arrays as arrays
from htools import storage
from htools.errors import HtoolsError

KINDS = ("null", "int", "float", "string", "binary")

_INT = re.compile(rb"[+-]?[0-9]+")
_FLOAT = re.compile(rb"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(inf|infinity|nan)",
                    re.IGNORECASE)
_INT64 = (-(1 << 63), 1 << 63)
FOOTER_READ = 64 << 10  # the end of a parquet file read at once: its footer, mostly


def pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise HtoolsError("--format parquet needs pyarrow: pip install 'htools-wds[parquet]'"
                          ) from None
    return pa, pq


def arrow_type(kind: str):
    pa, _pq = pyarrow()
    if arrays.is_array_kind(kind):
        return arrays.arrow_type(kind)
    return {"int": pa.int64(), "float": pa.float64(), "binary": pa.binary()}.get(kind,
                                                                                 pa.string())


def type_name(kind: str) -> str:
    """How a kind shows in the summary: the arrow type it is written as (``null``: no
    values)."""
    return "null" if kind == "null" else str(arrow_type(kind))


def _raw(values: list) -> list[bytes | None]:
    return [None if v is None else v.encode("utf-8", "surrogateescape") if isinstance(v, str)
            else bytes(v) for v in values]


def infer(name: str, values: list) -> str:
    """The kind of a field's values (bytes, str or None) in the rows at hand."""
    if all(v is None for v in values):
        return "null"
    if arrays.is_array_field(name) and (kind := arrays.infer(values)):
        return kind
    if name.startswith("__") or all(v is None or isinstance(v, str) for v in values):
        return "string"
    present = [v.strip() for v in _raw(values) if v is not None]
    if all(_INT.fullmatch(v) for v in present) \
            and all(_INT64[0] <= int(v) < _INT64[1] for v in present):
        return "int"
    if all(_FLOAT.fullmatch(v) for v in present):
        return "float"
    try:
        for v in present:
            v.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    return "string"


def column(name: str, values: list, kind: str | None = None):
    """One typed pyarrow array of a field's values (bytes, str or None): of the kind
    inferred from them, or of ``kind`` (an error if a value does not fit it)."""
    pa, _pq = pyarrow()
    kind = kind or infer(name, values)
    if arrays.is_array_kind(kind):
        out = arrays.column(values, kind)
        if out is None:
            raise _unfit(name, kind)
        return out
    return pa.array(python_values(name, values, kind), arrow_type(kind))


def python_values(name: str, values: list, kind: str | None = None) -> list:
    """A field's values (bytes, str or None) as the Python values of their kind (the
    inferred one, or ``kind``): ``int``, ``float``, ``str`` or ``bytes``, None where
    absent; what a parquet column of them reads back as (no pyarrow needed).  A ``.npy``
    array field stays bytes here (``extract(arrays=True)`` decodes it)."""
    kind = kind or infer(name, values)
    if arrays.is_array_kind(kind):
        return _raw(values)
    if kind in ("null", "string"):
        try:
            out = [v if v is None or isinstance(v, str) else bytes(v).decode("utf-8")
                   for v in values]
        except UnicodeDecodeError:
            raise _unfit(name, kind) from None
        if kind == "null" and any(v is not None for v in out):
            raise _unfit(name, kind)
        return out
    raw = _raw(values)
    if kind == "binary":
        return raw
    pattern, convert = (_INT, int) if kind == "int" else (_FLOAT, float)
    if not all(v is None or pattern.fullmatch(v.strip()) for v in raw):
        raise _unfit(name, kind)
    out = [None if v is None else convert(v) for v in raw]
    if kind == "int" and not all(v is None or _INT64[0] <= v < _INT64[1] for v in out):
        raise _unfit(name, kind)
    return out


def _unfit(name: str, kind: str) -> HtoolsError:
    return HtoolsError(f"field {name!r}: a value is not {type_name(kind)} this time, as "
                       "every value was when the job first read the shards (did it change?)")


def table(names: list[str], rows: list[list], kinds: dict[str, str] | None = None):
    """The rows as a table, one column per name in order; returns it and its kinds."""
    pa, _pq = pyarrow()
    found = {n: (kinds or {}).get(n) or infer(n, [r[i] for r in rows])
             for i, n in enumerate(names)}
    return pa.table({n: column(n, [r[i] for r in rows], found[n])
                     for i, n in enumerate(names)}), found


def merge(per_file: list[dict[str, str]], names: list[str]) -> dict[str, str]:
    """The job's kind of every field: the greatest of the files' kinds (array kinds:
    :func:`htools.parquet_arrays.merge`)."""
    job = {}
    for n in names:
        found = [k.get(n, "null") for k in per_file]
        if any(arrays.is_array_kind(k) for k in found):
            kind = "null"
            for k in found:
                kind = arrays.merge(kind, k) or max(kind, k, key=KINDS.index)
            job[n] = kind
        else:
            job[n] = max(found, key=KINDS.index, default="null")
    return job


def differs(file_kinds: dict[str, str] | None, job: dict[str, str]) -> list[str]:
    """The fields a file types otherwise than the job (all when its kinds are unknown)."""
    if file_kinds is None:
        return list(job)
    return [n for n, k in job.items() if arrow_type(file_kinds.get(n, "null")) != arrow_type(k)]


def file_kinds(url: str, names: list[str], options: dict | None) -> dict[str, str] | None:
    """The kinds of an existing parquet file, from its footer alone (read by range);
    None when it is not readable as parquet or has other columns than ``names``."""
    pa, pq = pyarrow()
    try:
        size = storage.size(url, options)
        tail = storage.read_range(url, max(0, size - FOOTER_READ), size, options)
        if len(tail) < 12 or tail[-4:] != b"PAR1":
            return None
        length = int.from_bytes(tail[-8:-4], "little")
        if length + 8 > len(tail):  # a footer bigger than the first read
            tail = storage.read_range(url, max(0, size - 8 - length), size, options)
        meta = pq.read_metadata(pa.BufferReader(b"PAR1" + tail[-(length + 8):]))
    except (HtoolsError, OSError, ValueError):  # pyarrow's errors are OSError/ValueError
        return None
    schema = meta.schema.to_arrow_schema()
    if schema.names != list(names):
        return None
    by_type = {pa.int64(): "int", pa.float64(): "float", pa.string(): "string",
               pa.large_string(): "string", pa.binary(): "binary", pa.null(): "null"}
    kinds = {}
    for j, f in enumerate(schema):
        kind = by_type.get(f.type) or arrays.kind_of(f.type)
        if kind is None:
            return None
        if kind == "string" and _all_null(meta, j):
            kind = "null"
        kinds[f.name] = kind
    return kinds


def _all_null(meta, j: int) -> bool:
    """Whether column ``j`` has no value in any row (by the row groups' statistics)."""
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        stats = group.column(j).statistics
        if group.num_rows and (stats is None or not stats.has_null_count
                               or stats.null_count != group.num_rows):
            return False
    return True


def reasons(rewritten: dict[int, dict[str, str] | None], job: dict[str, str]) -> list[str]:
    """Why files (their kinds, None when unknown) were rewritten with the ``job``'s kinds:
    ``["cls int64 -> string, tag null -> int64"]``."""
    changes: dict[str, set[str]] = {}
    unknown = 0
    for kinds in rewritten.values():
        unknown += kinds is None
        for n in differs(kinds, job) if kinds is not None else ():
            changes.setdefault(n, set()).add(type_name(kinds[n]))
    why = [", ".join(f"{n} {'/'.join(sorted(changes[n]))} -> {type_name(job[n])}"
                     for n in job if n in changes)] if changes else []  # in -f order
    return why + ([f"{unknown} unreadable or with other columns"] if unknown else [])
