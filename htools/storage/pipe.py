"""Streams: ``pipe:COMMAND`` (read its stdout / write its stdin) and ``-`` (stdin / stdout).

A stream is read or written once, front to back: no range reads, no ``exists``,
``size``, ``delete``, ``listdir``.  Writes cannot be atomic (what was written is out);
a pipe writer's ``commit()`` waits for the command and fails on a non-zero exit
status, and so does a pipe reader at EOF.  Nothing is retried: running a command
again is not this layer's call.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Mapping
from typing import Any, BinaryIO, NoReturn

from htools.errors import StorageError, hide_credentials
from htools.storage.base import Backend, buffered
from htools.storage.writer import Writer
from htools.tar.compress import NoClose


class _PipeReader(io.RawIOBase):
    """stdout of a shell command; a non-zero exit at EOF is a StorageError."""

    def __init__(self, url: str):
        super().__init__()
        self.name = hide_credentials(url)
        self._cmd = url[len("pipe:"):]
        self._eof = False
        try:
            self._proc = subprocess.Popen(self._cmd, shell=True, stdout=subprocess.PIPE)
        except OSError as exc:
            raise StorageError(self.name, f"cannot run command: {exc}") from None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._eof:
            return 0
        n = self._proc.stdout.readinto(buffer)
        if not n:
            self._eof = True
            self._finish()
        return n

    def _finish(self) -> None:
        status = self._proc.wait()
        if status != 0:
            raise StorageError(self.name, f"command exited with status {status}")

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self._proc.stdout.close()
        if not self._eof:  # closed early: the command may get SIGPIPE; that is fine
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


class _PipeWriter(Writer):
    """stdin of a shell command; commit waits for it and checks its exit status."""

    def __init__(self, url: str):
        super().__init__(url)
        try:
            self._proc = subprocess.Popen(url[len("pipe:"):], shell=True, stdin=subprocess.PIPE)
        except OSError as exc:
            raise StorageError(self.name, f"cannot run command: {exc}") from None

    def _write(self, data: memoryview) -> None:
        try:
            self._proc.stdin.write(data)
        except OSError as exc:
            status = self._proc.poll()
            raise StorageError(self.name, f"command stopped reading ({exc}); "
                               f"exit status {status}") from None

    def _commit(self) -> None:
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        status = self._proc.wait()
        if status != 0:
            raise StorageError(self.name, f"command exited with status {status}")

    def _abort(self) -> None:
        self._proc.kill()
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        self._proc.wait()


class _StdoutWriter(Writer):
    def __init__(self) -> None:
        super().__init__("-")
        self._out = sys.stdout.buffer

    def _write(self, data: memoryview) -> None:
        self._out.write(data)

    def _commit(self) -> None:
        self._out.flush()

    def _abort(self) -> None:
        self._out.flush()


class _StreamBackend(Backend):
    """What pipes and stdin/stdout cannot do."""

    @staticmethod
    def _refuse(url: str, what: str) -> NoReturn:
        raise StorageError(hide_credentials(url),
                           f"{what} is not possible on a pipe or stdin/stdout")

    def _whole(self, url: str, start: int, end: int | None) -> None:
        if start or end is not None:
            self._refuse(url, "a range read")

    def exists(self, url: str, opts: Mapping[str, Any]) -> bool:
        self._refuse(url, "exists()")

    def size(self, url: str, opts: Mapping[str, Any]) -> int:
        self._refuse(url, "size()")

    def delete(self, url: str, opts: Mapping[str, Any], missing_ok: bool) -> None:
        self._refuse(url, "delete()")

    def delete_prefix(self, url: str, opts: Mapping[str, Any]) -> None:
        self._refuse(url, "delete_prefix()")

    def listdir(self, url: str, opts: Mapping[str, Any]) -> list[str]:
        self._refuse(url, "listdir()")


class PipeBackend(_StreamBackend):
    """``pipe:COMMAND``: a shell command's stdout (read) or stdin (write)."""

    def open_range(self, url: str, start: int, end: int | None,
                   opts: Mapping[str, Any]) -> BinaryIO:
        self._whole(url, start, end)
        return buffered(_PipeReader(url))

    def open_write(self, url: str, opts: Mapping[str, Any]) -> Writer:
        return _PipeWriter(url)


class StdioBackend(_StreamBackend):
    """``-``: this process's stdin (read, never closed) or stdout (write)."""

    def open_range(self, url: str, start: int, end: int | None,
                   opts: Mapping[str, Any]) -> BinaryIO:
        self._whole(url, start, end)
        return buffered(NoClose(sys.stdin.buffer, name="-"))

    def open_write(self, url: str, opts: Mapping[str, Any]) -> Writer:
        return _StdoutWriter()
