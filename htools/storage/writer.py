"""The atomic :class:`Writer` every backend's uploads go through, and the :class:`Spool`
that makes an upload replayable: a transient fault mid-body or at the commit sends the
body again as a new request (see :mod:`htools.storage.base` for the retry policy).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from htools.errors import StorageError, hide_credentials
from htools.storage.base import CHUNK, RetryPolicy, Transient, retry_policy

SPOOL_MEMORY = 8 << 20  # bytes of an upload kept in memory for a replay; more go to a file


class Spool:
    """A replayable copy of an upload's body: in memory up to ``$HTOOLS_SPOOL_MEMORY``
    bytes (8 MiB), beyond that in an unlinked temp file under ``$HTOOLS_SPOOL_DIR`` (else
    the temp dir), so it is gone whatever happens to the process.  A full disk is a
    clear :class:`~htools.errors.StorageError` naming the folder."""

    def __init__(self, url: str):
        self.name = hide_credentials(url)
        env = os.environ
        self.folder = env.get("HTOOLS_SPOOL_DIR") or tempfile.gettempdir()
        memory = int(env.get("HTOOLS_SPOOL_MEMORY", SPOOL_MEMORY))
        try:  # (a SpooledTemporaryFile of max_size 0 would never leave memory)
            self._file: Any = tempfile.SpooledTemporaryFile(max_size=memory, dir=self.folder) \
                if memory > 0 else tempfile.TemporaryFile(dir=self.folder)
        except OSError as e:
            raise self._error(e) from None

    def _error(self, e: OSError) -> StorageError:
        return StorageError(self.name, "cannot keep a replayable copy of the upload in "
                            f"{self.folder}: {e.strerror or e} (free space there, or set "
                            "HTOOLS_SPOOL_DIR to a folder with room)", transient=False)

    def write(self, view: memoryview) -> None:
        try:
            self._file.write(view)
        except OSError as e:
            raise self._error(e) from None

    def chunks(self) -> Iterator[memoryview]:
        try:
            self._file.seek(0)
        except OSError as e:  # the last buffered bytes did not fit
            raise self._error(e) from None
        while True:
            chunk = self._file.read(CHUNK)
            if not chunk:
                return
            yield memoryview(chunk)

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:  # a last buffered write that did not fit: nothing to keep anyway
            pass

    @staticmethod
    def wanted() -> bool:
        """False when ``HTOOLS_SPOOL=off``: uploads stream without a copy and a fault
        fails the write (its task runs again from its input)."""
        return os.environ.get("HTOOLS_SPOOL", "on").lower() not in ("off", "0", "no")


class Writer:
    """An object being written.  ``write()`` streams bytes out; ``commit()`` makes the
    object appear whole; ``abort()`` (or an exception inside ``with``) leaves no object.
    ``close()`` is ``commit()``; ``flush()`` never commits.

    A ``replayable`` backend (one whose ``_restart()`` starts the upload again) gets a
    :class:`Spool` of the body: a transient fault while streaming or at the commit does
    not fail the write; the body is uploaded again from the spool at the commit, with
    backoff under ``policy`` (``replays`` counts the extra uploads).
    """

    mode = "wb"
    replayable = False
    #: whether ``write()`` may keep a reference to the bytes it was given after it
    #: returns (to send them later): if not, the caller may reuse its buffer at once
    retains = True

    def __init__(self, url: str, policy: RetryPolicy | None = None):
        self.url = url
        self.name = hide_credentials(url)
        self.closed = False
        self.replays = 0
        self._pos = 0
        self._policy = policy
        self._spool: Spool | None = None
        self._broken: Transient | None = None  # the fault that broke the first upload

    # -- what backends implement
    def _write(self, data: memoryview) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError

    def _restart(self) -> None:
        """Start the upload again, as a new request (replayable backends)."""
        raise NotImplementedError

    # -- the file-like surface
    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.closed:
            raise ValueError(f"write to a closed writer ({self.name})")
        view = memoryview(data).cast("B")
        if view.nbytes:
            if self._spool is None and self._pos == 0 and self.replayable and Spool.wanted():
                self._spool = Spool(self.url)
            if self._spool is not None:
                self._keep(view)
            if self._broken is None:
                try:
                    self._write(view)
                except Transient as exc:
                    self._abort_quietly()
                    if self._spool is None:  # the bytes streamed so far are gone
                        self.closed = True
                        raise exc.error(self.url) from None
                    self._broken = exc  # the rest goes to the spool; replayed at commit
            self._pos += view.nbytes
        return view.nbytes

    def _keep(self, view: memoryview) -> None:
        try:
            self._spool.write(view)  # type: ignore[union-attr]
        except StorageError:
            self.closed = True
            self._abort_quietly()
            self._drop_spool()
            raise

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        """No-op: data is only guaranteed durable by ``commit()``."""

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def commit(self) -> None:
        """Finish the object and make it visible (atomic).  Aborts if that fails."""
        if self.closed:
            return
        self.closed = True
        try:
            fault = self._broken
            if fault is None:
                try:
                    self._commit()
                    return
                except Transient as exc:
                    if not self.replayable or (self._spool is None and self._pos):
                        raise exc.error(self.url) from None
                    self._abort_quietly()
                    fault = exc
            self._replay(fault)
        except BaseException:
            self._abort_quietly()
            raise
        finally:
            self._drop_spool()

    def _replay(self, fault: Transient) -> None:
        """Upload the spooled body again, each time as a new request, until it commits
        or the policy gives up."""
        delays = (self._policy or retry_policy()).delays()
        tries = 1
        while True:
            delay = next(delays, None)
            if delay is None:
                raise fault.error(self.url, f"{fault.why} (gave up after {tries} uploads "
                                  "of the whole body)")
            time.sleep(delay)
            tries += 1
            try:
                self._restart()
                for chunk in self._spool.chunks() if self._spool is not None else ():
                    self._write(chunk)
                self._commit()
                self.replays = tries - 1
                return
            except Transient as exc:
                self._abort_quietly()
                fault = exc

    def abort(self) -> None:
        """Discard everything written; the object is left absent (or unchanged)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._abort()
        finally:
            self._drop_spool()

    def close(self) -> None:
        self.commit()

    def _drop_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _abort_quietly(self) -> None:
        try:
            self._abort()
        except Exception:  # noqa: BLE001 - best effort after another error
            pass

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self.closed = True
            self._abort_quietly()
            self._drop_spool()
