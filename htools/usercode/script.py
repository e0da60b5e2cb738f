"""Loading a user script and shipping it to workers: one type, :class:`Script`.

A script file travels as *source text* (workers may share no filesystem with the
client) and is executed once per worker process; its optional ``init()`` runs
right after, so a model is loaded once per process, not once per shard.  A plain
Python function (the Python API's ``script=fn``) travels by cloudpickle and acts
as ``process_sample``.  :func:`load_script` is the one way in: a path, a function
or a ready :class:`Script`.  The client checks the script before any task runs:
it must compile and define the functions the tool needs.  Nothing of the user's
code runs on the client.

A script file also carries the Python modules beside it (its folder's ``.py`` files
and packages, not data files) and those of ``py_files`` (``--py-files``), as source
text inside the :class:`Script`, so they reach any cluster (embedded, a ``dask
scheduler`` elsewhere, Kubernetes) with no upload step and no write into a worker's
site-packages.  A job that ships them once per worker (:mod:`htools.usercode.shipping`)
hands its tasks :meth:`Script.without_modules`: a Script naming the worker plugin that
brings them, filled into this module's worker-side store (:func:`receive`) as each
worker starts.  How a Script pickles depends on nothing but itself.  On a worker the
modules are served by a private
import finder, installed in front of ``sys.meta_path`` before the script runs, as if
the script's folder were first on ``sys.path`` (as with ``python script.py``).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.abc
import importlib.util
import linecache
import os
import sys
import threading
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from htools.errors import ScriptError, ScriptLoadError

_loaded: dict[str, types.ModuleType] = {}
_lock = threading.Lock()
_active: list[str | None] = [None]  # the key of the shipped modules importable now
# on a worker: the modules each job's plugin brought, by plugin name (one per job)
_received: dict[str, tuple[tuple[str, str], ...]] = {}

MAX_SHIPPED = 10 << 20  # bytes of module sources a script may carry
PY_FILES_HINT = ("give --py-files a .py file, a package folder (with __init__.py) or a "
                 "folder of modules")


def load_script(script: str | os.PathLike | Callable | Script, *, require: tuple[str, ...] = (),
                one_of: tuple[str, ...] = (),
                py_files: tuple[str | os.PathLike, ...] | list | None = ()) -> Script:
    """A :class:`Script` from a path, a function (used as ``process_sample``) or a Script.
    ``py_files`` (files or folders) are shipped with a script file, besides the modules
    of its own folder."""
    py_files = tuple(py_files or ())
    if isinstance(script, Script):
        return script.with_modules(py_files) if py_files else script
    if callable(script):
        if "process_sample" not in require + one_of:
            raise ScriptError("a function can only serve as process_sample(); give a script "
                              "file for " + ", ".join(n + "()" for n in require or one_of))
        if py_files:
            raise ScriptError("py_files are shipped with a script file; a function's own "
                              "imports must be installed on the workers (or give a script)")
        return Script.from_function(script)
    return Script.from_path(script, require=require, one_of=one_of, py_files=py_files)


@dataclass(frozen=True)
class Script:
    """A user script as source text plus the file name shown in tracebacks, or a
    function that serves as ``process_sample``; ``modules`` are the sources it may
    import, as (path relative to an import root, source) pairs: ``helper.py``,
    ``pkg/__init__.py``, ``pkg/sub.py``."""

    source: str
    filename: str = "<script>"
    digest: str = field(default="", compare=False)
    function: Callable | None = field(default=None, compare=False)
    modules: tuple[tuple[str, str], ...] = ()
    shell: str | None = None  # a shell command run once per sample (htools.usercode.shell)
    shipped: str = field(default="", compare=False)  # modules left behind: the name of the
    # job's worker plugin that brings them (htools.usercode.shipping), read when it loads

    def without_modules(self, plugin: str) -> Script:
        """This script for a job's tasks when the worker plugin ``plugin`` carries its
        modules to every worker: the same digest, no modules in its arguments."""
        return replace(self, modules=(), shipped=plugin)

    @classmethod
    def from_shell(cls, command: str) -> Script:
        """A shell command as the script (``htmapper --shell``): its ``process_sample``
        runs ``command`` through ``sh -c`` in a folder of ``sample.FIELD`` files."""
        from htools.usercode.shell import check_syntax

        check_syntax(command)
        return cls("", f"<shell {command!r}>", _digest("shell\0" + command), shell=command)

    @classmethod
    def from_function(cls, fn: Callable) -> Script:
        name = getattr(fn, "__name__", "function")
        return cls("", f"<function {name}>", function=fn)

    @classmethod
    def from_batch_function(cls, batch_fn: Callable, prepare_fn: Callable | None = None
                            ) -> Script:
        """Functions as a batched script (the Python API's ``batch_fn=``, ``prepare_fn=``):
        ``batch_fn`` serves as ``process_batch``, ``prepare_fn`` as ``prepare_sample``."""
        for what, fn in (("batch_fn", batch_fn), ("prepare_fn", prepare_fn)):
            if fn is not None and not callable(fn):
                raise ScriptError(f"{what} must be a function, not {type(fn).__name__}")
        names = {"process_batch": batch_fn}
        if prepare_fn is not None:
            names["prepare_sample"] = prepare_fn
        name = getattr(batch_fn, "__name__", "function")
        return cls("", f"<function {name}>", function=types.SimpleNamespace(**names))

    @classmethod
    def from_path(cls, path: str | os.PathLike, *, require: tuple[str, ...] = (),
                  one_of: tuple[str, ...] = (), py_files: tuple = ()) -> Script:
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
        except OSError as e:
            raise ScriptError(f"cannot read script {os.fspath(path)!r}: {e.strerror or e}") from None
        filename = os.path.basename(os.fspath(path))
        script = cls.from_source(source, filename, require=require, one_of=one_of)
        folder = os.path.dirname(os.path.abspath(os.fspath(path)))
        return script.with_modules(py_files, beside=folder)

    @classmethod
    def from_source(cls, source: str, filename: str = "<script>", *,
                    require: tuple[str, ...] = (), one_of: tuple[str, ...] = (),
                    modules: tuple[tuple[str, str], ...] = ()) -> Script:
        defined = _top_level_names(source, filename)
        missing = [name for name in require if name not in defined]
        if missing:
            raise ScriptError(f"script {filename} does not define "
                              f"{', '.join(name + '()' for name in missing)}")
        if one_of and not any(name in defined for name in one_of):
            raise ScriptError(f"script {filename} defines none of {', '.join(n + '()' for n in one_of)}")
        return cls(source, filename, _digest(source, modules), modules=tuple(modules))

    def with_modules(self, py_files: tuple = (), *, beside: str | None = None) -> Script:
        """This script carrying the modules of folder ``beside`` (the script's own) and
        of ``py_files``; a later one of the same path wins.  Refused (ScriptError)
        over :data:`MAX_SHIPPED` bytes."""
        if self.function is not None or self.shell is not None:
            raise ScriptError("py_files are shipped with a script file, not a "
                              + ("function" if self.shell is None else "shell command"))
        found: dict[str, str] = dict(self.modules)
        if beside is not None:
            found.update(_folder_modules(beside))
        for p in py_files:
            found.update(_py_file_modules(os.fspath(p)))
        total = sum(len(src.encode()) for src in found.values())
        if total > MAX_SHIPPED:
            where = f"the modules beside {self.filename}" if beside else "the modules"
            biggest = max(found, key=lambda k: len(found[k]))
            raise ScriptError(
                f"{where} and --py-files add up to {total / 1e6:.1f} MB of Python source "
                f"(the largest {biggest}), more than the {MAX_SHIPPED >> 20} MB a script "
                "carries to the workers: put the script in a folder of its own and give "
                "--py-files only what it imports, or install big packages on the workers")
        modules = tuple(sorted(found.items()))
        return replace(self, modules=modules, digest=_digest(self.source, modules))

    def defines(self, name: str) -> bool:
        if isinstance(self.function, types.SimpleNamespace):  # from_batch_function
            return name in vars(self.function)
        if self.function is not None or self.shell is not None:
            return name == "process_sample"
        return name in _top_level_names(self.source, self.filename)

    def load(self) -> Any:
        """The script's module in this process, executed (and ``init()`` run) once
        (for a function: a namespace whose ``process_sample`` is the function)."""
        if isinstance(self.function, types.SimpleNamespace):  # from_batch_function
            return self.function
        if self.function is not None:
            return types.SimpleNamespace(process_sample=self.function)
        if self.shell is not None:  # a new runner (one temp dir) per call: per task
            from htools.usercode.shell import namespace

            return namespace(self.shell)
        key = self.digest or _digest(self.source, self.modules)
        modules = self.modules
        if self.shipped:
            modules = received(self.shipped, self.filename)
        mod = _loaded.get(key)
        if mod is not None and (not modules or _active[0] == key):
            return mod
        with _lock:
            if modules and _active[0] != key:
                _install(modules, key)  # this job's modules, not an earlier job's
            mod = _loaded.get(key)
            if mod is None:
                mod = _execute(self.source, self.filename, key)
                _loaded[key] = mod
        return mod


def receive(plugin: str, modules: tuple[tuple[str, str], ...]) -> None:
    """On a worker: the modules the plugin ``plugin`` brought (its setup)."""
    _received[plugin] = modules


def forget(plugin: str) -> None:
    """On a worker: the plugin ``plugin`` is gone (its teardown); other jobs' stay."""
    _received.pop(plugin, None)


def received(plugin: str, filename: str) -> tuple[tuple[str, str], ...]:
    """On a worker: the modules the plugin ``plugin`` brought for the script ``filename``."""
    try:
        return _received[plugin]
    except KeyError:
        raise ScriptLoadError(f"script {filename}: the modules shipped with it did not "
                              "reach this worker (its plugin was removed or never ran)"
                              ) from None


def _digest(source: str, modules: tuple[tuple[str, str], ...] | list = ()) -> str:
    h = hashlib.sha256(source.encode())
    for path, src in modules:
        h.update(b"\0" + path.encode() + b"\0" + src.encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------- shipped modules --

def _read_source(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return importlib.util.decode_source(f.read())
    except (OSError, SyntaxError, UnicodeDecodeError) as e:
        raise ScriptError(f"cannot read module {path}: {getattr(e, 'strerror', None) or e}"
                          ) from None


def _skipped(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__"


def _folder_modules(folder: str) -> dict[str, str]:
    """The importable modules of ``folder`` (as if it were on ``sys.path``): its ``.py``
    files and its packages (sub-folders with ``__init__.py``), nothing else."""
    found: dict[str, str] = {}
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise ScriptError(f"cannot list {folder}: {e.strerror or e}") from None
    for entry in entries:
        if _skipped(entry.name):
            continue
        if entry.name.endswith(".py") and entry.is_file() and entry.name[:-3].isidentifier():
            found[entry.name] = _read_source(entry.path)
        elif entry.is_dir() and entry.name.isidentifier() \
                and os.path.isfile(os.path.join(entry.path, "__init__.py")):
            found.update(_package(entry.path, entry.name))
    return found


def _package(root: str, name: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d) and d.isidentifier()
                             and os.path.isfile(os.path.join(dirpath, d, "__init__.py")))
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        prefix = name if rel == "." else f"{name}/{rel}"
        for f in sorted(filenames):
            if f.endswith(".py") and f[:-3].isidentifier():
                found[f"{prefix}/{f}"] = _read_source(os.path.join(dirpath, f))
    return found


def _py_file_modules(path: str) -> dict[str, str]:
    """What one ``--py-files`` entry ships: a module, a package, or a folder's modules."""
    base = os.path.basename(os.path.normpath(path))
    if os.path.isfile(path):
        if not (base.endswith(".py") and base[:-3].isidentifier()):
            raise ScriptError(f"--py-files {path}: not a Python module; {PY_FILES_HINT}")
        return {base: _read_source(path)}
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "__init__.py")):
            if not base.isidentifier():
                raise ScriptError(f"--py-files {path}: {base!r} is not a package name")
            return _package(path, base)
        return _folder_modules(path)
    raise ScriptError(f"--py-files {path}: no such file or folder")


class _ShippedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports the modules a script carried, from memory (a worker's private path)."""

    def __init__(self, modules: tuple[tuple[str, str], ...], key: str):
        self.key = key
        self.table: dict[str, tuple[str, bool, str]] = {}
        for path, source in modules:
            parts = path[:-3].split("/")
            package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if package else parts)
            self.table[name] = (source, package, f"<htools script {path}>")

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.table:
            return None
        _source, package, pseudo = self.table[fullname]
        return importlib.util.spec_from_loader(fullname, self, origin=pseudo,
                                               is_package=package)

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        source, _package, pseudo = self.table[module.__name__]
        linecache.cache[pseudo] = (len(source), None, source.splitlines(True), pseudo)
        module.__file__ = pseudo
        exec(compile(source, pseudo, "exec"), module.__dict__)

    def get_source(self, fullname: str) -> str | None:
        entry = self.table.get(fullname)
        return entry[0] if entry else None


def _install(modules: tuple[tuple[str, str], ...], key: str) -> None:
    """Make ``modules`` (and no other script's) importable: their finder goes first on
    ``sys.meta_path``, in place of another script's, whose imported modules are
    forgotten (a long-lived worker runs job after job: one job's helpers must not
    answer another's imports).  A script already loaded keeps the module objects it
    imported; its next :meth:`Script.load` (every task calls it) installs its own set
    again."""
    for name in list(sys.modules):
        loader = getattr(getattr(sys.modules[name], "__spec__", None), "loader", None)
        if isinstance(loader, _ShippedFinder):
            del sys.modules[name]
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _ShippedFinder)]
    sys.meta_path.insert(0, _ShippedFinder(modules, key))
    _active[0] = key


#: CPython 3.11's ``ast.parse`` keeps its recursion count per interpreter, not per thread:
#: two threads parsing at once (two jobs started together in one notebook) can fail with
#: ``SystemError: AST constructor recursion depth mismatch``
_PARSE_LOCK = threading.Lock()


def _top_level_names(source: str, filename: str) -> set[str]:
    try:
        with _PARSE_LOCK:
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
    except Exception as e:  # noqa: BLE001 -- the user's module or init(): a load error
        sys.modules.pop(mod.__name__, None)
        if isinstance(e, ModuleNotFoundError) and e.name:
            raise ScriptLoadError(_missing_module(e, filename)) from None
        raise ScriptLoadError(f"script {filename} failed to load: {type(e).__name__}: {e}\n"
                          + user_traceback(e)) from None
    return mod


def _missing_module(e: ModuleNotFoundError, filename: str) -> str:
    """One line: which module, where it was imported, and how to make it available."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if f.filename.startswith("<htools script ")]
    where = ""
    if frames:
        name = frames[-1].filename[len("<htools script "):-1]
        where = f" (imported at {name} line {frames[-1].lineno})"
    return (f"script {filename} failed to load: no module named {e.name!r}{where}: it is "
            "neither beside the script nor given with --py-files, and not installed on "
            "the workers")


def user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` limited to frames from the user's script."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename.startswith("<htools script ")]
    lines = traceback.format_list(frames) if frames else []
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip()
