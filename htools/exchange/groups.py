"""What a write task does between the merged records of its buckets and the output
shard: drop duplicates (``--dedup``), join equal keys (``--merge``), hand each group of
equal keys to ``reduce_samples``, or pass the records through as their tar bytes.
Samples are decoded back into dicts only where one of these needs them."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from operator import itemgetter

from htools.errors import HtoolsError, ScriptError
from htools.exchange.keys import field_digest
from htools.exchange.runfile import SampleEncoder, decode
from htools.exchange.specs import StageTwo
from htools.summary import ShardResult
from htools.usercode.script import user_traceback


def dedup(records_: Iterator[tuple], spec: StageTwo, result: ShardResult, url: str,
           duplicates: list[int], group=itemgetter(0)) -> Iterator[tuple]:
    """Drop every record whose --dedup field equals an earlier one's.  Equal fields have
    equal ``group(record)`` keys (the sort key, or a first pass's content key: stage 1
    made sure), so duplicates are adjacent within a run of equal keys, first in input
    order first; only such runs are looked into, and their records decoded only when
    equal keys do not already imply equal fields."""
    name = spec.dedup
    group_key: object = None
    first: tuple | None = None
    seen: set | None = None  # field digests of the current group, once it has two records

    def digest(rec: tuple) -> bytes:
        if name == "__key__":
            return field_digest({"__key__": rec[1]}, name)
        return field_digest(decode(bytes(memoryview(rec[2])[rec[3]:]), url), name)

    for rec in records_:
        g = group(rec)
        if first is None or g != group_key or type(g) is not type(group_key):
            group_key, first, seen = g, rec, None
            yield rec
            continue
        if spec.dedup_by_key:
            dup = True
        else:
            if seen is None:
                seen = {digest(first)}
            d = digest(rec)
            dup = d in seen
            seen.add(d)
        if dup:
            result.samples_read += 1
            result.samples_dropped += 1
            duplicates[0] += 1
            continue
        yield rec


def to_write(records_: Iterator[tuple], spec: StageTwo, result: ShardResult,
             url: str) -> Iterator[dict]:
    """Records -> ``{"__key__", "__tar__"}`` items to write, one group of equal sort keys
    at a time through ``--merge`` / ``reduce_samples`` (records without either are
    written as they come: :func:`.write._write_through`)."""
    fn = spec.reduce.load().reduce_samples if spec.reduce is not None else None
    encoder = SampleEncoder(url, spec.mtime)
    sort_key = (lambda r: r[0][0]) if spec.positions else itemgetter(0)
    for key, group in itertools.groupby(records_, key=sort_key):
        samples = [decode(bytes(memoryview(rec)[start:]), url) for _k, _s, rec, start in group]
        for s in samples:
            s.pop("__url__", None)
        n = len(samples)  # records in this group: mapped, merged, reduced, dropped or failed
        result.samples_read += n
        if spec.merge:
            samples = merge_by_key(samples)
            result.samples_merged += n - len(samples)  # joined into the first of their key
            n = len(samples)
        if fn is None:
            result.samples_mapped += n
            for s in samples:
                yield item(s["__key__"], encoder.encode(s))
            continue
        try:
            out = fn(key, samples)
            outs = [] if out is None else [out] if isinstance(out, dict) else list(out)
        except Exception as e:  # noqa: BLE001 -- the user's reduce_samples: a sample error
            result.sample_error(url, str(key), "reduce_samples raised", e, user_traceback(e),
                                samples=n)
            continue
        if not outs:
            result.samples_dropped += n
            continue
        folded = max(0, n - len(outs))  # n samples in, fewer out: the others folded
        result.samples_reduced += folded
        result.samples_mapped += n - folded
        for o in outs:
            if not isinstance(o, dict):
                raise ScriptError(f"reduce_samples returned {type(o).__name__} for key {key!r}; "
                                  "expected a dict, None or a list of dicts")
            o = dict(o)
            o.setdefault("__key__", str(key) if len(outs) == 1 else None)
            if o["__key__"] is None:
                raise ScriptError(f"reduce_samples returned several samples for key {key!r} "
                                  "without a __key__ for each")
            yield item(o["__key__"], encoder.encode(o))


def item(skey: str, tar) -> dict:
    """What the writer needs of a sample: its key (for distinct_keys) and its tar bytes."""
    return {"__key__": skey, "__tar__": tar}


def merge_by_key(samples: list[dict]) -> list[dict]:
    """Join samples with equal ``__key__`` (in order); a field with two values is an error."""
    joined: dict[str, dict] = {}
    for s in samples:
        into = joined.setdefault(s["__key__"], {"__key__": s["__key__"]})
        for f, v in s.items():
            if f in into and into[f] != v:
                raise HtoolsError(f"--merge: key {s['__key__']!r} has two different values "
                                  f"for field {f!r}")
            into[f] = v
    return list(joined.values())
