"""Fields a job asks for that its samples lack, refused in one line before (or right
after) the work: ``htextract -f`` (no sample of the job has the field), and
``htshuffle``/``htsort`` ``--key``/``--dedup`` (no sample of the first input shard has
it), instead of an empty column or one sample error per sample of every shard.
``__key__``, ``__url__`` and other ``__`` names are always there."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from htools import shards
from htools.errors import HtoolsError, hide_credentials
from htools.runtime.shardio import read_shard
from htools.summary import ShardResult


class MissingFields(HtoolsError):
    """Fields asked for that no sample had."""


def absent(fields: Iterable[str], seen: Iterable[str]) -> list[str]:
    """The fields of ``fields`` (not ``__`` names) that are not in ``seen``."""
    seen = set(seen)
    return [f for f in fields if f and not f.startswith("__") and f not in seen]


def _had(seen: Iterable[str]) -> str:
    return ", ".join(sorted(f for f in seen if not f.startswith("__"))) or "none"


def check_present(fields: Iterable[str], seen: Iterable[str],
                  allow_missing: bool = False) -> str | None:
    """``htextract -f``: refuse, in one line, fields that no sample of the job had (a
    typo, or ``json`` for ``mean.json``) unless ``allow_missing``; then that line is
    returned, as a note for the summary."""
    seen = set(seen)
    missing = absent(fields, seen)
    if not missing:
        return None
    line = (f"no sample has the field{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(the samples' fields: {_had(seen)})")
    if not allow_missing:
        raise MissingFields(line + "; --allow-missing writes it as empty")
    return line + ": written as empty (--allow-missing)"


def check_first_shard(inputs, wanted: Mapping[str, str | None],
                      options: dict | None) -> None:
    """``htshuffle``/``htsort``: refuse, in one line, an option's field (``wanted``:
    option -> field, e.g. ``{"--dedup": "jpg"}``) that no sample of the first input
    shard has.  The shard is read until every field has been seen (one sample, mostly);
    when it cannot be read, or is empty, the job itself says so."""
    need = {opt: f for opt, f in wanted.items() if absent([f or ""], ())}
    if not need:
        return
    try:
        url = shards.expand_all(inputs)[0]
        seen: set[str] = set()
        with read_shard(url, options, ShardResult(input=url)) as samples:
            for sample in samples:
                seen.update(sample)
                if not absent(need.values(), seen):
                    return
    except (HtoolsError, OSError, IndexError):
        return
    if not seen:  # an empty shard
        return
    which = [f"{opt} {f}" for opt, f in need.items() if f not in seen]
    raise MissingFields(f"{'; '.join(which)}: no sample of the first input shard "
                        f"({hide_credentials(url)}) has {'these fields' if which[1:] else 'it'} "
                        f"(its fields: {_had(seen)})")
