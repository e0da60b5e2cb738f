"""Named exceptions.

``HtoolsError`` and its subclasses are *user* errors: the CLI prints their
one-line ``str()`` and exits 1.  Anything else is a bug and keeps its traceback.
Every error that concerns data names the shard URL, and where known the sample
key and the byte offset, so a user can find the bad bytes.
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?<=//)[^/@\s]*@")


def hide_credentials(text: str) -> str:
    """``text`` with any ``user:password@`` of a URL removed (no regex without an ``@``:
    it runs once per input path in a job's lineage)."""
    return _USERINFO.sub("", text) if "@" in text else text


class HtoolsError(Exception):
    """A user-facing error whose message is one clear line."""


class PatternError(HtoolsError, ValueError):
    """A malformed shard-set pattern."""

    def __init__(self, pattern: str, why: str):
        self.pattern = pattern
        self.why = why
        super().__init__(f"bad shard pattern {hide_credentials(pattern)!r}: "
                         f"{hide_credentials(why)}")


TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class StorageError(HtoolsError, OSError):
    """A storage operation failed (after retries, if the fault was transient).

    ``transient`` says whether the same operation may succeed later (a 5xx/429/408
    answer, a dropped connection, a short body): the shard is then worth running again
    from its input, which is what :mod:`htools.runtime.engine` does.  401/403/404, a missing
    bucket or a full disk are not transient."""

    def __init__(self, url: str, why: str, status: int | None = None,
                 transient: bool | None = None):
        self.url = url
        self.why = why
        self.status = status
        self.transient = status in TRANSIENT_STATUS if transient is None else transient
        super().__init__(why)

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return hide_credentials(f"{self.url}: {self.why}{status}")

    def __reduce__(self):  # keep pickling (Dask ships errors between processes)
        return (type(self), (self.url, self.why, self.status, self.transient))


class NotFound(StorageError, FileNotFoundError):
    """The object or file does not exist."""


class SizeUnknown(StorageError):
    """The object exists, but the server does not tell its length (no Content-Length on
    HEAD, no Content-Range on a ranged GET): read it as a stream."""


class ShardError(HtoolsError):
    """Bad data in a shard: names the URL, and where known the member/key and offset."""

    def __init__(self, url: str, why: str, *, key: str | None = None,
                 member: str | None = None, offset: int | None = None):
        self.url = url
        self.why = why
        self.key = key
        self.member = member
        self.offset = offset
        super().__init__(why)

    def __str__(self) -> str:
        where = [self.url or "<stream>"]
        if self.member is not None:
            where.append(f"member {self.member!r}")
        if self.key is not None:
            where.append(f"key {self.key!r}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        return hide_credentials(f"{', '.join(where)}: {self.why}")

    def __reduce__(self):
        return (_rebuild_shard_error, (type(self), self.url, self.why, self.key,
                                       self.member, self.offset))


def _rebuild_shard_error(cls, url, why, key, member, offset):
    return cls(url, why, key=key, member=member, offset=offset)


class TarFormatError(ShardError):
    """A corrupt or truncated tar stream, or a field repeated within a sample."""


class ScriptError(HtoolsError):
    """The user's script is unusable (syntax error, missing function) or raised."""


class ScriptLoadError(ScriptError):
    """The user's script raised while it was imported or in ``init()``: every shard
    would fail the same way, so the job stops at the first one."""

    fatal = True


class TooManyErrors(HtoolsError):
    """A shard had more failing samples than ``--max-errors`` allows: it fails whole."""
