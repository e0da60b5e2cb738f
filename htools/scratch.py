"""The exchange's default scratch folder (:func:`htools.exchange.sizing.default_scratch`),
with the exchange imported only when a job needs it: it takes ~40 ms to import, and
htmapper, htextract and htupload run without it unless a ``--keep``/``--drop`` list
(or an htupload split) is built."""

from __future__ import annotations

from htools.options import RunOptions
from htools.shards import OutputSet


def default_scratch(opts: RunOptions, outset: OutputSet) -> str:
    """:func:`htools.exchange.sizing.default_scratch`, imported on the first call."""
    from htools.exchange.sizing import default_scratch as scratch

    return scratch(opts, outset)
