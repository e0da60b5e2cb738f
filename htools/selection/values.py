"""Values as 128-bit digests: the list's values (text or parquet, streamed) and a
sample's value (a field's bytes, a trailing newline ignored, or a top-level member of a
JSON field as its string form).

A value is its blake2b-128 digest: two different values share one with probability
2^-128, so over 10^9 listed values and 10^11 looked-up values the chance that any
sample is matched by another value's digest is below 10^20 / 2^128 ~ 3e-19.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from htools import storage
from htools.errors import hide_credentials
from htools.selection.spec import Selection, SelectionError
from htools.storage.local import local_path

READ_CHUNK = 1 << 20
PARQUET_BATCH = 65536


def digest(value: bytes) -> bytes:
    return hashlib.blake2b(value, digest_size=16).digest()


NONE = bytes(16)  # a missing value's place in a batch of digests (never looked up)


def digests(values: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """The digests of ``values`` in one pass, as an (n, 2) array of the (high, low)
    uint64 halves, and which values are present (not None)."""
    blake = hashlib.blake2b
    raw = b"".join([NONE if v is None else blake(v, digest_size=16).digest() for v in values])
    pairs = np.frombuffer(raw, dtype=">u8").reshape(-1, 2).astype(np.uint64)
    return pairs, np.fromiter((v is not None for v in values), dtype=bool, count=len(values))


def digest_block(values: list[bytes]) -> bytes:
    """The digests of ``values`` back to back (16 bytes each)."""
    blake = hashlib.blake2b
    return b"".join([blake(v, digest_size=16).digest() for v in values])


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
    doc = json.loads(v)
    if not isinstance(doc, dict):
        raise ValueError(f"field {sel.field!r} is not a JSON object")
    return string_form(doc.get(sel.member))


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
    """Every value of the list, streamed (duplicates included)."""
    for block in list_blocks(sel, options):
        yield from block


def list_blocks(sel: Selection, options: dict | None) -> Iterator[list[bytes]]:
    """The list's values a block at a time (about ``READ_CHUNK`` bytes of text or
    ``PARQUET_BATCH`` rows), in order, duplicates included."""
    if sel.is_parquet:
        yield from _parquet_blocks(sel, options)
    else:
        yield from _text_blocks(sel, options)


def _text_blocks(sel: Selection, options: dict | None) -> Iterator[list[bytes]]:
    with storage.open_read(sel.source, options) as f:
        tail = b""
        line_no = 0
        while True:
            chunk = f.read(READ_CHUNK)
            data = tail + chunk
            lines = data.split(b"\n")
            tail = lines.pop() if chunk else b""
            if b"\r" in data:
                lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
            _check_utf8(sel, lines, line_no)
            line_no += len(lines)
            yield [ln for ln in lines if ln]
            if not chunk:
                return


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


def _parquet_blocks(sel: Selection, options: dict | None) -> Iterator[list[bytes]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with local_copy(sel.source, options) as path:
        try:
            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH, columns=[sel.column]):
                col = batch.column(0)
                if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                    col = col.cast(pa.binary() if pa.types.is_string(col.type)
                                   else pa.large_binary())
                    yield [v for v in col.to_pylist() if v is not None]
                else:
                    yield [b for b in map(string_form, col.to_pylist()) if b is not None]
        except (OSError, ValueError, pa.ArrowException) as e:
            raise SelectionError(f"{sel.flag} {hide_credentials(sel.source)}: cannot read "
                                 f"column {sel.column!r}: {e}") from None
