"""Applying a script's ``process_sample`` to a stream of samples: how the script sees a
sample (``key`` beside ``__key__``) and how what it returns becomes output samples.
Shared by htmapper and the exchange's stage 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from htools.errors import ScriptError
from htools.summary import ShardResult
from htools.usercode.script import user_traceback


def expose_key(sample: dict) -> dict:
    """The sample as the script sees it: ``key`` mirrors ``__key__`` unless a real field has that name."""
    if "key" not in sample:
        sample["key"] = sample["__key__"]
    return sample


def outputs_of(result, key: str, aliased: bool, what: str = "process_sample") -> list[dict]:
    """Normalise what ``process_sample`` returned (or one entry of ``process_batch``'s
    list: ``what`` names the function in errors) into a list of output samples.

    ``key`` is the input's key and ``aliased`` whether the script saw it as ``key``
    too.  An output with nothing to write (only ``_``-fields) is left out.
    """
    if result is None:
        return []
    if isinstance(result, dict):
        items = [result]
    elif isinstance(result, Iterable) and not isinstance(result, (str, bytes)):
        items = list(result)
    else:
        raise ScriptError(f"{what} returned {type(result).__name__}; "
                          "expected a dict, None, or a list of dicts")
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ScriptError(f"{what} returned a list holding {type(item).__name__}; "
                              "expected dicts")
        item = _with_key(item, key, aliased, n if len(items) > 1 else None, what)
        if any(not f.startswith("_") for f in item):
            out.append(item)
    return out


def _with_key(item: dict, key: str, aliased: bool, n: int | None,
              what: str = "process_sample") -> dict:
    """The output's ``__key__``: a changed ``__key__`` or ``key`` renames the sample; an
    unchanged one (or none) keeps the input's, suffixed ``-n`` when one input gives several."""
    item = dict(item)
    named = item.pop("__key__", key)
    if aliased and "key" in item:
        alias = item.pop("key")
        alias = bytes(alias).decode("utf-8") if isinstance(alias, (bytes, bytearray)) else alias
        if named != key and alias != key and named != alias:
            raise ScriptError(f"{what} returned __key__ {named!r} and key {alias!r}; "
                              "give one of them")
        named = named if named != key else alias
    if isinstance(named, (bytes, bytearray)):
        named = bytes(named).decode("utf-8")
    if named == key and n is not None:
        named = f"{key}-{n}"  # several outputs of one input need distinct keys
    item["__key__"] = str(named)
    item.pop("__url__", None)
    return item


def same_key_output(out, key: str, aliased: bool) -> dict | None:
    """:func:`outputs_of` for its common case without its general checks: ``out`` is one
    dict that keeps the input's key (as ``__key__`` and ``key``, or without them) and
    has a field to write.  The output sample, or None when ``out`` is another case."""
    if type(out) is dict and (
            (named := out.get("__key__", key)) is key
            or (type(named) is str and named == key)) and (
            not aliased or (alias := out.get("key", key)) is key
            or (type(alias) is str and alias == key)):
        item = out.copy()  # _with_key(out, key, aliased, None), for this case
        item["__key__"] = key
        if aliased:
            item.pop("key", None)
        item.pop("__url__", None)
        for f in item:
            if type(f) is not str:  # outputs_of, which checks it as before
                break
            if f[:1] != "_":
                return item
    return None  # several outputs, a new key, nothing to write, a bad type: outputs_of


def map_samples(samples: Iterator[dict], fn, result: ShardResult, url: str) -> Iterator[dict]:
    """Apply ``fn`` to each sample, counting; yields the output samples.

    The common case -- ``fn`` returns one dict that keeps the input's key -- takes
    :func:`same_key_output`: the same output, without the general checks.
    """
    for sample in samples:
        result.samples_read += 1
        key = sample["__key__"]
        try:
            aliased = "key" not in sample
            if aliased:  # expose_key(), inlined
                sample["key"] = key
            out = fn(sample)
            item = same_key_output(out, key, aliased)
            outs = None if item is not None else outputs_of(out, key, aliased)
        except Exception as e:  # the user's code raised: name shard and key
            if getattr(e, "fatal", False):  # every sample would fail so (a missing program)
                raise
            result.sample_error(url, key, "process_sample raised", e, user_traceback(e))
            continue
        if outs is None:
            result.samples_mapped += 1
            yield item
            continue
        if not outs:
            result.samples_dropped += 1
            continue
        result.samples_mapped += 1
        yield from outs
