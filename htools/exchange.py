"""The (MS)² two-stage exchange under htshuffle and htsort.

Stage 1 -- *map and partition* (one task per input shard): read samples (through
the optional ``process_sample``), give each a sort key and a bucket, buffer up to
the memory budget, and on spill sort every bucket's buffer and write one *run
file*: all buckets back to back, then a footer index.  N inputs give about N run
files, never N x M small ones.

Stage 2 -- *merge and write* (one task per output): an output owns a contiguous
range of buckets, which is one contiguous byte range in every run file.  It
range-reads that slice of every run that stage 1's results list, k-way merges
the sorted streams, hands each group of equal keys to the reduce (if any), and
writes its shard atomically.

Buckets are finer than outputs (``BUCKETS_PER_OUTPUT`` each); once stage 1 has
counted every bucket, the planner groups buckets into outputs by count, so the
outputs are balanced even when the splitters were rough.  Equal keys always
share a bucket, so a group is never split across outputs.

A run file::

    [bucket 0 records][bucket 1 records] ... [index][u64 index length][MAGIC]

Each record is a msgpack array ``[sort_key, sample]``; the index is msgpack
``{"offsets": B+1 u64 (bytes), "counts": B u64 (bytes)}``.  Run names carry a
per-attempt random part, so a retried stage-1 task never overwrites a run that
another attempt listed; stage 2 reads only runs its inputs name.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import os
import random
import resource
import struct
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter

import msgpack
import numpy as np

from . import storage, tario
from .errors import HtoolsError, ScriptError
from .mapper import map_samples
from .script import user_traceback
from .streams import Counting, distinct_keys
from .summary import ShardResult
from .task import shard_task

MAGIC = b"HTRUN001"
FOOTER = struct.Struct("<Q8s")
RECORD_OVERHEAD = 160  # Python bytes of a buffered record beyond its payload
BUCKETS_PER_OUTPUT = 16
MAX_BUCKETS = 1 << 16
READ_BUFFER = 256 << 10  # per run stream in stage 2
STREAM_COST = 4 << 20  # memory to budget for one open run stream (reader + unpacker buffers)
MIN_FAN_IN, MAX_FAN_IN = 4, 64


def scratch_options(options: dict | None) -> dict:
    """The job's storage options (endpoints, credentials) with no fsync for local runs:
    a run file lives only as long as the job."""
    options = dict(options or {})
    options["file"] = {**options.get("file", {}), "fsync": False}
    return options


def pack(record) -> bytes:
    # surrogateescape: keys of old non-UTF-8 tars arrive surrogate-escaped and must survive
    return msgpack.packb(record, use_bin_type=True, unicode_errors="surrogateescape")


@dataclass(frozen=True)
class KeySpec:
    """How a sample gets its sort key (htsort) or a random one (htshuffle)."""

    mode: str = "random"  # random | field | script
    field: str = "__key__"
    type: str = "str"  # str | int | float
    reverse: bool = False
    seed: int = 0

    def key_fn(self, script) -> Callable[[dict], object]:
        if self.mode == "script":
            fn = script.load().sort_key
            return fn
        conv = {"str": _as_str, "int": _as_int, "float": _as_float}[self.type]
        name = self.field

        def key_of(sample: dict):
            try:
                value = sample[name]
            except KeyError:
                raise ScriptError(f"sample has no field {name!r} to sort by") from None
            try:
                return conv(value)
            except ValueError as e:
                raise ScriptError(f"field {name!r} = {_as_str(value)[:40]!r} is not "
                                  f"{'an' if self.type == 'int' else 'a'} {self.type} "
                                  f"sort key ({e})") from None

        return key_of


def _as_str(v) -> str:
    return v if isinstance(v, str) else bytes(v).decode("utf-8", "surrogateescape")


def _as_int(v) -> int:
    n = int(_as_str(v))
    if not -(1 << 63) <= n < (1 << 64):
        raise ValueError(f"{n} does not fit in 64 bits")
    return n


def _as_float(v) -> float:
    x = float(_as_str(v))
    if math.isnan(x):
        raise ValueError("NaN has no place in a sort order")
    return x


@dataclass(frozen=True)
class StageOne:
    """Everything a stage-1 task needs (shipped to every task)."""

    scratch: str
    buckets: int
    key: KeySpec
    splitters: tuple = ()
    script: object | None = None  # Script with process_sample / sort_key, or None
    memory: int = 256 << 20
    max_errors: int = 0
    options: dict = field(default_factory=dict)


# ------------------------------------------------------------------ stage 1 --

def _bucket_fn(spec: StageOne) -> Callable[[object], int]:
    """Buckets are key ranges, so a run's slice of consecutive buckets is itself sorted."""
    b = spec.buckets
    if spec.key.mode == "random":  # keys are uniform in [0, 2**63): the top bits pick
        return lambda k: (k * b) >> 63
    splitters = list(spec.splitters)
    if spec.key.reverse:
        return lambda k: b - 1 - bisect.bisect_right(splitters, k)
    return lambda k: bisect.bisect_right(splitters, k)


def partition_shard(input: str, index: int, spec: StageOne) -> dict:
    """Stage-1 task: samples of one input shard -> sorted run files in scratch."""
    rss0 = _rss()
    runs: list[dict] = []
    with shard_task(input, max_errors=spec.max_errors) as result:
        samples = _input_samples(input, spec, result)
        rng = random.Random(f"{spec.key.seed}:{index}")
        key_of = _random_key(rng) if spec.key.mode == "random" else spec.key.key_fn(spec.script)
        bucket_of = _bucket_fn(spec)
        buffers: list[list] = [[] for _ in range(spec.buckets)]
        held = 0
        spill = 0
        for sample in samples:
            sample.pop("__url__", None)
            try:
                k = _checked_key(key_of(sample))
                packed = pack([k, sample])
                bucket = bucket_of(k)
            except Exception as e:
                result.sample_error(input, sample.get("__key__", "?"),
                                    "cannot compute the sort key", e, user_traceback(e))
                continue
            buffers[bucket].append((k, packed))
            held += len(packed) + RECORD_OVERHEAD
            if held >= spec.memory:
                runs.append(write_run(buffers, spec, index, spill))
                spill += 1
                held = 0
        if held or not runs:
            runs.append(write_run(buffers, spec, index, spill))
    if result.status == "failed":
        for r in runs:  # this attempt's runs are useless now
            storage.delete(r["url"], scratch_options(spec.options))
        runs = []
    result.extra = {"runs": runs, "rss_start": rss0, "peak_rss": _peak_rss()}
    return result.as_dict()


def _checked_key(k):
    """Sort keys must be str, int or float (no NaN), comparable with each other."""
    if isinstance(k, bool) or not isinstance(k, (str, int, float)):
        raise TypeError(f"sort key {k!r} is a {type(k).__name__}; expected str, int or float")
    if isinstance(k, float) and math.isnan(k):
        raise ValueError("sort key is NaN")
    if isinstance(k, int) and not -(1 << 63) <= k < (1 << 64):
        raise ValueError(f"sort key {k} does not fit in 64 bits")
    return k


def _random_key(rng: random.Random) -> Callable[[dict], int]:
    return lambda _s: rng.getrandbits(63)


def _input_samples(url: str, spec: StageOne, result: ShardResult) -> Iterator[dict]:
    with storage.open_read(url, spec.options) as raw:
        stream = tario.open_stream_reader(Counting(raw, result, "bytes_in"), url)
        samples = tario.read_samples(stream, url)
        if spec.script is not None and spec.script.defines("process_sample"):
            fn = spec.script.load().process_sample
            yield from map_samples(samples, fn, result, url)
        else:
            for s in samples:
                result.samples_read += 1
                result.samples_mapped += 1
                yield s


def write_run(buffers: list[list], spec: StageOne, index: int, spill: int) -> dict:
    """Sort each bucket's buffer, write them back to back plus the index; empty the buffers."""
    url = storage.join(spec.scratch, f"run-{index:06d}-{spill:04d}-{uuid.uuid4().hex[:8]}.bin")
    offsets = np.zeros(len(buffers) + 1, dtype=np.uint64)
    counts = np.zeros(len(buffers), dtype=np.uint64)
    pos = 0
    with storage.open_write(url, scratch_options(spec.options)) as out:
        for b, buf in enumerate(buffers):
            offsets[b] = pos
            if buf:
                buf.sort(key=itemgetter(0), reverse=spec.key.reverse)  # stable: input order kept
                for _k, packed in buf:
                    out.write(packed)
                    pos += len(packed)
                counts[b] = len(buf)
                buf.clear()
        offsets[-1] = pos
        index_bytes = msgpack.packb({"offsets": offsets.tobytes(), "counts": counts.tobytes()})
        out.write(index_bytes)
        out.write(FOOTER.pack(len(index_bytes), MAGIC))
    size = pos + len(index_bytes) + FOOTER.size
    return {"url": url, "size": size, "offsets": offsets.tobytes(), "counts": counts.tobytes()}


# ------------------------------------------------------------------ stage 2 --

def read_index(url: str, size: int, options: dict | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """A run file's (offsets, counts), from its footer: run files describe themselves
    (stage 2 gets its byte ranges from stage 1's results and does not need this)."""
    options = scratch_options(options)
    tail = storage.read_range(url, size - FOOTER.size, size, options)
    n, magic = FOOTER.unpack(tail)
    if magic != MAGIC:
        raise HtoolsError(f"{storage.redact(url)}: not an htools run file (bad footer)")
    idx = msgpack.unpackb(storage.read_range(url, size - FOOTER.size - n, size - FOOTER.size,
                                             options))
    return (np.frombuffer(idx["offsets"], dtype=np.uint64),
            np.frombuffer(idx["counts"], dtype=np.uint64))


def run_records(url: str, start: int, end: int, options: dict) -> Iterator[list]:
    """The ``[sort_key, sample]`` records of bytes [start, end) of a run, streamed."""
    if end <= start:
        return
    with storage.open_range(url, start, end, options) as f:
        unpacker = msgpack.Unpacker(f, raw=False, read_size=READ_BUFFER, max_buffer_size=0,
                                    strict_map_key=False, unicode_errors="surrogateescape")
        yield from unpacker


@dataclass(frozen=True)
class StageTwo:
    """What a stage-2 task needs besides its own output and bucket range."""

    reverse: bool = False
    reduce: object | None = None  # a script with reduce_samples, or None
    merge: bool = False  # join samples with equal __key__ (htsort --merge)
    max_errors: int = 0
    mtime: float | None = 0
    options: dict = field(default_factory=dict)
    memory: int = 256 << 20
    scratch: str = ""  # where intermediate merges go when there are many runs

    @property
    def scratch_options(self) -> dict:
        return scratch_options(self.options)

    @property
    def fan_in(self) -> int:
        """How many runs one merge pass reads at once (each stream buffers ~1-4 MiB)."""
        return max(MIN_FAN_IN, min(MAX_FAN_IN, self.memory // STREAM_COST))


def merge_partition(output: str, slices: list[tuple[str, int, int]], count: int,
                    spec: StageTwo) -> dict:
    """Stage-2 task: this output's byte range of every run -> one sorted output shard.

    ``slices`` are ``(run url, start, end)`` computed by the client from stage 1's
    offsets, in (input, spill) order; ``count`` is how many records they hold.
    """
    rss0 = _rss()
    temps: list[str] = []
    with shard_task(f"{count} records from {len(slices)} runs", output,
                    max_errors=spec.max_errors) as result:
        try:
            merged = _merge(_fan_in(slices, spec, temps), spec.reverse, spec.scratch_options)
            with storage.open_write(output, spec.options) as out, \
                    tario.TarWriter(Counting(out, result, "bytes_out"), url=output,
                                    mtime=spec.mtime) as writer:
                samples = distinct_keys(_reduced(merged, spec, result, output), output,
                                        "use --merge or a reduce_samples() to combine samples "
                                        "with equal keys")
                for sample in samples:
                    if writer.write(sample):
                        result.samples_written += 1
        except Exception:
            result.samples_read = count  # the whole partition is lost with its output
            raise
        finally:
            for url in temps:
                storage.delete(url, spec.scratch_options)
    result.extra = {"rss_start": rss0, "peak_rss": _peak_rss(), "merge_passes": len(temps)}
    return result.as_dict()


def _merge(slices: list[tuple[str, int, int]], reverse: bool, options: dict
           ) -> Iterator[list]:
    """A stable k-way merge: on equal keys, earlier slices (inputs, spills) come first."""
    streams = [run_records(url, a, b, options) for url, a, b in slices]
    return heapq.merge(*streams, key=itemgetter(0), reverse=reverse)


def _fan_in(slices: list[tuple[str, int, int]], spec: StageTwo,
            temps: list[str]) -> list[tuple[str, int, int]]:
    """Merge groups of slices into intermediate runs until one pass can read them all,
    so the number of open streams (and their buffers) stays within the budget."""
    while len(slices) > spec.fan_in:
        merged = []
        for i in range(0, len(slices), spec.fan_in):
            group = slices[i:i + spec.fan_in]
            if len(group) == 1:
                merged.append(group[0])
                continue
            url = storage.join(spec.scratch, f"merge-{uuid.uuid4().hex}.bin")
            temps.append(url)
            size = 0
            with storage.open_write(url, spec.scratch_options) as out:
                for record in _merge(group, spec.reverse, spec.scratch_options):
                    packed = pack(record)
                    out.write(packed)
                    size += len(packed)
            merged.append((url, 0, size))
        slices = merged
    return slices


def _reduced(records: Iterator[list], spec: StageTwo, result: ShardResult,
             output: str) -> Iterator[dict]:
    """Records -> samples: as they come, or one group of equal keys at a time."""
    if spec.reduce is None and not spec.merge:
        for _k, sample in records:
            result.samples_read += 1
            result.samples_mapped += 1
            yield sample
        return
    groups = itertools.groupby(records, key=itemgetter(0))
    fn = spec.reduce.load().reduce_samples if spec.reduce is not None else None
    for key, group in groups:
        samples = [s for _k, s in group]
        n = len(samples)  # records in this group: counted as mapped, dropped or failed
        result.samples_read += n
        if spec.merge:
            samples = merge_by_key(samples, output)
        if fn is None:
            result.samples_mapped += n
            yield from samples
            continue
        try:
            out = fn(key, samples)
            outs = [] if out is None else [out] if isinstance(out, dict) else list(out)
        except Exception as e:
            result.sample_error(output, str(key), "reduce_samples raised", e, user_traceback(e),
                                samples=n)
            continue
        if not outs:
            result.samples_dropped += n
            continue
        result.samples_mapped += n
        for o in outs:
            if not isinstance(o, dict):
                raise ScriptError(f"reduce_samples returned {type(o).__name__} for key {key!r}; "
                                  "expected a dict, None or a list of dicts")
            o = dict(o)
            o.setdefault("__key__", str(key) if len(outs) == 1 else None)
            if o["__key__"] is None:
                raise ScriptError(f"reduce_samples returned several samples for key {key!r} "
                                  "without a __key__ for each")
            yield o


def merge_by_key(samples: list[dict], output: str) -> list[dict]:
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


# ---------------------------------------------------------------- planning --

def group_buckets(counts: np.ndarray, outputs: int | None, maxcount: int | None
                  ) -> list[tuple[int, int]]:
    """Contiguous bucket ranges, one per output, balanced by sample count."""
    b = len(counts)
    cum = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    total = int(cum[-1])
    if outputs is None:
        outputs = max(1, -(-total // maxcount))
    bounds = [0]
    for j in range(1, outputs):
        target = total * j / outputs
        cut = int(np.searchsorted(cum, target, side="left"))
        if cut > 0 and target - cum[cut - 1] < cum[cut] - target:
            cut -= 1  # the nearer boundary
        bounds.append(min(max(cut, bounds[-1]), b))
    bounds.append(b)
    return list(zip(bounds[:-1], bounds[1:]))


def pick_splitters(keys: list, buckets: int, reverse: bool = False) -> tuple:
    """``buckets - 1`` quantiles of the sampled keys (ascending)."""
    if not keys or buckets <= 1:
        return ()
    keys = sorted(keys)
    n = len(keys)
    return tuple(keys[min(n - 1, (i * n) // buckets)] for i in range(1, buckets))


def sample_keys(input: str, index: int, spec: StageOne, limit: int) -> dict:
    """Pre-pass task (htsort): a reservoir sample of the sort keys of one shard."""
    rng = random.Random(f"splitters:{spec.key.seed}:{index}")
    key_of = spec.key.key_fn(spec.script)
    reservoir: list = []
    seen = 0
    with shard_task(input, max_errors=spec.max_errors) as result:
        for sample in _input_samples(input, spec, result):
            try:
                k = key_of(sample)
            except Exception:
                continue  # stage 1 reports it
            seen += 1
            if len(reservoir) < limit:
                reservoir.append(k)
            else:
                j = rng.randrange(seen)
                if j < limit:
                    reservoir[j] = k
    result.extra = {"keys": reservoir}
    return result.as_dict()


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _peak_rss() -> int:
    """This process's own peak RSS (VmHWM; ru_maxrss would include what the parent had)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
