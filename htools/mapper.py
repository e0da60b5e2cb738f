"""htmapper: run a user's ``process_sample`` over every sample of every shard.

One task per input shard writes one output shard, atomically: a shard whose
task fails leaves no output, so a retried or resumed shard never duplicates.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from . import engine, preflight, shards, storage, tario
from .engine import RunOptions, Task
from .errors import HtoolsError, ScriptError, hide_credentials
from .script import Script, load_script, user_traceback
from .streams import Counting, distinct_keys
from .summary import JobSummary, ShardResult
from .task import shard_task


def expose_key(sample: dict) -> dict:
    """The sample as the script sees it: ``key`` mirrors ``__key__`` unless a real field has that name."""
    if "key" not in sample:
        sample["key"] = sample["__key__"]
    return sample


def outputs_of(result, key: str, aliased: bool) -> list[dict]:
    """Normalise what ``process_sample`` returned into a list of output samples.

    ``key`` is the input's key and ``aliased`` whether the script saw it as ``key``
    too.  An output with nothing to write (only ``_``-fields) is left out.
    """
    if result is None:
        return []
    if isinstance(result, dict):
        items = [result]
    elif isinstance(result, Iterable) and not isinstance(result, (str, bytes)):
        items = list(result)
    else:
        raise ScriptError(f"process_sample returned {type(result).__name__}; "
                          "expected a dict, None, or a list of dicts")
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ScriptError(f"process_sample returned a list holding {type(item).__name__}; "
                              "expected dicts")
        item = _with_key(item, key, aliased, n if len(items) > 1 else None)
        if any(not f.startswith("_") for f in item):
            out.append(item)
    return out


def _with_key(item: dict, key: str, aliased: bool, n: int | None) -> dict:
    """The output's ``__key__``: a changed ``__key__`` or ``key`` renames the sample; an
    unchanged one (or none) keeps the input's, suffixed ``-n`` when one input gives several."""
    item = dict(item)
    named = item.pop("__key__", key)
    if aliased and "key" in item:
        alias = item.pop("key")
        alias = bytes(alias).decode("utf-8") if isinstance(alias, (bytes, bytearray)) else alias
        if named != key and alias != key and named != alias:
            raise ScriptError(f"process_sample returned __key__ {named!r} and key {alias!r}; "
                              "give one of them")
        named = named if named != key else alias
    if isinstance(named, (bytes, bytearray)):
        named = bytes(named).decode("utf-8")
    if named == key and n is not None:
        named = f"{key}-{n}"  # several outputs of one input need distinct keys
    item["__key__"] = str(named)
    item.pop("__url__", None)
    return item


def map_samples(samples: Iterator[dict], fn, result: ShardResult, url: str) -> Iterator[dict]:
    """Apply ``fn`` to each sample, counting; yields the output samples.

    The common case -- ``fn`` returns one dict that keeps the input's key (as
    ``__key__`` and ``key``, or without them) -- is :func:`outputs_of` inlined: the
    same output, without its general checks.
    """
    for sample in samples:
        result.samples_read += 1
        key = sample["__key__"]
        try:
            aliased = "key" not in sample
            if aliased:  # expose_key(), inlined
                sample["key"] = key
            out = fn(sample)
            if type(out) is dict and (
                    (named := out.get("__key__", key)) is key
                    or (type(named) is str and named == key)) and (
                    not aliased or (alias := out.get("key", key)) is key
                    or (type(alias) is str and alias == key)):
                item = dict(out)  # _with_key(out, key, aliased, None), for this case
                item["__key__"] = key
                if aliased:
                    item.pop("key", None)
                item.pop("__url__", None)
                outs = ()  # nothing to write, unless a field does not start with "_"
                for f in item:
                    if not f.startswith("_"):
                        outs = None  # the one output is item
                        break
            else:
                outs = outputs_of(out, key, aliased)
        except Exception as e:  # the user's code raised: name shard and key
            if getattr(e, "fatal", False):  # every sample would fail so (a missing program)
                raise
            result.sample_error(url, key, "process_sample raised", e, user_traceback(e))
            continue
        if outs is None:
            result.samples_mapped += 1
            yield item
            continue
        if not outs:
            result.samples_dropped += 1
            continue
        result.samples_mapped += 1
        yield from outs


def map_shard(input: str, output: str, script: Script, *, options: dict | None = None,
              max_errors: int = 0, mtime: float | None = 0, index: bool = True) -> dict:
    """Task: read ``input``, map every sample through the script, write ``output``
    (hashing it for the shard index when ``index``)."""
    with shard_task(input, output, max_errors=max_errors) as result:
        fn = script.load().process_sample
        with storage.open_read(input, options) as raw:
            samples = tario.read_samples(
                tario.open_stream_reader(Counting(raw, result, "bytes_in"), input), input)
            with storage.open_write(output, options) as out:
                counted = Counting(out, result, "bytes_out", digest=index)
                with tario.TarWriter(counted, url=output, mtime=mtime,
                                     count_fields=True) as writer:
                    write = writer.write
                    for s in distinct_keys(map_samples(samples, fn, result, input),
                                           input, "give each output its own __key__"):
                        try:
                            n = write(s)
                        except (TypeError, ValueError):
                            n = _write(writer, s, output)  # raises, naming the sample
                        if n:
                            result.samples_written += 1
                result.fields = dict(writer.fields)
            # after the commit: the hashing thread finishes while the commit (fsync) runs
            result.sha256 = counted.hexdigest()
    return result.as_dict()


def _write(writer, sample: dict, url: str) -> int:
    try:
        return writer.write(sample)
    except (TypeError, ValueError) as e:
        raise ScriptError(f"{hide_credentials(url)}: cannot write output sample "
                          f"{sample.get('__key__')!r}: {e}") from None


def plan(inputs, outputs: str, script: Script, opts: RunOptions, *,
         mtime: float | None = 0) -> list[Task]:
    """One task per input shard; outputs pair with inputs in order."""
    ins = shards.expand_all(inputs)
    outs = shards.OutputSet.parse(outputs).urls(len(ins))
    if len(set(outs)) != len(outs):
        raise HtoolsError(f"output pattern {outputs!r} names the same output twice")
    clash = set(ins) & set(outs)
    if clash:
        raise HtoolsError(f"output {hide_credentials(sorted(clash)[0])} is also an input")
    kw = {"script": script, "options": storage.resolve_options(opts.storage_options),
          "max_errors": opts.max_errors, "mtime": mtime, "index": opts.index}
    return [Task(map_shard, {"input": i, "output": o, **kw}, input=i, output=o)
            for i, o in zip(ins, outs)]


def map_shards(inputs, outputs: str, script=None, *, shell: str | None = None,
               mtime: float | None = 0, py_files=(), **options) -> JobSummary:
    """Run ``process_sample`` from ``script`` over every sample of every input shard.

    ``script`` is a path to a script, a :class:`~htools.script.Script`, or a
    function; ``py_files`` (files or folders) travel with a script file, besides the
    modules of its own folder.  Or ``shell="COMMAND"`` instead of a script: the command
    runs once per sample in a folder of ``sample.FIELD`` files (see :mod:`htools.shell`).
    ``options`` are those of :class:`~htools.engine.RunOptions`
    (``client=``, ``cluster=``, ``workers=``, ``resume=``, ``max_errors=`` ...).
    Returns the job summary (``summary.ok``: every shard succeeded); prints nothing.
    """
    opts = RunOptions.of(options)
    if (script is None) == (shell is None):
        raise HtoolsError("give a script (-p SCRIPT.py) or a shell command (-s 'COMMAND'), "
                          "not both" if script is not None else
                          "give a script (-p SCRIPT.py) or a shell command (-s 'COMMAND')")
    if shell is not None:
        script = Script.from_shell(shell)
    script = load_script(script, require=("process_sample",), py_files=py_files)
    tasks = plan(inputs, outputs, script, opts, mtime=mtime)
    preflight.check([t.input for t in tasks], [t.output for t in tasks],
                    opts.storage_options, write=not opts.dry_run)
    summary = engine.run("htmapper", tasks, opts, group=True)
    return engine.finish(summary, opts, shards.OutputSet.parse(outputs),
                         [t.output for t in tasks])
