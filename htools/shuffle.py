"""htshuffle: a global random shuffle of all samples into M outputs."""

from __future__ import annotations

from dataclasses import replace

from htools.exchange import ExchangeSpec, KeySpec, run_exchange
from htools.exchange.keys import check_dedup_field
from htools.exchange.sizing import default_scratch
from htools.fields import check_first_shard
from htools.options import RunOptions
from htools.selection import parse, run_selected
from htools.shards import OutputSet
from htools.summary import JobSummary
from htools.usercode.script import load_script


def shuffle(inputs, outputs: str, *, seed: int = 0, maxcount: int | None = None,
            script=None, memory: int | None = None, scratch: str | None = None,
            mtime: float | None = 0, fan_in: int | None = None, py_files=(),
            dedup: str | None = None, keep: str | None = None, drop: str | None = None,
         select_by: str | None = None, select_column: str | None = None,
         **options) -> JobSummary:
    """Shuffle every sample of ``inputs`` into ``outputs`` (``@M``, or ``%06d`` with
    ``maxcount``).  Same seed, inputs and outputs give byte-identical outputs.
    ``script`` (a path or a function) may define ``process_sample``, applied first;
    ``py_files`` travel with a script file, besides the modules of its own folder.
    ``dedup="FIELD"`` keeps only the first sample (in input order) of each distinct
    FIELD value (sha256 of its bytes); the rest count as dropped (``extra.duplicates``).
    Returns the job summary; prints nothing."""
    opts = RunOptions.of(options)
    select = parse(keep, drop, select_by, select_column, opts.storage_options)
    inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    if dedup is not None:
        check_dedup_field(dedup)
        if script is None:  # a script's process_sample may add the field
            check_first_shard(inputs, {"--dedup": dedup}, opts.storage_options)
    spec = ExchangeSpec("htshuffle", inputs, outputs,
                        KeySpec(mode="random", seed=seed, dedup=dedup),
                        script=load_script(script, require=("process_sample",), py_files=py_files)
                        if script is not None else None,
                        maxcount=maxcount, memory=memory, scratch=scratch, mtime=mtime,
                        fan_in=fan_in)
    return run_selected(select, opts,
                        lambda o: scratch or default_scratch(o, OutputSet.parse(outputs)),
                        lambda sel, o: run_exchange(replace(spec, select=sel), o))
