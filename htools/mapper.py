"""htmapper: run a user's ``process_sample`` (or ``process_batch``) over every sample of
every shard.

One task per input shard writes one output shard, atomically: a shard whose
task fails leaves no output, so a retried or resumed shard never duplicates.  A
script with ``process_batch`` runs as a pipeline of threads inside the task
(:mod:`htools.usercode.batches`).  The task function, :func:`map_shard`, lives in
:mod:`htools.maptask`, so that workers import only what it runs.
"""

from __future__ import annotations

from htools import lineage, lineage_record, shards, storage
from htools.errors import HtoolsError, ScriptError, hide_credentials
from htools.maptask import map_shard
from htools.options import RunOptions
from htools.runtime import engine, preflight
from htools.runtime.engine import Task
from htools.scratch import default_scratch
from htools.selection import Selection, parse, run_selected, selection_lineage
from htools.summary import JobSummary
from htools.usercode.batches import BatchSpec
from htools.usercode.script import Script, load_script
from htools.usercode.shipping import Shipment

__all__ = ["map_shard", "map_shards", "plan"]  # map_shard: the task, from htools.maptask


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
    made = lineage.counted(lineage.make(
        "htmapper", inputs=[t.input for t in tasks], outputs=outputs, script=shipment.script,
        options={"mtime": mtime, **selection_lineage(select),
                 **({"batch_size": batch.batch_size} if batch else {})}), outset.count)
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
