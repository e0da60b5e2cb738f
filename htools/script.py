"""Loading a user script and shipping it to workers: one type, :class:`Script`.

A script file travels as *source text* (workers may share no filesystem with the
client) and is executed once per worker process; its optional ``init()`` runs
right after, so a model is loaded once per process, not once per shard.  A plain
Python function (the Python API's ``script=fn``) travels by cloudpickle and acts
as ``process_sample``.  :func:`load_script` is the one way in: a path, a function
or a ready :class:`Script`.  The client checks the script before any task runs:
it must compile and define the functions the tool needs.  Nothing of the user's
code runs on the client.
"""

from __future__ import annotations

import ast
import hashlib
import linecache
import os
import sys
import threading
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ScriptError, ScriptLoadError

_loaded: dict[str, types.ModuleType] = {}
_lock = threading.Lock()


def load_script(script: str | os.PathLike | Callable | Script, *, require: tuple[str, ...] = (),
                one_of: tuple[str, ...] = ()) -> Script:
    """A :class:`Script` from a path, a function (used as ``process_sample``) or a Script."""
    if isinstance(script, Script):
        return script
    if callable(script):
        if "process_sample" not in require + one_of:
            raise ScriptError("a function can only serve as process_sample(); give a script "
                              "file for " + ", ".join(n + "()" for n in require or one_of))
        return Script.from_function(script)
    return Script.from_path(script, require=require, one_of=one_of)


@dataclass(frozen=True)
class Script:
    """A user script as source text plus the file name shown in tracebacks, or a
    function that serves as ``process_sample``."""

    source: str
    filename: str = "<script>"
    digest: str = field(default="", compare=False)
    function: Callable | None = field(default=None, compare=False)

    @classmethod
    def from_function(cls, fn: Callable) -> Script:
        name = getattr(fn, "__name__", "function")
        return cls("", f"<function {name}>", function=fn)

    @classmethod
    def from_path(cls, path: str | os.PathLike, *, require: tuple[str, ...] = (),
                  one_of: tuple[str, ...] = ()) -> Script:
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
        except OSError as e:
            raise ScriptError(f"cannot read script {os.fspath(path)!r}: {e.strerror or e}") from None
        return cls.from_source(source, os.path.basename(os.fspath(path)), require=require,
                               one_of=one_of)

    @classmethod
    def from_source(cls, source: str, filename: str = "<script>", *,
                    require: tuple[str, ...] = (), one_of: tuple[str, ...] = ()) -> Script:
        defined = _top_level_names(source, filename)
        missing = [name for name in require if name not in defined]
        if missing:
            raise ScriptError(f"script {filename} does not define {', '.join(missing)}()")
        if one_of and not any(name in defined for name in one_of):
            raise ScriptError(f"script {filename} defines none of {', '.join(n + '()' for n in one_of)}")
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        return cls(source, filename, digest)

    def defines(self, name: str) -> bool:
        if self.function is not None:
            return name == "process_sample"
        return name in _top_level_names(self.source, self.filename)

    def load(self) -> Any:
        """The script's module in this process, executed (and ``init()`` run) once
        (for a function: a namespace whose ``process_sample`` is the function)."""
        if self.function is not None:
            return types.SimpleNamespace(process_sample=self.function)
        key = self.digest or hashlib.sha256(self.source.encode()).hexdigest()[:16]
        mod = _loaded.get(key)
        if mod is not None:
            return mod
        with _lock:
            mod = _loaded.get(key)
            if mod is None:
                mod = _execute(self.source, self.filename, key)
                _loaded[key] = mod
        return mod


def _top_level_names(source: str, filename: str) -> set[str]:
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as e:
        where = f"line {e.lineno}" + (f", column {e.offset}" if e.offset else "")
        raise ScriptError(f"script {filename} has a syntax error at {where}: {e.msg}") from None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _execute(source: str, filename: str, key: str) -> types.ModuleType:
    # A distinct pseudo-filename keeps tracebacks readable and linecache exact.
    pseudo = f"<htools script {filename}>"
    linecache.cache[pseudo] = (len(source), None, source.splitlines(True), pseudo)
    mod = types.ModuleType(f"htools_script_{key}")
    mod.__file__ = pseudo
    sys.modules[mod.__name__] = mod  # pickling of script-defined classes, multiprocessing
    try:
        exec(compile(source, pseudo, "exec"), mod.__dict__)
        init = getattr(mod, "init", None)
        if callable(init):
            init()
    except Exception as e:
        sys.modules.pop(mod.__name__, None)
        raise ScriptLoadError(f"script {filename} failed to load: {type(e).__name__}: {e}\n"
                          + user_traceback(e)) from None
    return mod


def user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` limited to frames from the user's script."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename.startswith("<htools script ")]
    lines = traceback.format_list(frames) if frames else []
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip()
