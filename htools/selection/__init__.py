"""Keep or drop samples by a list of any size (``--keep FILE`` / ``--drop FILE``).

``spec.py`` (the options, checked in one line before any shard is read), ``digest.py``
(the job's keyed 128-bit digest, many values at once), ``values.py`` (the list's values
and a sample's value, digested), ``table.py`` (the sorted digest table: built once per
job, memory-mapped once per worker process), ``parts.py`` (the table looked up by
partition, for a list larger than a worker's budget), ``filter.py``
(the generator stage every reading task puts right after ``read_shard``), ``job.py``
(the job's side: build the table into scratch, count what matched, clean up).
"""

from __future__ import annotations

import importlib

from htools.selection.spec import Selection, parse, selection_lineage

__all__ = ["Selection", "parse", "prepared", "run_selected", "selected", "selection_lineage"]

# numpy's modules, imported on first use: a job without --keep/--drop (an htupload of
# a folder) need not import numpy (70 ms)
_LAZY = {"selected": "htools.selection.filter", "prepared": "htools.selection.job",
         "run_selected": "htools.selection.job"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
