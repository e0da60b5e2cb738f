"""htsort: a global sort by a key into M outputs, with optional reduce or --merge."""

from __future__ import annotations

from .engine import RunOptions, report
from .errors import HtoolsError
from .exchange import KeySpec
from .exchange_job import ExchangeSpec, run_exchange
from .script import Script
from .summary import JobSummary


def sort_spec(inputs, outputs: str, *, key: str | None = None, key_type: str = "str",
              reverse: bool = False, merge: bool = False, script: Script | None = None,
              maxcount: int | None = None, memory: int | None = None,
              scratch: str | None = None, mtime: float | None = 0,
              seed: int = 0) -> ExchangeSpec:
    inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    if key_type not in ("str", "int", "float"):
        raise HtoolsError(f"unknown key type {key_type!r}: use str, int or float")
    by_script = script is not None and script.defines("sort_key")
    if merge and (key not in (None, "__key__") or by_script):
        raise HtoolsError("--merge joins samples by __key__; it cannot sort by another key")
    if by_script and key is not None:
        raise HtoolsError("the script defines sort_key(); --key would be ignored: drop one")
    mode = "script" if by_script else "field"
    spec = KeySpec(mode=mode, field=key or "__key__", type=key_type, reverse=reverse, seed=seed)
    return ExchangeSpec("htsort", inputs, outputs, spec, script=script, merge=merge,
                        maxcount=maxcount, memory=memory, scratch=scratch, mtime=mtime)


def sort(inputs, outputs: str, *, key: str | None = None, key_type: str = "str",
         reverse: bool = False, merge: bool = False, script: str | Script | None = None,
         maxcount: int | None = None, memory: int | None = None, scratch: str | None = None,
         mtime: float | None = 0, **options) -> JobSummary:
    """Sort every sample of ``inputs`` (one pattern or several) into ``outputs``.

    ``script`` may define ``process_sample`` (applied first), ``sort_key(sample)``
    and ``reduce_samples(key, samples)``.
    """
    opts = RunOptions(**options)
    if script is not None and not isinstance(script, Script):
        script = load(script)
    spec = sort_spec(inputs, outputs, key=key, key_type=key_type, reverse=reverse, merge=merge,
                     script=script, maxcount=maxcount, memory=memory, scratch=scratch,
                     mtime=mtime)
    return report(run_exchange(spec, opts), opts)


def load(path) -> Script:
    return Script.from_path(path, one_of=("process_sample", "sort_key", "reduce_samples"))
