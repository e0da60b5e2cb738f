"""The options every command shares (the CLI's common flags) and the worker resources a
job's tasks ask for.  At the bottom of the package: it imports only :mod:`htools.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from htools.errors import HtoolsError


def parse_resources(spec) -> dict[str, float]:
    """Dask worker resources from ``{"GPU": 1}``, ``"GPU=1"``, ``"GPU=1,MEM=2e9"`` or a
    list of such strings (``--resources``, repeatable): name -> amount > 0."""
    items: list = []
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        for part in [spec] if isinstance(spec, str) else list(spec):
            for one in str(part).replace(",", " ").split():
                name, eq, amount = one.partition("=")
                if not eq or not name.strip():
                    raise HtoolsError(f"bad resource {one!r}: expected NAME=AMOUNT, such as "
                                      "GPU=1")
                items.append((name.strip(), amount.strip()))
    out: dict[str, float] = {}
    for name, amount in items:
        try:
            value = float(amount)
        except (TypeError, ValueError):
            raise HtoolsError(f"bad resource {name}={amount}: the amount must be a number, "
                              "such as GPU=1") from None
        if not name or not isinstance(name, str) or not value > 0 or value == float("inf"):
            raise HtoolsError(f"bad resource {name}={amount}: expected a name and an amount "
                              "> 0, such as GPU=1")
        out[name] = int(value) if value.is_integer() else value
    return out


@dataclass(frozen=True)
class RunOptions:
    """Options every command shares (the CLI's common flags)."""

    cluster: str | None = None
    workers: int | None = None
    retries: int = 2
    quiet: bool = False
    resume: bool = False
    # --resume-any: resume, keeping outputs whose recorded lineage is another job's
    resume_any: bool = False
    overwrite: bool = False
    dry_run: bool = False
    max_errors: int = 0
    summary: str | None = None
    storage_options: dict | None = None
    index: bool = True  # write STEM.index.json beside the outputs (htools.shardindex)
    # Dask worker resources every task asks for ({"GPU": 1}): tasks run only on workers
    # that declare them (dask worker --resources GPU=1), as many at once as they hold
    resources: dict | None = None
    client: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.resume_any:
            object.__setattr__(self, "resume", True)
        if self.resume and self.overwrite:
            raise HtoolsError("--resume and --overwrite exclude each other")
        if self.max_errors < 0 or self.retries < 0:
            raise HtoolsError("max_errors and retries must be >= 0")
        if self.resources is not None:
            object.__setattr__(self, "resources", parse_resources(self.resources) or None)

    @classmethod
    def of(cls, options: dict) -> RunOptions:
        """From a library function's keyword arguments (a clear error for unknown ones)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise HtoolsError(f"unknown option(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(names))}")
        return cls(**options)

    def as_kwargs(self) -> dict:
        """The options as keyword arguments of a library function."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def with_(self, **kw) -> RunOptions:
        return replace(self, **kw)
