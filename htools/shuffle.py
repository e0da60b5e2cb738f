"""htshuffle: a global random shuffle of all samples into M outputs."""

from __future__ import annotations

from .engine import RunOptions, report
from .exchange import KeySpec
from .exchange_job import ExchangeSpec, run_exchange
from .summary import JobSummary


def shuffle_spec(inputs, outputs: str, *, seed: int = 0, maxcount: int | None = None,
                 script=None, memory: int | None = None, scratch: str | None = None,
                 mtime: float | None = 0) -> ExchangeSpec:
    inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    return ExchangeSpec("htshuffle", inputs, outputs, KeySpec(mode="random", seed=seed),
                        script=script, maxcount=maxcount, memory=memory, scratch=scratch,
                        mtime=mtime)


def shuffle(inputs, outputs: str, *, seed: int = 0, maxcount: int | None = None,
            script=None, memory: int | None = None, scratch: str | None = None,
            mtime: float | None = 0, **options) -> JobSummary:
    """Shuffle every sample of ``inputs`` into ``outputs`` (``@M``, or ``%06d`` with
    ``maxcount``).  Same seed and inputs give byte-identical outputs."""
    from .mapper import load_script

    opts = RunOptions(**options)
    spec = shuffle_spec(inputs, outputs, seed=seed, maxcount=maxcount,
                        script=load_script(script) if script else None, memory=memory,
                        scratch=scratch, mtime=mtime)
    return report(run_exchange(spec, opts), opts)
