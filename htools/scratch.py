"""The scratch of a tool's ``--keep``/``--drop`` list (:func:`htools.selection.prepared`
asks for it once its cluster is up): the exchange's choice, with the exchange imported
only when a list is built (htmapper and htextract run without it otherwise)."""

from __future__ import annotations

from collections.abc import Callable

from htools.options import RunOptions
from htools.shards import OutputSet


def lazy_scratch(outset: Callable[[], OutputSet]) -> Callable[[RunOptions], str]:
    """``scratch(opts)`` for :func:`htools.selection.prepared`:
    :func:`htools.exchange.sizing.default_scratch` beside ``outset()``."""

    def scratch(opts: RunOptions) -> str:
        from htools.exchange.sizing import default_scratch  # the exchange: only if needed

        return default_scratch(opts, outset())

    return scratch
