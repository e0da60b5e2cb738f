"""Shard-set notation, for inputs and outputs alike.

Forms (combine freely; ``::`` joins several patterns into one list):

``prefix@N.suffix``
    N shards numbered from 0, zero-padded to the width of N as written:
    ``Volume_@1000.tgz`` -> ``Volume_0000.tgz`` ... ``Volume_0999.tgz``;
    ``x-@0010.tar`` -> ``x-0000.tar`` ... ``x-0009.tar``.  Only the last path
    component is searched, so ``http://user:pw@host/`` is never mistaken for it.
``{000..147}``, ``{a,b,c}``, ``{a..e}``
    brace ranges and lists as in WebDataset (several groups, nested groups).
    Numeric ranges are padded to the width of the wider bound when either bound
    has a leading zero.
``@list:FILE``
    a local text file with one URL (or pattern) per line; blank lines and lines
    starting with ``#`` are ignored.
``prefix-%06d.tar``
    an *open-ended* numbered output pattern (``--maxcount``/``--maxsize``):
    see :func:`numbered`.
``crawl/*.tar``, ``s3://b/train-*.tar``, ``http://host/d/x-[0-4]?.tgz``
    a glob in the last path component (``*``, ``?``, ``[...]``; in a ``scheme://`` URL
    ``?`` starts the query, so there only ``*`` and ``[...]``), expanded by listing its
    folder (local, S3, GCS, nginx's JSON autoindex), sorted by name.  The listing is
    :mod:`htools.storage`'s, which registers itself here (:func:`set_lister`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from htools.errors import PatternError

_AT = re.compile(r"@(\d+)")
_RANGE = re.compile(r"^(-?\w+)\.\.(-?\w+)$")
_PRINTF = re.compile(r"%(0?)(\d*)d")
_SCHEME = re.compile(r"^[a-zA-Z][\w+.-]*://")

#: ``lister(pattern, storage_options) -> sorted URLs`` of a glob; set by htools.storage
_lister: Callable[[str, dict | None], list[str]] | None = None


def set_lister(lister: Callable[[str, dict | None], list[str]]) -> None:
    """How globs are listed (htools.storage registers its listing on import)."""
    global _lister
    _lister = lister


def is_glob(url: str) -> bool:
    """Whether the last path component of ``url`` is a glob (``*.tar``)."""
    if url.startswith("pipe:") or url == "-":
        return False
    if _SCHEME.match(url):
        return bool(re.search(r"[*\[]", _basename(url.split("?", 1)[0])))
    return bool(re.search(r"[*?\[]", _basename(url)))


def expand(pattern: str, options: dict | None = None) -> list[str]:
    """Expand a shard-set pattern into the list of URLs it names (``options``: the
    storage options a glob is listed with)."""
    if not pattern or not pattern.strip():
        raise PatternError(pattern, "empty pattern")
    urls: list[str] = []
    for part in pattern.split("::"):
        part = part.strip()
        if not part:
            raise PatternError(pattern, "empty element in '::' list")
        if part.startswith("@list:"):
            urls.extend(_read_list(part[len("@list:"):], pattern, options))
        elif part.startswith("pipe:"):
            urls.append(part)  # a shell command is never expanded
        else:
            for braced in _expand_braces(part, pattern):
                for url in _expand_at(braced, pattern):
                    urls.extend(_glob(url, options) if is_glob(url) else [url])
    return urls


def _glob(url: str, options: dict | None) -> list[str]:
    if _lister is None:
        raise PatternError(url, "a glob needs htools.storage to list its folder")
    found = _lister(url, options)
    if not found:
        raise PatternError(url, "the glob matches no file")
    return found


def expand_all(patterns: list[str] | tuple[str, ...] | str,
               options: dict | None = None) -> list[str]:
    """Expand one pattern or several, in order; local paths become absolute.

    Absolute paths matter because tasks run in worker processes whose working
    directory is not the user's.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    return [absolute(u) for p in patterns for u in expand(p, options)]


def absolute(url: str) -> str:
    """A plain relative path made absolute; URLs, ``pipe:`` and ``-`` unchanged."""
    if url == "-" or url.startswith("pipe:") or re.match(r"^[a-zA-Z][\w+.-]*://", url):
        return url
    return os.path.abspath(url)


def is_numbered(pattern: str) -> bool:
    """True for an open-ended output pattern such as ``out-%06d.tar``."""
    return bool(_PRINTF.search(_basename(pattern)))


def numbered(pattern: str, index: int) -> str:
    """The name of output ``index`` of an open-ended pattern (``out-%06d.tar``)."""
    if not is_numbered(pattern):
        raise PatternError(pattern, "expected a numbered pattern such as out-%06d.tar")
    head, sep, base = pattern.rpartition("/")
    return head + sep + _PRINTF.sub(lambda m: f"{index:{m.group(1)}{m.group(2)}d}", base, count=1)


def output_urls(pattern: str, count: int) -> list[str]:
    """Exactly ``count`` output names from a pattern, or a clear error if it names another count."""
    return OutputSet.parse(pattern).urls(count)


@dataclass(frozen=True)
class OutputSet:
    """An output pattern parsed once: a fixed list of URLs (``out-@16.tar``, braces,
    a plain URL) or an open-ended numbered pattern (``out-%06d.tar``)."""

    pattern: str
    fixed: tuple[str, ...] | None  # None: open-ended

    @classmethod
    def parse(cls, pattern: str) -> OutputSet:
        if is_numbered(pattern):
            numbered(pattern, 0)  # a malformed numbered pattern fails here, not later
            return cls(pattern, None)
        return cls(pattern, tuple(expand_all(pattern)))

    @property
    def count(self) -> int | None:
        """How many outputs the pattern names; None when open-ended."""
        return None if self.fixed is None else len(self.fixed)

    def urls(self, count: int) -> list[str]:
        """Exactly ``count`` output URLs, or a clear error if the pattern names another count."""
        if self.fixed is None:
            return [absolute(numbered(self.pattern, i)) for i in range(count)]
        if len(self.fixed) != count:
            raise PatternError(self.pattern, f"names {len(self.fixed)} outputs but {count} "
                               "are needed")
        return list(self.fixed)

    def first(self) -> str:
        """The first output's URL (for an open-ended pattern, number 0)."""
        return self.fixed[0] if self.fixed is not None else absolute(numbered(self.pattern, 0))

    def folder(self) -> str:
        """The directory (URL prefix) the outputs go to, with a trailing ``/``."""
        return self.first().rsplit("/", 1)[0] + "/"


def count_of(pattern: str) -> int | None:
    """How many outputs a pattern names, or None for an open-ended numbered pattern."""
    return None if is_numbered(pattern) else len(expand(pattern))


def _basename(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _read_list(path: str, pattern: str, options: dict | None = None) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f]
    except OSError as e:
        raise PatternError(pattern, f"cannot read list file: {e.strerror or e}") from None
    urls: list[str] = []
    for ln in lines:
        if ln and not ln.startswith("#"):
            urls.extend(expand(ln, options))
    if not urls:
        raise PatternError(pattern, "list file names no shards")
    return urls


def _expand_at(url: str, pattern: str) -> list[str]:
    head, sep, base = url.rpartition("/")
    matches = list(_AT.finditer(base))
    if not matches:
        return [url]
    if len(matches) > 1:
        raise PatternError(pattern, "more than one @N in one name")
    m = matches[0]
    digits = m.group(1)
    n = int(digits)
    if n <= 0:
        raise PatternError(pattern, "@N needs N >= 1")
    width = len(digits)
    prefix, suffix = head + sep + base[: m.start()], base[m.end():]
    return [f"{prefix}{i:0{width}d}{suffix}" for i in range(n)]


def _expand_braces(s: str, pattern: str) -> list[str]:
    return list(_braces(s, pattern))


def _braces(s: str, pattern: str) -> Iterator[str]:
    start = s.find("{")
    close = s.find("}")
    if start < 0:
        if close >= 0:
            raise PatternError(pattern, "unbalanced braces: '}' without '{'")
        yield s
        return
    if 0 <= close < start:
        raise PatternError(pattern, "unbalanced braces: '}' without '{'")
    end = _matching_brace(s, start, pattern)
    head, body, tail = s[:start], s[start + 1:end], s[end + 1:]
    alternatives = _alternatives(body, pattern)
    tails = list(_braces(tail, pattern))
    for alt in alternatives:
        for expanded in _braces(alt, pattern):
            for t in tails:
                yield head + expanded + t


def _matching_brace(s: str, start: int, pattern: str) -> int:
    depth = 0
    for i in range(start, len(s)):
        if s[i] == "{":
            depth += 1
        elif s[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    raise PatternError(pattern, "unbalanced braces: '{' without '}'")


def _alternatives(body: str, pattern: str) -> list[str]:
    """The choices inside one brace group: a range ``a..b`` or a comma list."""
    parts, depth, cur = [], 0, []
    for ch in body:
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur.append(ch)
    parts.append("".join(cur))
    if len(parts) > 1:
        return parts
    m = _RANGE.match(body)
    if not m:
        raise PatternError(pattern, f"'{{{body}}}' is neither a range a..b nor a list a,b")
    return _range(m.group(1), m.group(2), pattern)


def _range(lo: str, hi: str, pattern: str) -> list[str]:
    if _is_int(lo) and _is_int(hi):
        a, b = int(lo), int(hi)
        if a > b:
            raise PatternError(pattern, f"range {{{lo}..{hi}}} runs backwards")
        padded = any(len(x.lstrip("-")) > 1 and x.lstrip("-").startswith("0") for x in (lo, hi))
        width = max(len(lo), len(hi)) if padded else 0
        return [f"{i:0{width}d}" for i in range(a, b + 1)]
    if len(lo) == 1 and len(hi) == 1 and lo.isalpha() and hi.isalpha():
        if ord(lo) > ord(hi):
            raise PatternError(pattern, f"range {{{lo}..{hi}}} runs backwards")
        return [chr(c) for c in range(ord(lo), ord(hi) + 1)]
    raise PatternError(pattern, f"bad range {{{lo}..{hi}}}")


def _is_int(s: str) -> bool:
    return s.lstrip("-").isdigit()


def split(n: int, pieces: int, *, allow_empty: bool = False) -> list[tuple[int, int]]:
    """``[0, n)`` cut into ``pieces`` contiguous, nearly equal ranges (none empty unless
    ``allow_empty``: then exactly ``pieces`` ranges even when ``n`` is smaller)."""
    pieces = max(1, pieces if allow_empty else min(pieces, n))
    base, extra = divmod(n, pieces)
    out, start = [], 0
    for i in range(pieces):
        stop = start + base + (i < extra)
        out.append((start, stop))
        start = stop
    return out
