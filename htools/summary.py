"""Per-shard results and the job summary.

Every task returns a :class:`ShardResult` as a plain dict (made by the task frame,
:func:`htools.task.shard_task`).  For each shard,
``samples_read == samples_mapped + samples_dropped + samples_failed``: a sample
read is either mapped (it produced zero or more output samples), dropped by the
script (``None``), or failed.  When a whole shard fails, its output is absent
and every sample read from it counts as failed.

The summary stays compact however many shards a job has: counters, plus the first
``MAX_LISTED_FAILURES`` failed shards and ``MAX_LISTED_ERRORS`` failed samples.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import TooManyErrors, hide_credentials

MAX_LISTED_ERRORS = 100
MAX_LISTED_FAILURES = 100
COUNTERS = ("samples_read", "samples_mapped", "samples_written", "samples_dropped",
            "samples_failed", "sample_errors", "bytes_in", "bytes_out")


@dataclass
class ShardResult:
    """What one task did with one shard (or one output partition)."""

    input: str | list[str] = ""
    output: str = ""
    status: str = "ok"  # ok | skipped | failed
    samples_read: int = 0
    samples_mapped: int = 0
    samples_written: int = 0
    samples_dropped: int = 0
    samples_failed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    sample_errors: int = 0  # samples whose processing raised (counted against --max-errors)
    seconds: float = 0.0
    error: str | None = None
    traceback: str = ""  # of an unexpected exception (an htools bug) that failed the shard
    transient: bool = False  # the failure may not happen again: worth running the shard again
    fatal: bool = False  # every shard would fail the same way (the script cannot load)
    attempts: int = 1  # runs of this shard, retries of transient failures included
    errors: list[dict] = field(default_factory=list)  # per-sample: url, key, error, traceback
    extra: dict[str, Any] = field(default_factory=dict)
    max_errors: int = field(default=0, repr=False)  # the shard's budget of failing samples

    def sample_error(self, url: str, key: str, what: str, exc: BaseException, tb: str = "", *,
                     samples: int = 1) -> None:
        """Count one failing sample (or a reduce group of ``samples`` records) whose
        ``what`` ("process_sample raised", ...) raised ``exc``.  Past the shard's
        ``max_errors`` budget this raises :class:`TooManyErrors`: the shard fails."""
        error = f"{type(exc).__name__}: {exc}"
        self.samples_failed += samples
        self.sample_errors += 1
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append({"url": url, "key": key, "error": error, "traceback": tb})
        if self.sample_errors > self.max_errors:
            detail = f"\n{tb}" if tb else ""
            raise TooManyErrors(f"{hide_credentials(url)}: {what} on key {key!r}: {error}{detail}")

    def fail(self, error: str, traceback: str = "", transient: bool = False,
             fatal: bool = False) -> None:
        """The whole shard failed: its output is absent, every sample read is failed."""
        self.status = "failed"
        self.error = error
        self.traceback = traceback
        self.transient = transient
        self.fatal = fatal
        self.samples_failed = self.samples_read - self.samples_dropped
        self.samples_mapped = 0
        self.samples_written = 0
        self.bytes_out = 0

    def as_dict(self) -> dict:
        d = asdict(self)
        del d["max_errors"]
        d["input"] = _hide(d["input"])
        d["output"] = hide_credentials(d["output"])
        if d["error"]:
            d["error"] = hide_credentials(d["error"])
        for e in d["errors"]:
            e["url"] = hide_credentials(e["url"])
            e["error"] = hide_credentials(e["error"])
        return d


def failure_kind(r: dict) -> str:
    """A failed shard's error with its own URLs taken out: shards that failed for the same
    reason (a script that cannot load, a server that refuses writes) share it."""
    kind = r["error"] or ""
    urls = [r["input"]] if isinstance(r["input"], str) else list(r["input"])
    for url in urls + [r["output"]]:
        if url:
            kind = kind.replace(hide_credentials(url), "{shard}")
    return kind


def _hide(value: str | list[str]) -> str | list[str]:
    return hide_credentials(value) if isinstance(value, str) else [hide_credentials(v) for v in value]


@dataclass
class JobSummary:
    """The whole job: shard counts, sample counts that add up, bytes, seconds."""

    tool: str
    shards_total: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    shards_failed: int = 0
    samples_read: int = 0
    samples_mapped: int = 0
    samples_written: int = 0
    samples_dropped: int = 0
    samples_failed: int = 0
    sample_errors: int = 0
    max_errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    shards_retried: int = 0  # shards run again after a transient failure (each counted once)
    retries: list[dict] = field(default_factory=list)  # the first retries: input, output, why
    # failed shards per error (the shard's own URLs taken out), for the first kinds
    failure_kinds: dict[str, int] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)  # first failed shards: input, output, error
    errors: list[dict] = field(default_factory=list)  # failed samples (first MAX_LISTED_ERRORS)
    extra: dict[str, Any] = field(default_factory=dict)
    plan: list[str] = field(default_factory=list)  # with dry_run: what would run
    notes: list[str] = field(default_factory=list)  # what the counts alone do not say
    started: float = field(default_factory=time.time, repr=False)

    def retried(self, r: dict) -> None:
        """A transient failure of ``r``'s shard, which runs again (not counted as failed)."""
        if r.get("attempts", 1) == 1:
            self.shards_retried += 1
        if len(self.retries) < MAX_LISTED_FAILURES:
            self.retries.append({"input": r["input"], "output": r["output"],
                                 "attempt": r.get("attempts", 1), "error": r["error"]})

    def add(self, r: dict) -> None:
        if r["status"] == "skipped":
            self.shards_skipped += 1
            return
        if r["status"] == "failed":
            self.shards_failed += 1
            kind = failure_kind(r)
            if kind in self.failure_kinds or len(self.failure_kinds) < MAX_LISTED_FAILURES:
                self.failure_kinds[kind] = self.failure_kinds.get(kind, 0) + 1
            if len(self.failures) < MAX_LISTED_FAILURES:
                self.failures.append({"input": r["input"], "output": r["output"],
                                      "error": r["error"], "traceback": r.get("traceback", "")})
        else:
            self.shards_done += 1
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + r[name])
        room = MAX_LISTED_ERRORS - len(self.errors)
        if room > 0:
            self.errors.extend(r["errors"][:room])

    @property
    def ok(self) -> bool:
        # --max-errors is a per-shard budget, enforced by each task: a shard over it fails
        # and leaves no output, so a resumed job can never pass over lost samples.
        return self.shards_failed == 0 and self.shards_done + self.shards_skipped == self.shards_total

    def finish(self) -> JobSummary:
        self.seconds = round(time.time() - self.started, 3)
        return self

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("started")
        d["ok"] = self.ok
        return d

    def line(self) -> str:
        mb_in, mb_out = self.bytes_in / 1e6, self.bytes_out / 1e6
        parts = [
            f"{self.tool}: {'ok' if self.ok else 'FAILED'}",
            f"shards {self.shards_done} done, {self.shards_skipped} skipped, "
            f"{self.shards_failed} failed of {self.shards_total}",
            f"samples {self.samples_read} read, {self.samples_written} written, "
            f"{self.samples_dropped} dropped, {self.samples_failed} failed",
            f"{mb_in:.1f} MB in, {mb_out:.1f} MB out",
            *([f"{self.shards_retried} shards retried"] if self.shards_retried else []),
            *self.notes,
            f"{self.seconds:.1f}s",
        ]
        return "; ".join(parts)

    def write_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.as_dict(), f, indent=2)
            f.write("\n")
