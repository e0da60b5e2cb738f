"""htools: map-reduce over sharded tar datasets (WebDataset format) on Dask.

The command-line tools are thin layers over these functions::

    import htools
    htools.map_shards("data-@100.tar", "out-@100.tar", "script.py")
    htools.extract("out-@100.tar", fields=["cls"], count=10)
    htools.upload("photos/", "s3://bucket/photos-@16.tar")

Each takes the CLI's options (``client=``, ``cluster=``, ``workers=``,
``resume=``, ``overwrite=``, ``max_errors=``, ``storage_options=`` ...) and
returns a :class:`~htools.summary.JobSummary`; ``extract`` without ``out=`` returns its rows
(or counts) as data, the summary as their ``.summary``.  ``htools.head(PATTERN)`` and
``htools.sample(PATTERN, n, seed)`` fetch a few samples on the client, shown as a table
in Jupyter.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from htools.errors import (
    HtoolsError,
    NotFound,
    PatternError,
    ScriptError,
    ShardError,
    StorageError,
)

if TYPE_CHECKING:
    from htools.extract import extract
    from htools.mapper import map_shards
    from htools.peek import Samples, head, sample
    from htools.shuffle import shuffle
    from htools.sort import sort
    from htools.summary import JobSummary
    from htools.upload import upload

# The tools, imported on first use: a command (or a worker) imports the one it runs, not
# all five (htmapper needs neither parquet nor the exchange nor the upload's scanner).
_LAZY = {"map_shards": "htools.mapper", "extract": "htools.extract", "upload": "htools.upload",
         "shuffle": "htools.shuffle", "sort": "htools.sort", "head": "htools.peek",
         "sample": "htools.peek", "Samples": "htools.peek", "JobSummary": "htools.summary"}

__all__ = ["map_shards", "extract", "upload", "shuffle", "sort", "head", "sample", "Samples",
           "JobSummary", "HtoolsError", "NotFound", "PatternError",
           "ScriptError", "ShardError", "StorageError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'htools' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, "__version__"})


class _Package(types.ModuleType):
    """``htools.extract``, ``.upload``, ``.shuffle`` and ``.sort`` are functions named
    like the modules that define them.  Importing such a module binds the module on its
    package; this package keeps the function instead (as when it imported every tool at
    once), so ``htools.upload(...)`` works whatever was imported first."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
