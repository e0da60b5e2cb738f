"""What made a shard set: its *lineage*, recorded in the shard index beside it
(``"lineage"`` in ``STEM.index.json``, :mod:`htools.shardindex`) and compared by
``--resume`` before a job keeps outputs that exist.

A lineage is a small JSON object::

    {"tool": "htshuffle",
     "script": {"name": "s.py", "digest": "3f2a..."},      # or null
     "options": {"seed": 7, "mtime": 0, "compression": "gzip", ...},
     "inputs": {"count": 1000, "digest": "9c1e...", "first": URL, "last": URL,
                "bytes": N}}                               # bytes: when already known

``script.digest`` covers the script's source and the modules shipped with it (or the
shell command; a function's code).  ``options`` holds only the options that change the
outputs' bytes, each tool naming its own; an option left unset (None or False) is not
written, so an option added later does not make every older lineage differ (``mtime``
None, the time of writing, is written as ``"now"``; a ``--keep``/``--drop`` list is
its URL and ``list_digest``, of its bytes).  The
inputs are summarized by a digest of their URLs (credentials hidden) and the sizes the
job already knew -- never a request per input shard.
"""

from __future__ import annotations

import hashlib
import marshal
from typing import Any

from htools.errors import hide_credentials
from htools.tar.compress import compression_for

SHOWN = 4  # hex digits of a digest shown in a message: "3f2a.."


def make(tool: str, *, inputs: list[str], outputs: str, script: Any = None,
         options: dict | None = None, sizes: list[int] | None = None) -> dict:
    """The lineage of a job of ``tool`` writing ``outputs`` (a pattern) from ``inputs``
    (URLs or file paths, expanded) with ``script`` (a
    :class:`~htools.usercode.script.Script` or None) and the byte-changing ``options``;
    ``sizes``: the inputs' sizes when the job knows them without asking."""
    opts = {k: "now" if k == "mtime" and v is None else v for k, v in (options or {}).items()}
    opts = {k: v for k, v in opts.items() if v is not None and v is not False}
    opts["compression"] = compression_for(outputs) or "none"
    return {"tool": tool, "script": script_of(script),
            "options": dict(sorted(opts.items())), "inputs": inputs_of(inputs, sizes)}


def script_of(script: Any) -> dict | None:
    """``{"name", "digest"}`` of a Script (duck-typed: this module sits below
    :mod:`htools.usercode`)."""
    if script is None:
        return None
    digest = getattr(script, "digest", "")
    function = getattr(script, "function", None)
    if not digest and function is not None:
        digest = _code_digest(function)
    return {"name": getattr(script, "filename", "<script>"), "digest": digest}


def _code_digest(fn: Any) -> str:
    """A function's digest: its compiled code (constants and nested code included)."""
    code = getattr(fn, "__code__", None)
    try:
        data = marshal.dumps(code) if code is not None else repr(fn).encode()
    except ValueError:  # a code object marshal cannot hold: its name at least
        data = getattr(fn, "__qualname__", repr(fn)).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def inputs_of(urls: list[str], sizes: list[int] | None = None) -> dict:
    """The inputs as a count, a digest of their URLs (and sizes, when given), the first
    and last URL for people, and their total size when known."""
    h = hashlib.sha256()
    for i, url in enumerate(urls):
        h.update(hide_credentials(url).encode("utf-8", "surrogateescape"))
        h.update(f"\t{sizes[i]}\n".encode() if sizes is not None else b"\n")
    out: dict = {"count": len(urls), "digest": h.hexdigest()[:16]}
    if urls:
        out["first"], out["last"] = hide_credentials(urls[0]), hide_credentials(urls[-1])
    if sizes is not None:
        out["bytes"] = int(sum(sizes))
    return out


def differences(old: dict, new: dict) -> list[str]:
    """What differs between the lineage ``old`` (recorded) and ``new`` (this job), one
    phrase each (``script digest changed: 3f2a.. -> 9c1e..``); empty when the same."""
    if old.get("tool") != new.get("tool"):
        return [f"made by {old.get('tool')}, not {new.get('tool')}"]
    out = []
    a, b = old.get("script"), new.get("script")
    if (a or {}).get("digest") != (b or {}).get("digest"):
        if a and b:
            out.append(f"script digest changed: {_short(a['digest'])} -> {_short(b['digest'])}")
        else:
            out.append(f"script changed: {_script_name(a)} -> {_script_name(b)}")
    oa, ob = old.get("options") or {}, new.get("options") or {}
    for name in sorted(set(oa) | set(ob)):
        if oa.get(name) != ob.get(name) and name == "list_digest":  # --keep/--drop's list
            out.append(f"list content changed: {_short(oa.get(name) or '')} -> "
                       f"{_short(ob.get(name) or '')}")
        elif oa.get(name) != ob.get(name):
            flag = name if name == "compression" else "--" + name.replace("_", "-")
            out.append(f"{flag} changed: {_value(oa.get(name))} -> {_value(ob.get(name))}")
    ia, ib = old.get("inputs") or {}, new.get("inputs") or {}
    if ia.get("digest") != ib.get("digest"):
        out.append(f"inputs changed: {_inputs(ia)} -> {_inputs(ib)}")
    return out


def _short(digest: str) -> str:
    return f"{digest[:SHOWN]}.." if digest else "none"


def _script_name(s: dict | None) -> str:
    return f"{s['name']} ({_short(s['digest'])})" if s else "none"


def _value(v: Any) -> str:
    return "unset" if v is None else str(v)


def _inputs(i: dict) -> str:
    return f"{i.get('count', '?')} inputs ({_short(i.get('digest', ''))})"
