"""Values as 128-bit digests: the list's values (text or parquet, streamed, digested a
chunk at a time with no Python object per value) and a sample's value (a field's bytes,
a trailing newline ignored, or a top-level member of a JSON field as its string form).

The digest is the job's keyed universal hash (:mod:`htools.selection.digest`: the
collision figure is there): a list is built and looked up with one key, drawn per job.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import orjson

from htools import storage
from htools.errors import hide_credentials
from htools.selection.digest import DEFAULT_KEY, PAD, hash_spans, hash_values
from htools.selection.spec import Selection, SelectionError
from htools.storage.local import local_path

READ_CHUNK = 1 << 20  # bytes of text a thread digests at once (its temporaries: ~12x)
PARQUET_BATCH = 65536
THREADS = 2  # threads digesting a list's pieces on the client
Digests = tuple[np.ndarray, np.ndarray]  # (hi, lo) uint64 halves of n digests


def digest(value: bytes, key: str = DEFAULT_KEY) -> bytes:
    """One value's digest as 16 bytes (high half, then low, big-endian)."""
    return digest_block([value], key)


def digests(values: list[bytes | None], key: str = DEFAULT_KEY,
            strip_newline: bool = False, complete: bool = False
            ) -> tuple[Digests, np.ndarray | None]:
    """The digests of ``values`` in one pass, as the (high, low) uint64 halves (zeros
    where a value is None), and which values are present (None: all of them; the
    caller may say so, ``complete``); ``strip_newline``: of each value without its
    trailing newline."""
    if complete or None not in values:
        return hash_values(values, key, strip_newline), None
    present = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    hi, lo = np.zeros(len(values), np.uint64), np.zeros(len(values), np.uint64)
    if present.any():
        hi[present], lo[present] = hash_values([v for v in values if v is not None], key,
                                               strip_newline)
    return (hi, lo), present


def digest_block(values: list[bytes], key: str = DEFAULT_KEY) -> bytes:
    """The digests of ``values`` back to back (16 bytes each, as :func:`digest`)."""
    return digest_bytes(*hash_values(values, key))


def digest_bytes(hi: np.ndarray, lo: np.ndarray) -> bytes:
    """Digests' (high, low) halves as 16 bytes each (high half, then low, big-endian),
    back to back."""
    return np.stack([hi, lo], axis=1).astype(">u8").tobytes()


def string_form(v) -> bytes | None:
    """A JSON member or parquet cell as the bytes it is matched by (None: no value)."""
    if v is None:
        return None
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, bool):
        return b"true" if v else b"false"
    if isinstance(v, (int, float)):
        return json.dumps(v).encode()
    return json.dumps(v, sort_keys=True, ensure_ascii=False).encode("utf-8")


def field_values(batch: list[dict], field: str) -> list[bytes | None]:
    """Each sample's ``field`` as bytes (None: missing), as :func:`sample_value` before
    its trailing newline is cut (:func:`digests` cuts it)."""
    values = [s.get(field) for s in batch]
    return [v.encode("utf-8") if v.__class__ is str else v for v in values]


def sample_value(sample: dict, sel: Selection) -> bytes | None:
    """The bytes ``sel`` matches in ``sample`` (None: the sample has no such value).
    A JSON field that does not parse raises ValueError."""
    v = sample.get(sel.field)
    if v is None:
        return None
    if isinstance(v, str):
        v = v.encode("utf-8")
    if sel.member is None:
        return v[:-1] if v.endswith(b"\n") else v
    return _member(v, sel)


def member_values(batch: list[dict], sel: Selection
                  ) -> tuple[list[bytes | None], list[tuple[int, ValueError]], bool]:
    """:func:`sample_value` of each sample of ``batch`` (``sel`` names a JSON member),
    None where it raised; (index, error) of those; and whether no value is None.

    A field is first parsed with orjson (0.26 us a small object, json's scanner 0.74),
    and its member taken from that only when orjson's value is provably json's: orjson
    accepts nothing json refuses, but turns an integer past 64 bits into a float, so a
    member that is a float, a list or an object, a document orjson refuses (NaN, lone
    surrogates, non-UTF-8, a BOM...) and one that could nest deep enough for json's
    recursion limit are read as before (:func:`_member`: json's value or error)."""
    out: list[bytes | None] = []
    bad: list[tuple[int, ValueError]] = []
    field, member, loads = sel.field, sel.member, orjson.loads
    complete = True
    for i, s in enumerate(batch):
        v = s.get(field)
        if v is None:
            out.append(None)
            complete = False
            continue
        if v.__class__ is bytes and (len(v) < SHALLOW or _shallow(v)):
            try:
                m = loads(v).get(member)
            except (ValueError, AttributeError):  # not JSON to orjson, or not an object
                pass
            else:
                if m.__class__ is str:
                    out.append(m.encode("utf-8"))  # orjson's strings have no surrogates
                    continue
                if m.__class__ is int or m.__class__ is bool:
                    out.append(string_form(m))
                    continue
                if m is None:
                    out.append(None)
                    complete = False
                    continue
        try:
            value = _member(v.encode("utf-8") if v.__class__ is str else v, sel)
        except ValueError as e:
            value = None
            bad.append((i, e))
        out.append(value)
        complete = complete and value is not None
    return out, bad, complete


SHALLOW = 512  # bytes: a shorter document nests at most 256 deep, far from json's limit


def _shallow(v: bytes) -> bool:
    """Whether ``v`` opens too few arrays and objects to reach json's recursion limit
    (1000 frames, the caller's included): json raises RecursionError there, orjson not."""
    return v.count(b"{") + v.count(b"[") < SHALLOW // 2


def _member(v: bytes, sel: Selection) -> bytes | None:
    doc = parse_json(v)
    if not isinstance(doc, dict):
        raise ValueError(f"field {sel.field!r} is not a JSON object")
    m = doc.get(sel.member)
    return m.encode("utf-8") if m.__class__ is str else string_form(m)


_SCAN = json.JSONDecoder().scan_once  # what json.loads' decoder runs, in C
_SPACE = " \t\n\r"  # JSON's whitespace


def parse_json(v: bytes):
    """``json.loads(v)``: the same value or error, in fewer steps for what json.loads
    reads as UTF-8 and starts with ``{`` (its decoder's own scanner called directly:
    2 us -> 1.3 us a small object)."""
    if v[:1] != b"{" or v[1:2] == b"\0":
        return json.loads(v)
    s = v.decode("utf-8", "surrogatepass")
    try:
        doc, end = _SCAN(s, 0)
    except StopIteration as err:
        raise json.JSONDecodeError("Expecting value", s, err.value) from None
    if end != len(s):
        rest = s[end:].lstrip(_SPACE)
        if rest:
            raise json.JSONDecodeError("Extra data", s, len(s) - len(rest))
    return doc


@contextmanager
def local_copy(url: str, options: dict | None) -> Iterator[str]:
    """A local path of ``url``: the file itself, or a temporary copy removed after."""
    if storage.protocol(url) == "file":
        yield local_path(url)
        return
    folder = tempfile.mkdtemp(prefix="htools-list-")
    try:
        path = os.path.join(folder, "list")
        with storage.open_read(url, options) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, READ_CHUNK)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def list_values(sel: Selection, options: dict | None) -> Iterator[bytes]:
    """Every value of the list, streamed (duplicates included): what the digests of
    :func:`list_digests` are of, as Python objects (for tests and small lists)."""
    if sel.is_parquet:
        for col in _parquet_columns(sel, options):
            yield from (b for b in map(string_form, col.to_pylist()) if b is not None)
        return
    for body in _text_pieces(sel, options):
        buf = np.frombuffer(body, dtype=np.uint8)
        for a, b in zip(*_lines(buf, len(body))):
            yield body[a:b]


def _check_utf8(sel: Selection, lines: list[bytes], before: int) -> None:
    """Refuse the first line of ``lines`` (after ``before`` lines) that is not UTF-8."""
    try:
        b"\n".join(lines).decode("utf-8")
    except UnicodeDecodeError:
        for i, line in enumerate(lines):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                raise SelectionError(f"{sel.flag} {hide_credentials(sel.source)}: line "
                                     f"{before + i + 1} is not UTF-8") from None


def list_digests(sel: Selection, options: dict | None, key: str,
                 threads: int = THREADS) -> Iterator[Digests]:
    """The digests of the list's values, a chunk at a time (duplicates included), on
    ``threads`` threads (numpy releases the GIL: the client's cores, idle while it
    builds the table, share the hashing)."""
    if sel.is_parquet:
        pieces, fn = _parquet_columns(sel, options), _column_digests
    else:
        pieces, fn = _text_pieces(sel, options), _text_digests
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()
        for piece in pieces:
            pending.append(pool.submit(fn, piece, key))
            if len(pending) > 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _text_pieces(sel: Selection, options: dict | None) -> Iterator[bytes]:
    """The text list in pieces of whole lines (about ``READ_CHUNK`` bytes), each
    checked to be UTF-8."""
    with storage.open_read(sel.source, options) as f:
        tail = b""
        line_no = 0
        while True:
            chunk = f.read(READ_CHUNK)
            data = tail + chunk
            cut = data.rfind(b"\n") if chunk else len(data)
            if cut < 0:
                tail = data
                continue
            body, tail = data[:cut], data[cut + 1:]
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                _check_utf8(sel, body.split(b"\n"), line_no)
            line_no += body.count(b"\n") + 1
            yield body
            if not chunk:
                return


def _text_digests(body: bytes, key: str) -> Digests:
    buf = np.frombuffer(body + PAD, dtype=np.uint8)
    return hash_spans(buf, *_lines(buf, len(body)), key)


def _lines(buf: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The (start, end) of each non-blank line of ``buf[:size]`` (a trailing CR cut)."""
    nl = np.flatnonzero(buf[:size] == 10)
    starts = np.concatenate([[0], nl + 1])
    ends = np.concatenate([nl, [size]])
    cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    ends = ends - cr
    keep = ends > starts
    return starts[keep], ends[keep]


def _parquet_columns(sel: Selection, options: dict | None) -> Iterator:
    """The list's column, a batch of ``PARQUET_BATCH`` rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with local_copy(sel.source, options) as path:
        try:
            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH, columns=[sel.column]):
                yield batch.column(0)
        except (OSError, ValueError, pa.ArrowException) as e:
            raise SelectionError(f"{sel.flag} {hide_credentials(sel.source)}: cannot read "
                                 f"column {sel.column!r}: {e}") from None


def _column_digests(col, key: str) -> Digests:
    """A parquet column's digests: binary and string columns from their buffers (no
    Python object per value), other types by their string form."""
    import pyarrow as pa

    kinds = {pa.string(): pa.binary(), pa.large_string(): pa.large_binary()}
    if col.type in kinds:
        col = col.cast(kinds[col.type])
    if col.type not in (pa.binary(), pa.large_binary()):
        return hash_values([b for b in map(string_form, col.to_pylist()) if b is not None],
                           key)
    col = col.drop_null() if col.null_count else col
    if not len(col):
        return hash_values([], key)
    _, offsets, data = col.buffers()
    width = np.int64 if col.type == pa.large_binary() else np.int32
    offs = np.frombuffer(offsets, dtype=width)[col.offset:col.offset + len(col) + 1]
    body = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    buf = np.concatenate([body[:int(offs[-1])], np.zeros(len(PAD), np.uint8)])
    return hash_spans(buf, offs[:-1].astype(np.int64), offs[1:].astype(np.int64), key)
