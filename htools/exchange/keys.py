"""Sort keys and buckets: how a sample gets its key (htsort) or a random one
(htshuffle), and how a key picks its bucket.

Buckets are key ranges in key order, so concatenating buckets in order, each
sorted, gives a sorted whole: every level of the exchange relies on that.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from htools.errors import HtoolsError, ScriptError

RANDOM_BITS = 63


@dataclass(frozen=True)
class KeySpec:
    """How a sample gets its sort key (htsort) or a random one (htshuffle)."""

    mode: str = "random"  # random | field | script
    field: str = "__key__"
    type: str = "str"  # str | int | float
    reverse: bool = False
    seed: int = 0
    dedup: str | None = None  # keep only the first sample of each value of this field

    def key_fn(self, script, input_index: int = 0) -> Callable[[dict], object]:
        """The key of a sample of input shard ``input_index``.  Random keys depend only
        on the seed and the input's position, so a shuffle does not depend on how
        inputs were grouped into tasks."""
        if self.mode == "random" and self.dedup:
            return _content_key(self.seed, self.dedup)
        if self.mode == "random":
            rng = random.Random(f"{self.seed}:{input_index}")
            return lambda _sample: rng.getrandbits(RANDOM_BITS)
        if self.mode == "script":
            return script.load().sort_key
        conv = {"str": as_str, "int": _as_int, "float": _as_float}[self.type]
        name, kind = self.field, self.type

        def key_of(sample: dict):
            try:
                value = sample[name]
            except KeyError:
                raise ScriptError(f"sample has no field {name!r} to sort by") from None
            try:
                return conv(value)
            except ValueError as e:
                raise ScriptError(f"field {name!r} = {as_str(value)[:40]!r} is not "
                                  f"{'an' if kind == 'int' else 'a'} {kind} sort key ({e})"
                                  ) from None

        return key_of


def _content_key(seed: int, name: str) -> Callable[[dict], int]:
    """htshuffle --dedup: a random key drawn from (seed, sha256 of the field) instead of
    an RNG, so identical fields get identical keys (one bucket, adjacent) and the keys
    are still uniform and fixed by the seed."""
    salt = f"htshuffle-dedup:{seed}:".encode()

    def key_of(sample: dict) -> int:
        digest = hashlib.sha256(salt + field_digest(sample, name)).digest()
        return int.from_bytes(digest[:8], "big") >> (64 - RANDOM_BITS)

    return key_of


def first_pass_key(key: KeySpec, script, index: int) -> Callable[[dict], list]:
    """htsort --dedup F by another key K, first pass: ``[content key of F, input
    position, sample ordinal, K]``.  Duplicates of F get equal content keys (one bucket,
    adjacent, the first in input order first) and carry K and their input place into
    the second pass.  (position, ordinal) is unique, so K is never compared here."""
    sort_key = key.key_fn(script, index)
    content = _content_key(key.seed, key.dedup)
    ordinal = itertools.count()

    def key_of(sample: dict) -> list:
        k = checked_key(sort_key(sample))
        return [content(sample), index, next(ordinal), k]

    return key_of


class Placed(list):
    """A stage-1 key ``[K, position, ordinal]`` (:func:`placed_key`) that carries its
    sample's digest of the --dedup field to the spiller (:mod:`.semijoin`)."""

    __slots__ = ("digest",)


def placed_key(key: KeySpec, script, index: int) -> Callable[[dict], Placed]:
    """htsort --dedup F by another key K as a semi-join: the key of a plain sort, with
    the sample's input place after it (:func:`second_pass_key`'s form, so equal K keep
    their input order) and the sha256 of F beside it.  K is taken first, then F, as
    :func:`first_pass_key` does (the same sample errors)."""
    sort_key = key.key_fn(script, index)
    ordinal = itertools.count()
    name, reverse = key.dedup, key.reverse

    def key_of(sample: dict) -> Placed:
        k = checked_key(sort_key(sample))
        d = field_digest(sample, name)
        out = Placed(second_pass_key([None, index, next(ordinal), k], reverse))
        out.digest = d
        return out

    return key_of


def content_bucket(buckets: int) -> Callable[[list], int]:
    """The bucket of a first-pass key: the top bits of its content key."""
    return lambda k: (k[0] * buckets) >> RANDOM_BITS


def second_pass_key(first: list, reverse: bool) -> list:
    """The second pass's key, ``[K, position, ordinal]``: equal K in input order (the
    place is negated under ``reverse``, whose sort is descending)."""
    _content, index, ordinal, k = first
    return [k, -index, -ordinal] if reverse else [k, index, ordinal]


def field_digest(sample: dict, name: str) -> bytes:
    """sha256 of a sample's field bytes (--dedup); a missing field is a sample error."""
    try:
        value = sample[name]
    except KeyError:
        raise ScriptError(f"sample has no field {name!r} to deduplicate by") from None
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    elif not isinstance(value, (bytes, bytearray, memoryview)):
        raise ScriptError(f"field {name!r} is a {type(value).__name__}; --dedup compares "
                          "bytes or str fields")
    return hashlib.sha256(value).digest()


def check_dedup_field(name) -> str:
    """A --dedup FIELD must name a sample field (an extension such as ``jpg``, or
    ``__key__``)."""
    ok = isinstance(name, str) and name.strip() == name and name != "" \
        and not any(c in name for c in "/\\\0,") and not name.startswith(".") \
        and not name.endswith(".") and (not name.startswith("__") or name == "__key__")
    if not ok:
        raise HtoolsError(f"--dedup {name!r} is not a field name: give a field such as "
                          "jpg, json or txt, or __key__")
    return name


def as_str(v) -> str:
    return v if isinstance(v, str) else bytes(v).decode("utf-8", "surrogateescape")


def _as_int(v) -> int:
    n = int(as_str(v))
    if not -(1 << 63) <= n < (1 << 64):
        raise ValueError(f"{n} does not fit in 64 bits")
    return n


def _as_float(v) -> float:
    x = float(as_str(v))
    if math.isnan(x):
        raise ValueError("NaN has no place in a sort order")
    return x


def checked_key(k):
    """Sort keys must be str, int or float (no NaN), comparable with each other."""
    if isinstance(k, bool) or not isinstance(k, (str, int, float)):
        raise TypeError(f"sort key {k!r} is a {type(k).__name__}; expected str, int or float")
    if isinstance(k, float) and math.isnan(k):
        raise ValueError("sort key is NaN")
    if isinstance(k, int) and not -(1 << 63) <= k < (1 << 64):
        raise ValueError(f"sort key {k} does not fit in 64 bits")
    return k


def bucket_fn(key: KeySpec, buckets: int, splitters: tuple) -> Callable[[object], int]:
    """The bucket of a key: monotone in key order (decreasing with ``reverse``)."""
    b = buckets
    if key.mode == "random":  # keys are uniform in [0, 2**63): the top bits pick
        return lambda k: (k * b) >> RANDOM_BITS
    s = list(splitters)
    if key.reverse:
        return lambda k: b - 1 - bisect.bisect_right(s, k)
    return lambda k: bisect.bisect_right(s, k)


def pick_splitters(keys: list, buckets: int) -> tuple:
    """``buckets - 1`` quantiles of the sampled keys (ascending)."""
    if not keys or buckets <= 1:
        return ()
    keys = sorted(keys)
    n = len(keys)
    return tuple(keys[min(n - 1, (i * n) // buckets)] for i in range(1, buckets))
