"""htmapper's task function, in a module of its own: what a worker imports to run it.

:func:`map_shard` reads one input shard, maps every sample through the script and writes
one output shard, atomically.  It lives apart from :mod:`htools.mapper` (the job: plan,
pre-flight checks, lineage, the run loop) so that a worker's first task imports only
what the task runs: measured, ``htools.mapper`` cost a worker ~136 ms over ~60 modules,
this module about a third of that.  The selection filter and the batch pipeline are
imported when a task uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from htools.errors import ScriptError, hide_credentials
from htools.runtime.shardio import read_shard, write_shard
from htools.runtime.streams import distinct_keys, repeated_key
from htools.runtime.task import shard_task
from htools.usercode.apply import map_samples

if TYPE_CHECKING:
    from htools.selection import Selection
    from htools.summary import ShardResult
    from htools.usercode.batches import BatchSpec
    from htools.usercode.script import Script

REMEDY = "give each output its own __key__"


def map_shard(input: str, output: str, script: Script, *, options: dict | None = None,
              max_errors: int = 0, mtime: float | None = 0, index: bool = True,
              select: Selection | None = None, batch: BatchSpec | None = None) -> dict:
    """Task: read ``input``, map every sample through the script, write ``output``
    (hashing it for the shard index when ``index``); ``batch``: the script's
    ``process_batch``, in batches."""
    if batch is not None:
        with shard_task(input, output, max_errors=max_errors) as result:
            _map_batches(input, output, script, result, options, mtime, index, batch, select)
        return result.as_dict()
    with shard_task(input, output, max_errors=max_errors) as result:
        fn = script.load().process_sample
        with read_shard(input, options, result) as samples, \
                write_shard(output, options, result, mtime=mtime, index=index) as writer:
            if select is not None:
                samples = _selected(samples, select, result, input, options)
            write, previous, written = writer.write, None, 0
            try:
                for s in map_samples(samples, fn, result, input):
                    key = s["__key__"]
                    if key == previous:  # distinct_keys(), inlined (a generator less)
                        raise repeated_key(input, key, REMEDY)
                    previous = key
                    try:
                        n = write(s)
                    except (TypeError, ValueError):
                        n = _write(writer, s, output)  # raises, naming the sample
                    if n:
                        written += 1
            finally:
                result.samples_written += written
    return result.as_dict()


def _selected(samples, select: Selection, result: ShardResult, input: str,
              options: dict | None):
    """:func:`htools.selection.selected` (imported by the tasks of a job with a list)."""
    from htools.selection import selected

    return selected(samples, select, result, input, options)


def _map_batches(input: str, output: str, script: Script, result: ShardResult,
                 options: dict | None, mtime: float | None, index: bool, batch: BatchSpec,
                 select: Selection | None = None) -> None:
    """:func:`map_shard` of a ``process_batch`` script (called inside its task frame)."""
    from htools.usercode.batches import run_batches

    ns = script.load()
    previous: list[str] = []  # the key of the last output so far

    def check(outs: list[dict]) -> list[dict]:  # distinct_keys, across batches too
        head = [{"__key__": previous[-1]}] if previous else []
        checked = list(distinct_keys(iter(head + outs), input, REMEDY))[len(head):]
        if outs:
            previous[:] = [outs[-1]["__key__"]]
        return checked

    with read_shard(input, options, result) as samples, \
            write_shard(output, options, result, mtime=mtime, index=index) as writer:

        def write(sample: dict) -> None:
            if _write(writer, sample, output):
                result.samples_written += 1

        if select is not None:
            samples = _selected(samples, select, result, input, options)
        run_batches(samples, ns, result, input, write, batch, check)


def _write(writer, sample: dict, url: str) -> int:
    try:
        return writer.write(sample)
    except (TypeError, ValueError) as e:
        raise ScriptError(f"{hide_credentials(url)}: cannot write output sample "
                          f"{sample.get('__key__')!r}: {e}") from None
