"""htsort: a global sort by a key into M outputs, with optional reduce or --merge."""

from __future__ import annotations

from dataclasses import replace

from htools.errors import HtoolsError
from htools.exchange import ExchangeSpec, KeySpec, run_exchange
from htools.exchange.keys import check_dedup_field
from htools.exchange.sizing import default_scratch
from htools.fields import check_first_shard
from htools.options import RunOptions
from htools.selection import parse, run_selected
from htools.shards import OutputSet
from htools.summary import JobSummary
from htools.usercode.script import load_script

SCRIPT_FUNCTIONS = ("process_sample", "sort_key", "reduce_samples")


def sort(inputs, outputs: str, *, key: str | None = None, key_type: str = "str",
         reverse: bool = False, merge: bool = False, script=None,
         maxcount: int | None = None, memory: int | None = None, scratch: str | None = None,
         mtime: float | None = 0, fan_in: int | None = None, py_files=(),
         dedup: str | None = None, keep: str | None = None, drop: str | None = None,
         select_by: str | None = None, select_column: str | None = None,
         **options) -> JobSummary:
    """Sort every sample of ``inputs`` (one pattern or several) into ``outputs``.

    ``script`` (a path, or a function used as ``process_sample``) may define
    ``process_sample`` (applied first), ``sort_key(sample)`` and
    ``reduce_samples(key, samples)``; ``py_files`` travel with a script file, besides the
    modules of its own folder.  ``dedup="FIELD"`` keeps only the first sample, in input
    order, of each distinct FIELD value (when the sort key is not FIELD itself, through
    one more pass over scratch).  Returns the job summary; prints nothing.
    """
    opts = RunOptions.of(options)
    select = parse(keep, drop, select_by, select_column, opts.storage_options)
    inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    if key_type not in ("str", "int", "float"):
        raise HtoolsError(f"unknown key type {key_type!r}: use str, int or float")
    if script is not None:
        script = load_script(script, one_of=SCRIPT_FUNCTIONS, py_files=py_files)
    by_script = script is not None and script.defines("sort_key")
    if merge and (key not in (None, "__key__") or by_script):
        raise HtoolsError("--merge joins samples by __key__; it cannot sort by another key")
    if by_script and key is not None:
        raise HtoolsError("the script defines sort_key(); --key would be ignored: drop one")
    if dedup is not None and merge:
        raise HtoolsError("--dedup and --merge do not combine: --merge joins samples with "
                          "equal __key__, --dedup drops them")
    if dedup is not None:
        check_dedup_field(dedup)
    if script is None or not script.defines("process_sample"):  # which may add fields
        check_first_shard(inputs, {"--key": None if by_script else key, "--dedup": dedup},
                          opts.storage_options)
    keyspec = KeySpec(mode="script" if by_script else "field", field=key or "__key__",
                      type=key_type, reverse=reverse, dedup=dedup)
    spec = ExchangeSpec("htsort", inputs, outputs, keyspec, script=script, merge=merge,
                        maxcount=maxcount, memory=memory, scratch=scratch, mtime=mtime,
                        fan_in=fan_in)
    return run_selected(select, opts,
                        lambda o: scratch or default_scratch(o, OutputSet.parse(outputs)),
                        lambda sel, o: run_exchange(replace(spec, select=sel), o))

