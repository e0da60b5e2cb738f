"""What made a shard set: its *lineage*, recorded in the shard index beside it
(``"lineage"`` in ``STEM.index.json``, :mod:`htools.shardindex`) and compared by
``--resume`` before a job keeps outputs that exist.

A lineage is a small JSON object::

    {"tool": "htshuffle", "format": 1,
     "script": {"name": "s.py", "digest": "3f2a..."},      # or null
     "options": {"seed": 7, "mtime": 0, "compression": "gzip", ...},
     "inputs": {"count": 1000, "digest": "9c1e...", "first": URL, "last": URL,
                "bytes": N, "names": "77b0..."},           # with sizes: see inputs_of
     "outputs": {"count": 16}}                             # a fixed count: see counted

``script.digest`` covers the script's source and the modules shipped with it (or the
shell command; a function's code).  ``options`` holds only the options that change the
outputs' bytes, each tool naming its own; an option left unset (None or False) is not
written, so an option added later does not make every older lineage differ (``mtime``
None, the time of writing, is written as ``"now"``; a ``--keep``/``--drop`` list is
its URL and ``list_digest``, of its bytes).  The
inputs are summarized by a digest of their URLs (credentials hidden) and the sizes the
job already knew -- never a request per input shard.  ``format`` is the version of what
this htools writes for a job (:data:`FORMAT`): outputs of another version are another
job's.
"""

from __future__ import annotations

import hashlib
import marshal
from typing import Any

from htools.errors import hide_credentials
from htools.tar.compress import compression_for

SHOWN = 4  # hex digits of a digest shown in a message: "3f2a.."
#: The version of the bytes this htools writes for a job (tar headers, compression, the
#: index's layout), recorded in every lineage: raised by a change that makes the same job
#: write other bytes, so that ``--resume`` does not keep outputs of the older version.
FORMAT = 1
UNVERSIONED = 1  # the format of a lineage recorded before ``format`` was


def make(tool: str, *, inputs: list[str], outputs: str, script: Any = None,
         options: dict | None = None, sizes: list[int] | None = None) -> dict:
    """The lineage of a job of ``tool`` writing ``outputs`` (a pattern) from ``inputs``
    (URLs or file paths, expanded) with ``script`` (a
    :class:`~htools.usercode.script.Script` or None) and the byte-changing ``options``;
    ``sizes``: the inputs' sizes when the job knows them without asking."""
    opts = {k: "now" if k == "mtime" and v is None else v for k, v in (options or {}).items()}
    opts = {k: v for k, v in opts.items() if v is not None and v is not False}
    opts["compression"] = compression_for(outputs) or "none"
    return {"tool": tool, "format": FORMAT, "script": script_of(script),
            "options": dict(sorted(opts.items())),
            "inputs": inputs_of(inputs, sizes)}


def counted(made: dict | None, count: int | None) -> dict | None:
    """``made`` with the count of outputs its job writes, when its pattern fixes it
    (``x-@4.tar``; None: open-ended, whose ``--maxcount`` is an option): the same job
    writing another count writes other outputs (a shuffle's buckets, an upload's split).
    Each tool applies it once, where it makes its job's lineage."""
    if made is None or count is None:
        return made
    return {**made, "outputs": {"count": count}}


def sized_later(made: dict, inputs: list[str]) -> dict:
    """The lineage ``made`` of a job that learns its ``inputs``' sizes as its tasks read
    them (htupload of a folder), recorded as its first task starts: the inputs by their
    names alone (:func:`inputs_of`), for ``--resume`` to check should the job be killed
    before it ends (the lineage it then records has the sizes)."""
    return {**made, "inputs": inputs_of(inputs, names_only=True)}


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


def inputs_of(urls: list[str], sizes: list[int] | None = None,
              names_only: bool = False) -> dict:
    """The inputs as a count, a digest of their URLs (and sizes, when given), the first
    and last URL for people, and their total size when known.  With sizes, also
    ``names``: the digest of the URLs alone, which is all that ``names_only`` gives (no
    ``digest``): the record of a job that learns its inputs' sizes as its tasks read them
    (htupload of a folder), checked by :func:`differences` against the names alone."""
    h, names = hashlib.sha256(), hashlib.sha256()
    for i, url in enumerate(urls):
        name = hide_credentials(url).encode("utf-8", "surrogateescape")
        h.update(name)
        h.update(f"\t{sizes[i]}\n".encode() if sizes is not None else b"\n")
        if sizes is not None:
            names.update(name + b"\n")
    out: dict = {"count": len(urls), "digest": h.hexdigest()[:16]}
    if names_only:
        out = {"count": len(urls), "names": out.pop("digest")}
    elif sizes is not None:
        out["names"] = names.hexdigest()[:16]
    if urls:
        out["first"], out["last"] = hide_credentials(urls[0]), hide_credentials(urls[-1])
    if sizes is not None:
        out["bytes"] = int(sum(sizes))
    return out


def differences(old: dict, new: dict) -> list[str]:
    """What differs between the lineage ``old`` (recorded) and ``new`` (this job), one
    phrase each (``script digest changed: 3f2a.. -> 9c1e..``); empty when the same."""
    fa, fb = old.get("format", UNVERSIONED), new.get("format", UNVERSIONED)
    written = [f"output format changed: version {fa} -> {fb} (another htools wrote them)"] \
        if fa != fb else []
    if old.get("tool") != new.get("tool"):
        return [*written, f"made by {old.get('tool')}, not {new.get('tool')}"]
    out = written
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
    ca, cb = (old.get("outputs") or {}).get("count"), (new.get("outputs") or {}).get("count")
    if ca is not None and cb is not None and ca != cb:  # a lineage before counted(): unknown
        out.append(f"output count changed: {ca} -> {cb}")
    ia, ib = old.get("inputs") or {}, new.get("inputs") or {}
    key = "digest" if "digest" in ia and "digest" in ib else "names"  # see inputs_of
    if ia.get(key) != ib.get(key):
        out.append(f"inputs changed: {_inputs(ia)} -> {_inputs(ib)}")
    return out


def _short(digest: str) -> str:
    return f"{digest[:SHOWN]}.." if digest else "none"


def _script_name(s: dict | None) -> str:
    return f"{s['name']} ({_short(s['digest'])})" if s else "none"


def _value(v: Any) -> str:
    return "unset" if v is None else str(v)


def _inputs(i: dict) -> str:
    return f"{i.get('count', '?')} inputs ({_short(i.get('digest') or i.get('names', ''))})"
