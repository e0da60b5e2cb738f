"""htmapper: run a user's ``process_sample`` over every sample of every shard.

One task per input shard writes one output shard, atomically: a shard whose
task fails leaves no output, so a retried or resumed shard never duplicates.
"""

from __future__ import annotations

from htools import lineage, shardindex, shards, storage
from htools.errors import HtoolsError, ScriptError, hide_credentials
from htools.exchange.sizing import default_scratch
from htools.options import RunOptions
from htools.runtime import engine, preflight
from htools.runtime.engine import Task
from htools.runtime.shardio import read_shard, write_shard
from htools.runtime.streams import distinct_keys
from htools.runtime.task import shard_task
from htools.selection import Selection, parse, run_selected, selected, selection_lineage
from htools.summary import JobSummary
from htools.usercode.apply import map_samples
from htools.usercode.script import Script, load_script
from htools.usercode.shipping import Shipment


def map_shard(input: str, output: str, script: Script, *, options: dict | None = None,
              max_errors: int = 0, mtime: float | None = 0, index: bool = True,
              select: Selection | None = None) -> dict:
    """Task: read ``input``, map every sample through the script, write ``output``
    (hashing it for the shard index when ``index``)."""
    with shard_task(input, output, max_errors=max_errors) as result:
        fn = script.load().process_sample
        with read_shard(input, options, result) as samples, \
                write_shard(output, options, result, mtime=mtime, index=index) as writer:
            samples = selected(samples, select, result, input, options)
            write = writer.write
            for s in distinct_keys(map_samples(samples, fn, result, input),
                                   input, "give each output its own __key__"):
                try:
                    n = write(s)
                except (TypeError, ValueError):
                    n = _write(writer, s, output)  # raises, naming the sample
                if n:
                    result.samples_written += 1
    return result.as_dict()


def _write(writer, sample: dict, url: str) -> int:
    try:
        return writer.write(sample)
    except (TypeError, ValueError) as e:
        raise ScriptError(f"{hide_credentials(url)}: cannot write output sample "
                          f"{sample.get('__key__')!r}: {e}") from None


def plan(inputs, outputs: str, script: Script, opts: RunOptions, *,
         mtime: float | None = 0, select: Selection | None = None) -> list[Task]:
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
    return [Task(map_shard, {"input": i, "output": o, **kw}, input=i, output=o)
            for i, o in zip(ins, outs)]


def map_shards(inputs, outputs: str, script=None, *, shell: str | None = None,
               mtime: float | None = 0, py_files=(), keep: str | None = None,
               drop: str | None = None, select_by: str | None = None,
               select_column: str | None = None, **options) -> JobSummary:
    """Run ``process_sample`` from ``script`` over every sample of every input shard.

    ``script`` is a path to a script, a :class:`~htools.usercode.script.Script`, or a
    function; ``py_files`` (files or folders) travel with a script file, besides the
    modules of its own folder.  Or ``shell="COMMAND"`` instead of a script: the command
    runs once per sample in a folder of ``sample.FIELD`` files (see :mod:`htools.usercode.shell`).
    ``keep``/``drop``: a list (text, one value a line, or ``.parquet``) of the values
    (``select_by``: ``__key__``, a FIELD or FIELD:MEMBER) whose samples are kept/dropped
    before ``process_sample`` (see :mod:`htools.selection`).
    ``options`` are those of :class:`~htools.options.RunOptions`
    (``client=``, ``cluster=``, ``workers=``, ``resume=``, ``max_errors=`` ...).
    Returns the job summary (``summary.ok``: every shard succeeded); prints nothing.
    """
    opts = RunOptions.of(options)
    select = parse(keep, drop, select_by, select_column, opts.storage_options)
    if (script is None) == (shell is None):
        raise HtoolsError("give a script (-p SCRIPT.py) or a shell command (-s 'COMMAND'), "
                          "not both" if script is not None else
                          "give a script (-p SCRIPT.py) or a shell command (-s 'COMMAND')")
    if shell is not None:
        script = Script.from_shell(shell)
    shipment = Shipment(load_script(script, require=("process_sample",), py_files=py_files))
    outset = shards.OutputSet.parse(outputs)
    tasks = plan(inputs, outputs, shipment.script, opts, mtime=mtime)
    preflight.check([t.input for t in tasks], [t.output for t in tasks],
                    opts.storage_options, write=not opts.dry_run)
    made = lineage.make("htmapper", inputs=[t.input for t in tasks], outputs=outputs,
                        script=shipment.script,
                        options={"mtime": mtime, **selection_lineage(select)})
    shardindex.check_lineage(outset, made, opts)

    def run(sel: Selection | None, run_opts: RunOptions) -> JobSummary:
        for t in tasks:
            t.kwargs["select"] = sel
        summary = engine.run("htmapper", tasks, run_opts, group=True, shipment=shipment)
        return shardindex.finish(summary, run_opts, outset, [t.output for t in tasks], made)

    return run_selected(select, opts, lambda o: default_scratch(o, outset), run)
