"""The embedded cluster's worker processes, forked from one server process that imported
Dask and htools once, instead of each started afresh.

Dask's nannies start worker processes with ``multiprocessing``'s ``spawn``: every worker
is a new Python that imports ``distributed`` and then the command's own modules (the
console script is run again as ``__mp_main__``), about a second of CPU each, all of them
at once on a small machine.  With ``forkserver`` a single server process (a new Python
too, started with ``exec``: nothing is forked from this process, whose threads may hold
locks) imports :data:`PRELOAD` once and forks a worker from itself on each request.  The
server starts with the job's cluster (:func:`start`, from
:func:`htools.clusters.connection.connect`) before this process imports ``distributed``,
so that its imports run beside this process's own rather than after them.

What a spawned worker got before it started, a forked one gets the same way: Dask's
``distributed.nanny.pre-spawn-environ`` variables (``MALLOC_TRIM_THRESHOLD_``, the
``*_NUM_THREADS``), which must be set when a process starts, are set here before the
server starts, as the nanny sets them before each spawn (in this process too), and so is
the nanny's fixed ``PYTHONHASHSEED``.  ``HTOOLS_START_METHOD=spawn`` keeps Dask's way.

A forked worker's ``os.environ`` is the server's, as it was when the server started; a
spawned one's is this process's as it is now.  In a notebook the server outlives the
first job, so a variable set or changed after it (credentials, ``HTOOLS_*``) goes to
later jobs' workers through the cluster's ``env=`` (:func:`worker_env`: the nanny sets
them in each worker before it runs anything), and a cluster started after a variable
was removed spawns its workers (:func:`method`).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import threading

METHOD_ENV = "HTOOLS_START_METHOD"
# what every worker imports anyway, imported once by the server before it forks them
PRELOAD = ("distributed", "htools", "htools.clusters.workerinit", "htools.runtime.task",
           "htools.maptask")

_lock = threading.Lock()
_started = False
_unusable = False  # the server could not start here (a socket path too long): spawn
_command: list[str] = []  # the module of the command this process runs, if it is one
_environ: dict[str, str] = {}  # os.environ as the server started with it


def method() -> str:
    """How the embedded cluster starts its worker processes: ``forkserver`` where the
    platform has it (Linux, macOS), unless ``$HTOOLS_START_METHOD`` says ``spawn``."""
    asked = os.environ.get(METHOD_ENV, "forkserver")
    if asked == "forkserver" and not _unusable and not _removed() \
            and "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


def worker_env() -> dict[str, str]:
    """The variables set or changed in this process's ``os.environ`` since the server
    started, for the embedded cluster's ``env=`` (empty before it started, or when its
    workers are spawned: they inherit ``os.environ`` as it is)."""
    if not _environ or method() != "forkserver":
        return {}
    return {k: v for k, v in os.environ.items() if _environ.get(k) != v}


def _removed() -> bool:
    """Whether a variable the server's workers would inherit is gone from ``os.environ``
    (``env=`` can only set variables: such a cluster spawns its workers)."""
    return bool(_environ) and any(k not in os.environ for k in _environ)


def for_command(module: str) -> None:
    """This process is a command (``module``, its CLI module, imported by every worker
    as the script's ``__mp_main__``, is preloaded too), whose jobs have closed their
    clusters by the time it exits: the server is then ended at once (:func:`stop`)."""
    _command[:] = [module]


def is_command() -> bool:
    """Whether this process is a command (:func:`for_command`): one job, then exit."""
    return bool(_command)


def start(preload: tuple[str, ...] = PRELOAD) -> None:
    """Start the fork server now, if it is the start method and not already running; it
    imports :data:`PRELOAD` (and the command's module) in its own process while this one
    goes on (importing ``distributed``, starting the scheduler).  Once per process: later
    jobs fork from the same server.  Where the server cannot start (its socket lives in
    the temporary folder, and a ``$TMPDIR`` longer than about 90 bytes makes a Unix
    socket path too long), the workers are spawned, Dask's way.  ``preload``: a job's own
    list instead of :data:`PRELOAD`, when its workers are not Dask's."""
    global _started, _unusable
    if method() != "forkserver":
        return
    with _lock:
        if _started:
            return
        _started = True
        _set_spawn_environ()
        _environ.update(os.environ)
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([*preload, *_command])
        from multiprocessing import forkserver

        try:
            forkserver.ensure_running()
        except OSError:
            _unusable = True
            return
        if _command:
            atexit.register(stop)


def stop() -> None:
    """End the fork server now.  Left alone, it ends when it sees this process gone, but
    only once its own imports are done, holding this process's stdout and stderr open
    until then: a command stopped while its cluster started (Ctrl-C, a failed start)
    would keep a pipe reading its output waiting.  Only once no worker it forked is still
    needed: a worker's nanny learns of its end from the server."""
    from multiprocessing import forkserver

    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def config() -> dict:
    """The Dask config of the embedded cluster's start method (call it after
    :func:`start`)."""
    if method() == "forkserver":
        # Dask sets its own preload list on first use of the start method, importing
        # numpy and pandas into this process to do so: the server already runs with
        # ours, so that would only cost this process those imports
        import distributed.utils

        if hasattr(distributed.utils, "_forkserver_preload_set"):
            distributed.utils._forkserver_preload_set = True
    return {"distributed.worker.multiprocessing-method": method()}


def _set_spawn_environ() -> None:
    """What a nanny puts in ``os.environ`` before it spawns a worker (an existing value
    wins), put there before the fork server starts, whose workers inherit it."""
    env = {k: os.environ.get(k, str(v)) for k, v in _spawn_environ().items() if v is not None}
    if env.get("PYTHONHASHSEED") in (None, "0"):
        env["PYTHONHASHSEED"] = "6640"  # as the nanny does: the same hashes on every worker
    os.environ.update(env)


def _spawn_environ() -> dict:
    """``distributed.nanny.pre-spawn-environ``: the user's Dask config over distributed's
    defaults, read from its YAML file (importing ``distributed`` to load them would cost
    half a second before the server could start).  The user's config is read through
    ``dask.config`` (0.1 s of CPU to import) only when something could set the key:
    ``dask.config`` already imported here, a ``DASK_*`` variable that names it (or a
    part of it), or a YAML/JSON file on Dask's config paths that holds it
    (:func:`_user_may_set`); else it is unset, as ``dask.config`` would find it."""
    import importlib.util

    import yaml

    key = "distributed.nanny.pre-spawn-environ"
    defaults: dict = {}
    spec = importlib.util.find_spec("distributed")
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "distributed.yaml")
        try:
            with open(path, encoding="utf-8") as f:
                tree = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            defaults = dict(tree["distributed"]["nanny"]["pre-spawn-environ"] or {})
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            defaults = {}
    if not _user_may_set(key):
        return defaults
    import dask.config

    return {**defaults, **(dask.config.get(key, default=None) or {})}


def _user_may_set(key: str) -> bool:
    """Whether Dask's config could give ``key`` a value here (dask's own defaults do not
    hold distributed's keys): see :func:`_spawn_environ`.  Names compare as Dask's do,
    ``_`` and ``-`` alike; the paths are ``dask.config``'s (``$DASK_ROOT_CONFIG`` or
    ``/etc/dask``, ``etc/dask`` under the Python prefixes, ``~/.config/dask``,
    ``$DASK_CONFIG``)."""
    import site
    import sys

    if "dask.config" in sys.modules:  # it may hold what the caller set (dask.config.set)
        return True
    parts = key.replace("_", "-").split(".")
    for name in os.environ:
        if name == "DASK_INTERNAL_INHERIT_CONFIG":
            return True
        if name.startswith("DASK_"):
            var = name[5:].lower().replace("__", ".").replace("_", "-").split(".")
            if var[:len(parts)] == parts[:len(var)]:
                return True
    paths = [os.getenv("DASK_ROOT_CONFIG", "/etc/dask"), os.path.join(sys.prefix, "etc", "dask"),
             *[os.path.join(p, "etc", "dask") for p in getattr(site, "PREFIXES", [])],
             os.path.join(os.path.expanduser("~"), ".config", "dask"),
             *([os.environ["DASK_CONFIG"]] if "DASK_CONFIG" in os.environ else [])]
    for path in dict.fromkeys(paths):
        if os.path.isdir(path):
            try:
                files = [os.path.join(path, n) for n in os.listdir(path)
                         if os.path.splitext(n)[1].lower() in (".json", ".yaml", ".yml")]
            except OSError:
                continue
        else:
            files = [path] if os.path.exists(path) else []
        if any(_file_may_set(f, parts) for f in files):
            return True
    return False


def _file_may_set(path: str, parts: list[str]) -> bool:
    """Whether the Dask config file ``path`` holds the key ``parts`` (or is one that Dask
    would refuse, which ``dask.config`` then says).  A file without the word ``spawn`` (and
    without a ``\\``, whose escapes could spell it) is not parsed."""
    import yaml

    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return False  # dask.config skips it too
    if "\\" not in text and "spawn" not in text:  # every spelling of the key has it
        return False
    try:
        tree = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return True
    level = [tree]
    for part in parts:
        level = [v for d in level if isinstance(d, dict) for k, v in d.items()
                 if isinstance(k, str) and k.replace("_", "-") == part]
    return bool(level)
