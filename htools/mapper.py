"""htmapper: run a user's ``process_sample`` (or ``process_batch``) over every sample of
every shard.

One task per input shard writes one output shard, atomically: a shard whose
task fails leaves no output, so a retried or resumed shard never duplicates.  A
script with ``process_batch`` runs as a pipeline of threads inside the task
(:mod:`htools.usercode.batches`).
"""

from __future__ import annotations

from htools import lineage, lineage_record, shards, storage
from htools.errors import HtoolsError, ScriptError, hide_credentials
from htools.options import RunOptions
from htools.runtime import engine, preflight
from htools.runtime.engine import Task
from htools.runtime.shardio import read_shard, write_shard
from htools.runtime.streams import distinct_keys
from htools.runtime.task import shard_task
from htools.scratch import default_scratch
from htools.selection import Selection, parse, run_selected, selected, selection_lineage
from htools.summary import JobSummary
from htools.usercode.apply import map_samples
from htools.usercode.batches import BatchSpec, run_batches
from htools.usercode.script import Script, load_script
from htools.usercode.shipping import Shipment

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
            samples = selected(samples, select, result, input, options)
            write = writer.write
            for s in distinct_keys(map_samples(samples, fn, result, input), input, REMEDY):
                try:
                    n = write(s)
                except (TypeError, ValueError):
                    n = _write(writer, s, output)  # raises, naming the sample
                if n:
                    result.samples_written += 1
    return result.as_dict()


def _map_batches(input: str, output: str, script: Script, result, options: dict | None,
                 mtime: float | None, index: bool, batch: BatchSpec,
                 select: Selection | None = None) -> None:
    """:func:`map_shard` of a ``process_batch`` script (called inside its task frame)."""
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

        samples = selected(samples, select, result, input, options)
        run_batches(samples, ns, result, input, write, batch, check)


def _write(writer, sample: dict, url: str) -> int:
    try:
        return writer.write(sample)
    except (TypeError, ValueError) as e:
        raise ScriptError(f"{hide_credentials(url)}: cannot write output sample "
                          f"{sample.get('__key__')!r}: {e}") from None


def plan(inputs, outputs: str, script: Script, opts: RunOptions, *,
         mtime: float | None = 0, select: Selection | None = None,
         batch: BatchSpec | None = None) -> list[Task]:
    """One task per input shard; outputs pair with inputs in order."""
    ins = shards.expand_all(inputs, opts.storage_options)
    outs = shards.OutputSet.parse(outputs).urls(len(ins))
    if len(set(outs)) != len(outs):
        raise HtoolsError(f"output pattern {outputs!r} names the same output twice")
    clash = set(ins) & set(outs)
    if clash:
        raise HtoolsError(f"output {hide_credentials(sorted(clash)[0])} is also an input")
    kw = {"script": script, "options": storage.resolve_options(opts.storage_options),
          "max_errors": opts.max_errors, "mtime": mtime, "index": opts.index, "select": select}
    if batch is not None:
        kw["batch"] = batch
    return [Task(map_shard, {"input": i, "output": o, **kw}, input=i, output=o)
            for i, o in zip(ins, outs)]


def map_shards(inputs, outputs: str, script=None, *, shell: str | None = None,
               batch_fn=None, prepare_fn=None, batch_size: int | None = None,
               prepare_threads: int | None = None, mtime: float | None = 0, py_files=(),
               keep: str | None = None, drop: str | None = None, select_by: str | None = None,
               select_column: str | None = None, **options) -> JobSummary:
    """Run ``process_sample`` (or ``process_batch``) from ``script`` over every sample of
    every input shard.

    ``script`` is a path to a script, a :class:`~htools.usercode.script.Script`, or a
    function (serving as ``process_sample``); ``py_files`` (files or folders) travel with
    a script file, besides the modules of its own folder.  Or ``shell="COMMAND"`` instead
    of a script: the command runs once per sample in a folder of ``sample.FIELD`` files
    (see :mod:`htools.usercode.shell`).  Or ``batch_fn=fn`` (with ``prepare_fn=fn``
    optional): functions serving as ``process_batch`` and ``prepare_sample``.

    A script defining ``process_batch(samples)`` (instead of ``process_sample``) gets
    lists of up to ``batch_size`` samples (default 32) of one shard, prepared by its
    optional ``prepare_sample(sample)`` on ``prepare_threads`` threads per task
    (default 1), see :mod:`htools.usercode.batches`.
    ``keep``/``drop``: a list (text, one value a line, or ``.parquet``) of the values
    (``select_by``: ``__key__``, a FIELD or FIELD:MEMBER) whose samples are kept/dropped
    before the script sees them (see :mod:`htools.selection`).
    ``options`` are those of :class:`~htools.options.RunOptions`
    (``client=``, ``cluster=``, ``workers=``, ``resume=``, ``max_errors=`` ...).
    Returns the job summary (``summary.ok``: every shard succeeded); prints nothing.
    """
    opts = RunOptions.of(options)
    select = parse(keep, drop, select_by, select_column, opts.storage_options)
    shipment = Shipment(_script(script, shell, batch_fn, prepare_fn, py_files))
    batch = _batch_spec(shipment.script, batch_size, prepare_threads)
    outset = shards.OutputSet.parse(outputs)
    tasks = plan(inputs, outputs, shipment.script, opts, mtime=mtime, batch=batch)
    preflight.check([t.input for t in tasks], [t.output for t in tasks],
                    opts.storage_options, write=not opts.dry_run)
    made = lineage.make("htmapper", inputs=[t.input for t in tasks], outputs=outputs,
                        script=shipment.script,
                        options={"mtime": mtime, **selection_lineage(select),
                                 **({"batch_size": batch.batch_size} if batch else {})})
    replacing = lineage_record.check_lineage(outset, made, opts, [t.output for t in tasks])

    def run(sel: Selection | None, run_opts: RunOptions) -> JobSummary:
        for t in tasks:
            t.kwargs["select"] = sel
        summary = engine.run("htmapper", tasks, run_opts, group=True, shipment=shipment,
                             on_start=lambda kept: lineage_record.start_record(
                                 outset, made, run_opts, replacing, kept))
        return lineage_record.finish(summary, run_opts, outset, [t.output for t in tasks], made)

    return run_selected(select, opts, lambda o: default_scratch(o, outset), run)


def _script(script, shell: str | None, batch_fn, prepare_fn, py_files) -> Script:
    """The one Script of a job from ``map_shards``' arguments (exactly one way given)."""
    given = [name for name, v in (("a script", script), ("a shell command", shell),
                                  ("batch_fn", batch_fn)) if v is not None]
    if len(given) != 1:
        raise HtoolsError("give a script (-p SCRIPT.py) or a shell command (-s 'COMMAND')"
                          + (f", not both ({' and '.join(given)})" if given else ""))
    if prepare_fn is not None and batch_fn is None:
        raise HtoolsError("prepare_fn goes with batch_fn (a script file defines "
                          "prepare_sample() beside process_batch())")
    if shell is not None:
        script = Script.from_shell(shell)
    elif batch_fn is not None:
        script = Script.from_batch_function(batch_fn, prepare_fn)
    script = load_script(script, one_of=("process_sample",) if callable(script) else (),
                         py_files=py_files)
    if not (script.defines("process_sample") or script.defines("process_batch")):
        raise ScriptError(f"script {script.filename} does not define process_sample() "
                          "(or process_batch(samples))")
    if script.defines("process_sample") and script.defines("process_batch"):
        raise ScriptError(f"script {script.filename} defines both process_sample() and "
                          "process_batch(): keep one (process_batch gets lists of samples)")
    if script.defines("prepare_sample") and not script.defines("process_batch"):
        raise ScriptError(f"script {script.filename} defines prepare_sample() without "
                          "process_batch(): prepare_sample feeds the batches")
    return script


def _batch_spec(script: Script, batch_size: int | None,
                prepare_threads: int | None) -> BatchSpec | None:
    """How the batches run (None for a process_sample script)."""
    spec = BatchSpec.of(batch_size, prepare_threads)  # a bad value is refused either way
    if script.defines("process_batch"):
        return spec
    if batch_size is not None or prepare_threads is not None:
        raise HtoolsError("--batch-size and --prepare-threads go with a script that defines "
                          "process_batch(samples), not process_sample")
    return None
