"""The shard index written beside every output set: ``STEM.index.json``.

A wids dataset description (``"wids_version": 1``, ``"name"``, ``"shardlist"`` of
``{"url", "nsamples", "filesize", "sha256", "fields"}`` with URLs relative to the
index) plus totals and each field's count, so readers know how many samples each shard holds
without scanning it.  Written atomically after the last shard, from what the tasks
counted while writing (no second read); outputs skipped by ``--resume`` take their
entry from the previous index when it names the same file size, else they are read
once on the client.  The writing tools (and the exchange) end with :func:`finish`:
the index beside their outputs, then the summary.  ``htextract SHARDS --index
OUT.json`` (:mod:`htools.extract_index`) builds the same for any shard set, one
:func:`index_shard` task per shard.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from htools import storage
from htools.errors import HtoolsError, StorageError, hide_credentials
from htools.naming import TAR_SUFFIXES, index_entry
from htools.runtime.shardio import read_shard
from htools.runtime.task import shard_task
from htools.shards import OutputSet
from htools.storage.base import retry_policy
from htools.summary import JobSummary, Written

_NUMBERING = re.compile(r"(@\d+|%0?\d*d|\{[^}]*\})")


def index_url(outset: OutputSet) -> str:
    """Where the index of an output set goes: ``thumbs-@8.tgz`` -> ``thumbs.index.json``
    in the outputs' folder."""
    base = outset.pattern.rsplit("/", 1)[-1]
    for suffix in TAR_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    stem = _NUMBERING.sub("", base).rstrip("-_.") or "shards"
    return storage.join(outset.folder(), f"{stem}.index.json")


def index_shard(input: str, *, options: dict | None = None) -> dict:
    """Task: the index entry of one existing shard (samples, size, sha256, fields)."""
    fields: Counter = Counter()
    with shard_task(input) as result:
        with read_shard(input, options, result, digest=True) as samples:
            for sample in samples:
                result.samples_read += 1
                fields.update(f for f in sample if not f.startswith("__"))
        result.samples_mapped = result.samples_written = result.samples_read
        result.fields = dict(fields)
        result.bytes_out = result.bytes_in  # the file's size
    return result.as_dict()


def build(entries: Iterable[dict] | Callable[[], Iterable[dict]], index_at: str,
          name: str) -> dict:
    """The index document for ``entries`` (output URL, nsamples, filesize, sha256,
    fields), with URLs relative to ``index_at``'s folder when they are beside it.

    ``entries`` may be a function that gives them afresh each call: the shard list is
    then made entry by entry as :func:`write` encodes it, never held whole (the index
    of a job of 100,000 shards, on the client)."""
    folder = index_at.rsplit("/", 1)[0] + "/"

    def shard(e: dict) -> dict:
        url = e["output"]
        return {"url": url[len(folder):] if url.startswith(folder) else url,
                "nsamples": int(e["nsamples"]), "filesize": int(e["filesize"]),
                "sha256": e["sha256"], "fields": dict(sorted(e["fields"].items()))}

    fields, samples, size, count = Counter(), 0, 0, 0
    for e in entries() if callable(entries) else (entries := list(entries)):
        fields.update(e.get("fields", {}))
        samples += int(e["nsamples"])
        size += int(e["filesize"])
        count += 1
    shardlist = (_Shards(lambda: map(shard, entries()), count) if callable(entries)
                 else [shard(e) for e in entries])
    return {"wids_version": 1, "name": name, "shardlist": shardlist,
            "totals": {"shards": count, "samples": samples, "bytes": size},
            "fields": dict(sorted(fields.items()))}


class _Shards(list):
    """A shard list that the JSON encoder walks without it being held: its items are
    made as they are encoded (the encoder with ``indent`` iterates lists in Python)."""

    def __init__(self, items: Callable[[], Iterator[dict]], count: int):
        super().__init__()
        self._items, self._count = items, count

    def __iter__(self) -> Iterator[dict]:
        return iter(self._items())

    def __len__(self) -> int:
        return self._count


def encode(doc: dict) -> bytes:
    """An index document as its file holds it: ``json.dumps(doc, indent=1,
    ensure_ascii=False)`` and a newline, in UTF-8."""
    return b"".join(encode_chunks(doc))


def encode_chunks(doc: dict) -> Iterator[bytes]:
    """:func:`encode`'s bytes, a MiB at a time (dumps() would first hold every small
    piece of the text at once, and the whole text after: 400 bytes a shard twice)."""
    pending: list[str] = []
    held = 0
    for chunk in json.JSONEncoder(indent=1, ensure_ascii=False).iterencode(doc):
        pending.append(chunk)
        held += len(chunk)
        if held >= 1 << 20:
            yield "".join(pending).encode("utf-8")
            pending, held = [], 0
    pending.append("\n")
    yield "".join(pending).encode("utf-8")


def write(doc: dict, url: str, options: dict | None) -> int:
    """Write an index document atomically, encoded as it is written (never held whole);
    returns its size.  A transient failure (a 503 at the commit) writes it again, encoded
    afresh (a lazy shard list gives its entries again), after the storage retry
    policy's backoff."""
    proto = storage.protocol(url)
    delays = retry_policy(storage.resolve_options(options).get(proto)).delays()
    while True:
        try:
            size = 0
            with storage.open_write(url, options) as out:
                for data in encode_chunks(doc):
                    out.write(data)
                    size += len(data)
            return size
        except StorageError as e:
            delay = next(delays, None)
            if not e.transient or delay is None:
                raise
            time.sleep(delay)


def write_for_job(outset: OutputSet, outputs: list[str], summary: JobSummary,
                  options: dict | None, made: dict | None = None,
                  previous: dict | None = None) -> str | None:
    """After a successful job: the index of its whole output set, next to it, with the
    job's lineage ``made``; ``previous``: the index there before, when already read.
    Returns its URL (None when the outputs are pipes or nothing was written)."""
    if not outputs or any(storage.is_stream(u) for u in outputs):
        return None
    url = index_url(outset)
    written = summary.written if isinstance(summary.written, Written) \
        else Written(summary.written)
    at = written.order(outputs)  # each output's entry in `written`, or -1
    fresh: dict[str, dict] = {}  # entries of outputs this run did not write (resumed)
    missing = [u for u, i in zip(outputs, at) if i < 0]
    if missing:
        if previous is None:
            previous = read_index(url, options)
        fresh.update(_previous_entries(previous, url, missing, options))
    for u in missing:  # skipped and not in the previous index: read them once here
        if u not in fresh:
            r = index_shard(u, options=storage.resolve_options(options))
            if r["status"] != "ok":
                raise HtoolsError(f"cannot index {u}: {r['error']}")
            fresh[u] = index_entry(u, r)
    name = url.rsplit("/", 1)[-1].removesuffix(".index.json")

    def entries() -> Iterator[dict]:
        for u, i in zip(outputs, at):
            yield written.entry(i) if i >= 0 else fresh[u]

    doc = build(entries, url, name)
    if made is not None:
        doc["lineage"] = made
    write(doc, url, options)
    summary.extra["index"] = hide_credentials(url)
    return url


def entry_url(index_at: str, url: str) -> str:
    """A shard list entry's URL as a full URL (it is relative to the index's folder when
    the shard is beside it)."""
    if "://" in url or url.startswith("/"):
        return url
    return index_at.rsplit("/", 1)[0] + "/" + url


def read_index(url: str, options: dict | None) -> dict | None:
    """The index document at ``url``; None when there is none (or it is not JSON)."""
    try:
        with storage.open_read(url, options) as f:
            doc = json.loads(f.read())
    except (StorageError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


LINEAGE_TAIL = 1 << 16  # bytes at the end of an index that hold its lineage


def read_lineage(url: str, options: dict | None) -> dict | None:
    """The lineage recorded in the index at ``url`` (None when none is): read from the
    file's tail, where :func:`write_for_job` puts it (its last key), and only when that
    is not found from the whole document -- an index of a million shards is 200 MB of
    text and four times that parsed."""
    try:
        size = storage.size(url, options)
        tail = storage.read_range(url, max(0, size - LINEAGE_TAIL), size, options)
    except StorageError:
        return None
    at = tail.rfind(b'\n "lineage": ')
    if at >= 0:
        text = tail[at:].decode("utf-8", "replace")
        start = text.index(":") + 1
        try:
            lineage, end = json.JSONDecoder().raw_decode(text, start + 1)
        except ValueError:
            lineage, end = None, 0
        if isinstance(lineage, dict) and text[end:].strip() == "}":
            return lineage
    old = (read_index(url, options) or {}).get("lineage")
    return old if isinstance(old, dict) else None


def _previous_entries(doc: dict | None, url: str, outputs: list[str],
                      options) -> dict[str, dict]:
    """Entries of ``outputs`` from the earlier index ``doc`` (at ``url``) whose file
    size still matches (the outputs a resumed job skipped)."""
    if not doc:
        return {}
    known = {entry_url(url, e["url"]): e for e in doc.get("shardlist", [])}
    found = {}
    for u in outputs:
        e = known.get(u)
        if e and "sha256" in e:
            try:
                if storage.size(u, options) == e.get("filesize"):
                    found[u] = {"output": u, "nsamples": e["nsamples"],
                                "filesize": e["filesize"], "sha256": e["sha256"],
                                "fields": e.get("fields", {})}
            except StorageError:
                pass
    return found
