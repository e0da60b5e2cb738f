"""``extract(..., arrays=True)``: the Python API's rows with each ``.npy`` field as numpy
arrays, and every such field whose rows all hold one length as one 2-D array
(``data.arrays["emb.npy"]``, shape ``(rows, length)``): embeddings straight into a
nearest-neighbour index.  Other fields come back as :func:`htools.extract.extract`
gives them (text as ``str``, other bytes as their length, or base64).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from htools import shards, storage
from htools.options import RunOptions
from htools.parquet import parquet_shard
from htools.parquet_arrays import decode, is_array_field, stack
from htools.runtime import engine, preflight
from htools.runtime.engine import Task
from htools.summary import JobSummary


def extract_with_arrays(inputs, fields: tuple[str, ...], opts: RunOptions,
                        render: Callable[[Any, str], Any]
                        ) -> tuple[list[dict], dict[str, Any], JobSummary]:
    """Rows in shard order (each ``.npy`` field decoded to a numpy array, others through
    ``render(value, field)``), each stackable array field as one 2-D array, the summary."""
    urls = shards.expand_all(inputs if isinstance(inputs, str) else list(inputs),
                             opts.storage_options)
    options = storage.resolve_options(opts.storage_options)
    tasks = [Task(parquet_shard, {"input": u, "fields": tuple(fields), "out": None,
                                  "options": options}, input=u) for u in urls]
    preflight.check(urls, [], opts.storage_options, write=False)
    rows: dict[int, list] = {}

    def on_result(i: int, r: dict) -> None:
        rows[i] = r.pop("extra", {}).get("rows", [])

    summary = engine.finish(engine.run("htextract", tasks, opts, on_result=on_result,
                                       ordered=True, check_outputs=False), opts)
    gathered = [row for i in sorted(rows) for row in rows[i]]
    columns = list(zip(*gathered)) if gathered else [() for _ in fields]
    stacked = {name: stack(list(columns[j])) for j, name in enumerate(fields)
               if is_array_field(name)}
    out_rows = [{name: (None if v is None else decode(v)) if is_array_field(name)
                 else render(v, name) for name, v in zip(fields, row)} for row in gathered]
    return out_rows, stacked, summary
