"""Array fields (``emb.npy``: a vector per sample) as typed list columns, for
``htextract --format parquet`` and the Python API's ``extract(arrays=True)``.

A field whose name ends in ``.npy`` and whose every present value is a 1-D numeric
``.npy`` array (read with ``allow_pickle=False``) gets the kind ``array:TYPE:N``: a
``fixed_size_list<TYPE>[N]`` column when every row has N values, else (``N == -1``) a
``list<TYPE>``.  TYPE is ``float32`` (float16 and float32 arrays), ``float64`` or
``int64`` (integers and booleans).  Such a column reads into a 2-D array with pyarrow
(``column.combine_chunks().flatten()``, reshaped), pandas (``np.stack``) or DuckDB
(``FLOAT[N]``), the hand-off to a nearest-neighbour index.  Anything else in such a
field (not ``.npy``, 2-D, strings, objects) leaves it to the usual kinds (binary).

Across the files of a job, two array kinds merge to the wider type and, when their
lengths differ, a variable length; an array kind and ``null`` give the array kind; an
array kind and any other kind give ``binary`` (the raw ``.npy`` bytes).
"""

from __future__ import annotations

import io

PREFIX = "array:"
_TYPES = ("int64", "float32", "float64")  # narrow to wide


def is_array_field(name: str) -> bool:
    return name.lower().endswith(".npy") and not name.startswith("__")


def is_array_kind(kind: str) -> bool:
    return kind.startswith(PREFIX)


def _parse(kind: str) -> tuple[str, int]:
    _p, dtype, n = kind.split(":")
    return dtype, int(n)


def decode(value) -> object | None:
    """A 1-D numeric numpy array from ``.npy`` bytes, or None when it is not one."""
    import numpy as np

    try:
        a = np.load(io.BytesIO(bytes(value)), allow_pickle=False)
    except (ValueError, OSError, EOFError, TypeError):
        return None
    if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind not in "biuf":
        return None
    return a


def _type_of(a) -> str:
    if a.dtype.kind == "f":
        return "float64" if a.dtype.itemsize > 4 else "float32"
    return "int64"


def infer(values: list) -> str | None:
    """The array kind of a field's values (None if some present value is not an array)."""
    dtypes, lengths = set(), set()
    for v in values:
        if v is None:
            continue
        a = decode(v)
        if a is None:
            return None
        dtypes.add(_type_of(a))
        lengths.add(len(a))
    if not dtypes:
        return None
    dtype = max(dtypes, key=_TYPES.index)
    return f"{PREFIX}{dtype}:{lengths.pop() if len(lengths) == 1 else -1}"


def arrow_type(kind: str):
    import pyarrow as pa

    dtype, n = _parse(kind)
    item = {"int64": pa.int64(), "float32": pa.float32(), "float64": pa.float64()}[dtype]
    return pa.list_(item, n) if n >= 0 else pa.list_(item)


def column(values: list, kind: str):
    """The values as a typed list column of ``kind`` (None when a value does not fit)."""
    import numpy as np
    import pyarrow as pa

    dtype, n = _parse(kind)
    out = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        a = decode(v)
        if a is None or (n >= 0 and len(a) != n) or _TYPES.index(_type_of(a)) > \
                _TYPES.index(dtype):
            return None
        out.append(a.astype(np.dtype(dtype), copy=False))
    return pa.array(out, arrow_type(kind))


def merge(a: str, b: str) -> str | None:
    """Two kinds of one field over a job, when at least one is an array kind (else None)."""
    if not (is_array_kind(a) or is_array_kind(b)):
        return None
    if a == "null" or a == b:
        return b
    if b == "null":
        return a
    if not (is_array_kind(a) and is_array_kind(b)):
        return "binary"
    (ta, na), (tb, nb) = _parse(a), _parse(b)
    dtype = max(ta, tb, key=_TYPES.index)
    return f"{PREFIX}{dtype}:{na if na == nb else -1}"


def kind_of(arrow) -> str | None:
    """The array kind written as the arrow type ``arrow`` (a parquet file's footer)."""
    import pyarrow as pa

    if not (pa.types.is_list(arrow) or pa.types.is_fixed_size_list(arrow)):
        return None
    names = {pa.int64(): "int64", pa.float32(): "float32", pa.float64(): "float64"}
    dtype = names.get(arrow.value_type)
    if dtype is None:
        return None
    n = arrow.list_size if pa.types.is_fixed_size_list(arrow) else -1
    return f"{PREFIX}{dtype}:{n}"


def stack(values: list):
    """Rows of ``.npy`` bytes as one 2-D numpy array (every row one length), else a list
    of 1-D arrays (None where a row has no value or not an array)."""
    import numpy as np

    arrays = [None if v is None else decode(v) for v in values]
    if arrays and all(a is not None for a in arrays) and len({len(a) for a in arrays}) == 1:
        return np.stack(arrays)
    return arrays
