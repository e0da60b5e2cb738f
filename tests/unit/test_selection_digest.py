"""The list's digest (htools.selection.digest): the numpy hash equals the formula in its
docstring computed with Python integers, for short, empty and long values (the path that
reduces every word), and values that differ only by trailing zero bytes differ."""

from __future__ import annotations

import hashlib
import random

import numpy as np

from htools.selection import digest
from htools.selection.digest import LANES, P, hash_values, keys, new_key


def reference(value: bytes, key: str) -> tuple[int, int]:
    raw = hashlib.shake_256(bytes.fromhex(key)).digest(4 * LANES * (len(value) // 3 + 2))
    k = [[int.from_bytes(raw[4 * (LANES * j + t):4 * (LANES * j + t) + 4], "little") % P
          for t in range(LANES)] for j in range(len(value) // 3 + 2)]
    lanes = []
    for t in range(LANES):
        h = k[0][t] * len(value)
        for j in range(0, len(value), 3):
            h += k[j // 3 + 1][t] * int.from_bytes(value[j:j + 3], "little")
        lanes.append(h % P)
    return lanes[0] * P + lanes[1], lanes[2] * P + lanes[3]


def test_digest_is_the_documented_formula():
    rng = random.Random(7)
    key = new_key()
    short = [rng.randbytes(rng.randint(0, 40)) for _ in range(200)]
    for values in (short, short + [rng.randbytes(3000), b"x" * 766]):
        hi, lo = hash_values(values, key)
        assert [(int(a), int(b)) for a, b in zip(hi, lo)] == [reference(v, key) for v in values]


def test_zero_padding_and_keys():
    key = new_key()
    values = [b"a", b"a\0", b"a\0\0", b"a\0\0\0", b"", b"\0"]
    hi, lo = hash_values(values, key)
    assert len(set(zip(hi.tolist(), lo.tolist()))) == len(values)
    other = hash_values(values, new_key())
    assert not np.array_equal(hi, other[0])
    assert np.array_equal(keys(key, 5)[:6], keys(key, 500)[:6])  # a stream: longer extends it


def test_every_path_of_the_columns_is_the_formula(monkeypatch):
    """Mixed lengths (a few values past the summed columns), one length only, the
    length term reduced first (as for values of 16 MiB or more), and values in many
    blocks of rows."""
    rng = random.Random(11)
    key = new_key()
    mixed = [rng.randbytes(rng.choice([5, 9, 12, 30, 200, 900])) for _ in range(300)]
    same = [rng.randbytes(32) for _ in range(50)]
    for values in (mixed, same, [b""], [b"", b"abc"]):
        hi, lo = hash_values(values, key)
        assert [(int(a), int(b)) for a, b in zip(hi, lo)] == [reference(v, key) for v in values]
    monkeypatch.setattr(digest, "SHORT", 1)
    hi, lo = hash_values(mixed, key)
    assert [(int(a), int(b)) for a, b in zip(hi, lo)] == [reference(v, key) for v in mixed]
    monkeypatch.setattr(digest, "BLOCK_WORDS", 40)  # many blocks of rows, a last short one
    for values in (mixed, same, [rng.randbytes(7) for _ in range(13)]):
        hi, lo = hash_values(values, key)
        assert [(int(a), int(b)) for a, b in zip(hi, lo)] == [reference(v, key) for v in values]


def test_spans_of_one_length_at_even_and_uneven_steps(monkeypatch):
    """Values of one length read through a strided view (at even steps, a list's lines)
    or gathered (at uneven steps): both the formula, in one block or many."""
    rng = random.Random(5)
    key = new_key()
    values = [rng.randbytes(10) for _ in range(40)]
    gaps = {"even": [1] * 40, "uneven": [rng.randint(0, 4) for _ in range(40)]}
    want = [reference(v, key) for v in values]
    for block in (digest.BLOCK_WORDS, 9):
        monkeypatch.setattr(digest, "BLOCK_WORDS", block)
        for name, gap in gaps.items():
            body, starts = b"", []
            for v, g in zip(values, gap):
                starts.append(len(body))
                body += v + b"\n" * g
            buf = np.frombuffer(body + digest.PAD, dtype=np.uint8)
            starts_a = np.array(starts, dtype=np.int64)
            assert (digest._even_step(starts_a) is None) == (name == "uneven")
            hi, lo = digest.hash_spans(buf, starts_a, starts_a + 10, key)
            assert [(int(a), int(b)) for a, b in zip(hi, lo)] == want, (name, block)
