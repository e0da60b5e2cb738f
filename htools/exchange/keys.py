"""Sort keys and buckets: how a sample gets its key (htsort) or a random one
(htshuffle), and how a key picks its bucket.

Buckets are key ranges in key order, so concatenating buckets in order, each
sorted, gives a sorted whole: every level of the exchange relies on that.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ScriptError

RANDOM_BITS = 63


@dataclass(frozen=True)
class KeySpec:
    """How a sample gets its sort key (htsort) or a random one (htshuffle)."""

    mode: str = "random"  # random | field | script
    field: str = "__key__"
    type: str = "str"  # str | int | float
    reverse: bool = False
    seed: int = 0

    def key_fn(self, script, input_index: int = 0) -> Callable[[dict], object]:
        """The key of a sample of input shard ``input_index``.  Random keys depend only
        on the seed and the input's position, so a shuffle does not depend on how
        inputs were grouped into tasks."""
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
