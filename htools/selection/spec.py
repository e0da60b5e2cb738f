"""The selection options: ``--keep FILE`` or ``--drop FILE``, ``--select-by FIELD`` or
``FIELD:MEMBER`` (default ``__key__``), ``--select-column NAME`` for a parquet list.

:func:`parse` refuses, in one line and before any shard is read, both lists at once, a
list that is missing or unreadable, and a parquet list without the column.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from htools import storage
from htools.errors import HtoolsError, hide_credentials

READ = 1 << 22  # bytes read at once for the list's content digest


class SelectionError(HtoolsError):
    """A --keep/--drop list that cannot be used (named in one line)."""


@dataclass(frozen=True)
class Selection:
    """What a job selects by; shipped to every task (small: the list itself is in scratch)."""

    mode: str  # "keep" | "drop"
    source: str  # the list's URL as given
    field: str = "__key__"  # the sample field matched
    member: str | None = None  # a top-level member of the JSON in ``field``
    column: str = "__key__"  # the parquet column of the list
    table: str = ""  # the sorted digest table in scratch (set by job.prepared)
    digest: str = ""  # of the table's bytes: a worker's cache key with ``table``
    listed: int = 0  # distinct values in the list
    counts: str = ""  # folder of per-shard counts files (set by job.prepared)
    key: str = ""  # the job's digest key (hex; set by job.prepared)
    content: str = ""  # digest of the list file's bytes (set by parse; for lineage)
    budget: int = 0  # bytes of the table a worker holds (0: all; set by job.prepared)

    @property
    def flag(self) -> str:
        return f"--{self.mode}"

    @property
    def by(self) -> str:
        return f"{self.field}:{self.member}" if self.member is not None else self.field

    def lineage(self) -> dict:
        """What the job's lineage records of the selection: the list by its URL and its
        content's digest (a list edited in place is told apart, like an edited script)."""
        return {self.mode: hide_credentials(self.source), "select_by": self.by,
                **({"list_digest": self.content} if self.content else {}),
                **({"select_column": self.column} if self.is_parquet else {})}

    @property
    def is_parquet(self) -> bool:
        return self.source.lower().endswith(".parquet")

    def built(self, table: str, digest: str, listed: int, counts: str, key: str,
              budget: int = 0) -> Selection:
        return replace(self, table=table, digest=digest, listed=listed, counts=counts,
                       key=key, budget=budget)

    @property
    def partitioned(self) -> bool:
        """Whether workers look the list up by partition (its table exceeds the budget)."""
        return by_partition(self.listed, self.budget)


def by_partition(listed: int, budget: int) -> bool:
    """Whether a table of ``listed`` values (16 bytes each) is looked up by partition
    rather than held whole: it exceeds a worker's ``budget`` (0: no budget)."""
    return bool(budget) and 16 * listed > budget


def parse(keep: str | None = None, drop: str | None = None, by: str | None = None,
          column: str | None = None, options: dict | None = None) -> Selection | None:
    """The job's selection (None without --keep/--drop), its list checked readable."""
    if keep is not None and drop is not None:
        raise SelectionError("give --keep FILE or --drop FILE, not both")
    source = keep if keep is not None else drop
    if source is None:
        if by is not None or column is not None:
            raise SelectionError("--select-by and --select-column need --keep FILE or "
                                 "--drop FILE")
        return None
    field, member = _split_by(by or "__key__")
    sel = Selection("keep" if keep is not None else "drop", source, field, member,
                    column or (member if member is not None else field))
    return replace(sel, content=check_list(sel, options))


def _split_by(by: str) -> tuple[str, str | None]:
    field, sep, member = by.partition(":")
    if not field or (sep and not member):
        raise SelectionError(f"--select-by {by!r}: give FIELD or FIELD:MEMBER "
                             "(e.g. json:uid)")
    return field, (member if sep else None)


def check_list(sel: Selection, options: dict | None) -> str:
    """Refuse a list that is missing, unreadable, or (parquet) without the column;
    returns the digest of its bytes (read once here: a local list of 4 million keys
    in 0.1 s)."""
    where = f"{sel.flag} {hide_credentials(sel.source)}"
    try:
        if not storage.exists(sel.source, options):
            raise SelectionError(f"{where}: no such file")
        if sel.is_parquet:
            names = parquet_columns(sel.source, options)
            if sel.column not in names:
                shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
                raise SelectionError(f"{where} has no column {sel.column!r} (columns: "
                                     f"{shown}); name it with --select-column")
        return content_digest(sel.source, options)
    except SelectionError:
        raise
    except (HtoolsError, OSError, ValueError) as e:
        raise SelectionError(f"{where}: cannot read it: {e}") from None


def content_digest(url: str, options: dict | None) -> str:
    """blake2b-128 of the file's bytes, hex (the first 16 digits)."""
    h = hashlib.blake2b(digest_size=16)
    with storage.open_read(url, options) as f:
        while chunk := f.read(READ):
            h.update(chunk)
    return h.hexdigest()[:16]


def parquet_columns(url: str, options: dict | None) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SelectionError("a .parquet list needs pyarrow: pip install 'htools[parquet]'") \
            from None
    from htools.selection.values import local_copy

    with local_copy(url, options) as path:
        return list(pq.ParquetFile(path).schema_arrow.names)


def selection_lineage(sel: Selection | None) -> dict:
    """The selection's part of a job's lineage ({} without --keep/--drop)."""
    return sel.lineage() if sel is not None else {}
