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

from htools.selection.filter import selected
from htools.selection.job import prepared, run_selected
from htools.selection.spec import Selection, parse, selection_lineage

__all__ = ["Selection", "parse", "prepared", "run_selected", "selected", "selection_lineage"]
