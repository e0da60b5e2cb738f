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

from htools.errors import (
    HtoolsError,
    NotFound,
    PatternError,
    ScriptError,
    ShardError,
    StorageError,
)
from htools.extract import extract
from htools.mapper import map_shards
from htools.peek import Samples, head, sample
from htools.shuffle import shuffle
from htools.sort import sort
from htools.summary import JobSummary
from htools.upload import upload

__all__ = ["map_shards", "extract", "upload", "shuffle", "sort", "head", "sample", "Samples",
           "JobSummary", "HtoolsError", "NotFound", "PatternError",
           "ScriptError", "ShardError", "StorageError"]
__version__ = "0.1.0"
