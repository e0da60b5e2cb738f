"""Protocol -> backend, chosen here and nowhere else (like fsspec's registry).

Each protocol names its backend class as ``"module:Class"``; the module is imported
and the class instantiated on first use, once per process.  A backend that needs an
optional package (s3fs, gcsfs) fails then with a StorageError saying what to
``pip install``.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass

from htools.errors import StorageError, hide_credentials
from htools.storage.base import Backend


@dataclass(frozen=True)
class Entry:
    """One protocol: its backend, the URL schemes that mean it, what it needs."""

    backend: str                    # "module:Class", imported on first use
    schemes: tuple[str, ...] = ()   # before "://"; pipe: and - are matched in protocol()
    pip: str | None = None          # the optional package the backend imports
    aliases: tuple[str, ...] = ()   # more names accepted as storage-option keys
    # the option names the backend reads (besides the shared retry options); None: the
    # options go to a library (s3fs, gcsfs) that knows its own
    options: tuple[str, ...] | None = ()


REGISTRY: dict[str, Entry] = {
    "file": Entry("htools.storage.local:LocalBackend", ("file",), aliases=("local",),
                  options=("fsync",)),
    "http": Entry("htools.storage.http:HTTPBackend", ("http", "https"),
                  options=("headers", "auth", "put_mode", "timeout", "verify")),
    "s3": Entry("htools.storage.objectstore:S3Backend", ("s3", "s3a"), pip="s3fs",
                options=None),
    "gs": Entry("htools.storage.objectstore:GCSBackend", ("gs", "gcs"), pip="gcsfs",
                options=None),
    "pipe": Entry("htools.storage.pipe:PipeBackend"),
    "stdio": Entry("htools.storage.pipe:StdioBackend"),
}

#: URL scheme -> protocol
SCHEMES = {scheme: name for name, e in REGISTRY.items() for scheme in e.schemes}
#: storage-option key -> protocol
OPTION_KEYS = {key: name for name, e in REGISTRY.items()
               for key in (name, *e.schemes, *e.aliases)}

_lock = threading.Lock()
_backends: dict[str, Backend] = {}


def protocol(url: str) -> str:
    """The protocol of ``url``: a key of :data:`REGISTRY`."""
    if url == "-":
        return "stdio"
    if url.startswith("pipe:"):
        return "pipe"
    if "://" not in url:
        return "file"
    scheme = url.split("://", 1)[0].lower()
    try:
        return SCHEMES[scheme]
    except KeyError:
        known = ", ".join(sorted(SCHEMES))
        raise StorageError(hide_credentials(url), f"unsupported URL scheme {scheme!r} "
                           f"(use a path, {known}, pipe:COMMAND or -)") from None


def backend(name: str, url: str = "") -> Backend:
    """The backend of protocol ``name``, made on first use."""
    found = _backends.get(name)
    if found is not None:
        return found
    entry = REGISTRY[name]
    with _lock:
        if name not in _backends:
            module, _, cls = entry.backend.partition(":")
            try:
                _backends[name] = getattr(importlib.import_module(module), cls)()
            except ImportError as exc:
                if entry.pip is None:
                    raise
                raise StorageError(hide_credentials(url) or f"{name}://",
                                   f"{name} needs the {entry.pip} package (pip install "
                                   f"{entry.pip}): {exc}") from None
        return _backends[name]


def backend_for(url: str) -> Backend:
    """The backend that serves ``url``."""
    return backend(protocol(url), url)
