"""WebDataset naming, in one place: the suffixes of tar shards, the fields that hold text,
and the shape of a shard's index entry.

At the bottom of the import graph (it imports nothing of htools), so every layer may use
it.  The tar codec keeps its own table of compression suffixes (``.gz``, ``.zst`` too:
it decides a stream's codec, not whether a name is a shard); a unit test checks that
the two agree on every suffix listed here.
"""

from __future__ import annotations

#: The file-name suffixes of a tar shard, longest first where one ends another
#: (``x.tar.gz`` is a gzip tar, not a ``.gz`` of something).
TAR_SUFFIXES = (".tar.gz", ".tar.zst", ".tar", ".tgz", ".tzst")

#: Fields that hold text by WebDataset convention (the last extension decides).
TEXT_FIELDS = frozenset({"txt", "text", "cls", "cls2", "index", "inx", "id", "json", "jsn",
                         "jsonl", "tsv", "csv", "html", "xml", "yaml", "yml", "key", "url",
                         "md", "label"})

#: Control characters that make a decoded value binary rather than text (tab, newline
#: and carriage return are text).
CONTROL_CHARS = frozenset(chr(c) for c in range(32)) - {"\t", "\n", "\r"}


def index_entry(output: str, result: dict) -> dict:
    """The index entry of a shard a task wrote (or read whole): ``output``, ``nsamples``,
    ``filesize``, ``sha256`` and ``fields`` (name -> samples that have it), from the task's
    result (``samples_written``, ``bytes_out``, ``sha256``, ``fields``)."""
    return {"output": output, "nsamples": result["samples_written"],
            "filesize": result["bytes_out"], "sha256": result["sha256"],
            "fields": result.get("fields") or {}}
