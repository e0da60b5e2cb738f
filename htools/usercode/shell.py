"""``htmapper --shell 'COMMAND'``: a shell command as ``process_sample``.

For each sample, a directory holds one file per field, ``sample.FIELD`` (``sample.jpg``,
``sample.cls``); ``COMMAND`` runs there through ``sh -c`` with ``$KEY`` set to the
sample's key.  After it exits 0, the ``sample.*`` files present are the output sample: a
removed file drops its field, a new ``sample.X`` adds field ``X``, no ``sample.*`` file
left drops the sample.  A non-zero exit is a sample error (:class:`ShellError`) naming
the exit status and the end of the command's stderr, counted against ``--max-errors``.

A program that is not found is an error of the set-up, not of a sample: when the
command's leading program is missing on a worker, loading the command fails with
:class:`~htools.errors.ScriptLoadError` (fatal: the job stops at its first shard, as
for a script that cannot import); a program not found later in the command (exit 127)
fails the sample with :class:`CommandNotFound`, one line naming the program, counted
against ``--max-errors`` -- unless it happens at a task's first sample, where the
command cannot start on that worker at all and the job stops.

Cost per sample: the files written and read back, and one ``fork``/``exec`` of
``sh`` -- nothing more.  Each task gets one :class:`ShellRunner` (``Script.load()`` makes
a new one per task) with one temporary directory, created at its first sample, emptied
after each sample and removed when the task lets go of the runner; stdout goes to
``/dev/null``, stderr to one reused file beside the sample directory (no pipes, no
threads), and the environment is built once.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import types
import weakref

from htools.errors import ScriptError, ScriptLoadError

PREFIX = "sample."
STDERR_TAIL = 600  # characters of the command's stderr shown in a sample error
_RESERVED = frozenset("! { } ( ) [[ ]] case do done elif else esac fi for function if in "
                      "select then time until while".split())
_checked: dict[tuple[str, str], str | None] = {}  # (command, PATH) -> error, per process


class ShellError(ScriptError):
    """The command exited non-zero for a sample (a sample error)."""


class CommandNotFound(ShellError):
    """The command's shell could not find a program (exit 127).  At a task's first
    sample the command cannot start on this worker at all: the job stops (``fatal``).
    Later (a program on a path only some samples take) it fails that sample only."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


def sh_path() -> str:
    return shutil.which("sh") or "/bin/sh"


def check_syntax(command: str) -> None:
    """Refuse (ScriptError) a command that is empty or that ``sh -n`` cannot parse; a
    machine without ``sh`` (the client may be one) checks nothing here."""
    if not isinstance(command, str) or not command.strip():
        raise ScriptError("the shell command is empty")
    sh = shutil.which("sh")
    if sh is None:
        return
    p = subprocess.run(["sh", "-n", "-c", command], executable=sh, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       errors="replace", timeout=30)
    if p.returncode != 0:
        raise ScriptError(f"shell command {command!r} does not parse: "
                          f"{_last_line(p.stderr) or f'sh -n exited {p.returncode}'}")


def leading_program(command: str) -> str | None:
    """The program the command runs first, when it is a plain name or an absolute path
    (not a keyword, a variable assignment, an expansion or a relative path)."""
    try:
        lex = shlex.shlex(command, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        first = next(iter(lex), None)
    except ValueError:
        return None
    if first is None or first in _RESERVED or not re.fullmatch(r"/?[A-Za-z0-9_.+-][A-Za-z0-9_./+-]*", first):
        return None
    if "/" in first and not first.startswith("/"):
        return None
    return first


def check_command(command: str) -> None:
    """On a worker, once per process: the command parses and its leading program exists
    here.  Either failing is fatal for the job (ScriptLoadError): every sample would fail
    the same way."""
    key = (command, os.environ.get("PATH", ""))
    if key not in _checked:
        error = None
        try:
            check_syntax(command)
            program = leading_program(command)
            if program is not None:
                p = subprocess.run([sh_path(), "-c", 'command -v -- "$1" >/dev/null', "sh",
                                    program], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   timeout=30)
                if p.returncode != 0:
                    error = (f"shell command {command!r}: {program}: command not found on "
                             "the worker (install it there, or give its full path)")
        except ScriptError as e:
            error = str(e)
        _checked[key] = error
    if _checked[key]:
        raise ScriptLoadError(_checked[key])


def namespace(command: str) -> types.SimpleNamespace:
    """What ``Script.load()`` gives for a shell command: a fresh runner per task."""
    check_command(command)
    return types.SimpleNamespace(process_sample=ShellRunner(command))


def _remove(folder: str, stderr) -> None:
    try:
        stderr.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class ShellRunner:
    """``process_sample`` for one task: runs the command once per sample."""

    def __init__(self, command: str):
        self.command = command
        self.sh = sh_path()
        self.argv = ["sh", "-c", command]
        self.env = dict(os.environ)
        self.root: str | None = None
        self.dir = ""
        self.stderr = None
        self.samples = 0  # samples the command ran for (a missing program at the first: fatal)

    def _start(self) -> None:
        self.root = tempfile.mkdtemp(prefix="htools-shell-")
        self.dir = os.path.join(self.root, "s")
        os.mkdir(self.dir)
        self.stderr = open(os.path.join(self.root, "stderr"), "w+b")
        weakref.finalize(self, _remove, self.root, self.stderr)

    def __call__(self, sample: dict) -> dict | None:
        if self.root is None:
            self._start()
        key = sample["__key__"]
        files = {}
        for name, value in sample.items():
            if name.startswith("_") or (name == "key" and value is key):
                continue  # __key__, __url__, the script's "key" alias
            if not name or "/" in name or "\0" in name or ".." in name:
                raise ShellError(f"field {name!r} cannot be a file name (sample.FIELD)")
            if isinstance(value, str):
                value = value.encode("utf-8")
            files[PREFIX + name] = value
        d = self.dir
        try:
            for fname, value in files.items():
                with open(os.path.join(d, fname), "wb") as f:
                    f.write(value)
        except FileNotFoundError:  # the previous command removed the directory itself
            os.makedirs(d, exist_ok=True)
            return self(sample)
        err = self.stderr
        err.seek(0)
        err.truncate()
        self.env["KEY"] = key
        try:
            rc = subprocess.run(self.argv, executable=self.sh, cwd=d, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err).returncode
            self.samples += 1
            if rc != 0:
                raise self._failure(rc)
            out = self._collect()
        finally:
            self._empty()
        if not out:
            return None
        out["__key__"] = key
        return out

    def _collect(self) -> dict:
        out = {}
        for entry in os.scandir(self.dir):
            name = entry.name
            if not name.startswith(PREFIX) or len(name) == len(PREFIX):
                continue
            try:
                with open(entry.path, "rb") as f:
                    out[name[len(PREFIX):]] = f.read()
            except IsADirectoryError:
                raise ShellError(f"{name} is a directory, not a file") from None
        return out

    def _empty(self) -> None:
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            os.makedirs(self.dir, exist_ok=True)
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass

    def _failure(self, rc: int) -> ShellError:
        err = self.stderr
        size = err.seek(0, os.SEEK_END)
        err.seek(max(0, size - 4 * STDERR_TAIL))
        text = err.read().decode("utf-8", "replace")
        if rc == 127:
            program = _not_found(text)
            what = f"{program}: command not found" if program else "a command was not found"
            return CommandNotFound(f"{what} (exit 127 of {self.command!r})",
                                   fatal=self.samples == 1)
        tail = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
        if len(tail) > STDERR_TAIL:
            tail = "..." + tail[-STDERR_TAIL:]
        status = f"was killed by signal {-rc}" if rc < 0 else f"exited {rc}"
        return ShellError(f"shell command {self.command!r} {status}"
                          + (f"; stderr: {tail}" if tail else " (no stderr)"))


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _not_found(stderr: str) -> str | None:
    """The program a shell says it did not find: ``sh: 1: foo: not found`` (dash),
    ``sh: line 1: foo: command not found`` (bash), ``sh: foo: not found`` (busybox)."""
    for line in reversed(stderr.splitlines()):
        m = re.search(r"(?:^|: )([^:]+): (?:command )?not found\s*$", line.strip())
        if m:
            return m.group(1).strip()
    return None
