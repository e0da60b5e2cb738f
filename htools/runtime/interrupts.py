"""Ctrl-C (SIGINT) around the edges of a job: held back while a cluster closes, and,
in a command-line tool, ignored from the job's summary to the process's exit (the job is
done: what is left is its report, and a Ctrl-C there must not turn a finished job into
exit 130).

Only the main thread receives signals; elsewhere these do nothing."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_command = False  # the process is a command-line tool: it ends after its report


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def deferred() -> Iterator[None]:
    """Ctrl-C held back while the block runs, then raised as KeyboardInterrupt."""
    if not _main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and previous is not signal.SIG_IGN:
        raise KeyboardInterrupt


@contextmanager
def as_command() -> Iterator[None]:
    """The block is a command-line tool's whole run: once :func:`finishing` has begun,
    Ctrl-C is ignored until the process exits (past the block: the interpreter's own
    exit must not turn into a KeyboardInterrupt either)."""
    global _command
    _command = True
    try:
        yield
    finally:
        _command = False


@contextmanager
def finishing() -> Iterator[None]:
    """The block records a finished job (its summary): Ctrl-C is held back while it
    runs; then, in a command-line tool, ignored (the job is done), and elsewhere (a
    notebook, a script) raised as KeyboardInterrupt as :func:`deferred` does."""
    if not (_command and _main_thread()):
        with deferred():
            yield
        return
    ignored()
    yield


def ignored() -> None:
    """Ctrl-C ignored from now until the process exits: a command whose job is done (its
    summary written, or being reported)."""
    if _main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
