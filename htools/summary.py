"""Per-shard results and the job summary.

Every task returns a :class:`ShardResult` as a plain dict (made by the task frame,
:func:`htools.runtime.task.shard_task`).  For each shard,
``samples_read == samples_mapped + samples_dropped + samples_failed + samples_merged +
samples_reduced``: a sample read is mapped (it produced an output sample, or several),
dropped (the script's ``None``, a ``--dedup`` duplicate), failed, joined into another
by ``--merge`` or folded into another by ``reduce_samples``.  So for a job whose samples
map one to one, ``read == written + dropped + failed + merged + reduced``.  When a whole
shard fails, in every tool, its output is absent and every sample read from it before
the failure counts as failed (those dropped stay dropped).

The summary stays compact however many shards a job has: counters, plus the first
``MAX_LISTED_FAILURES`` failed shards and ``MAX_LISTED_ERRORS`` failed samples.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from htools import summary_view
from htools.errors import TooManyErrors, hide_credentials
from htools.naming import index_entry
from htools.written import Written

MAX_LISTED_ERRORS = 100
MAX_LISTED_FAILURES = 100
COUNTERS = ("samples_read", "samples_mapped", "samples_written", "samples_dropped",
            "samples_failed", "samples_merged", "samples_reduced", "sample_errors",
            "bytes_in", "bytes_out")
FOLDED = ("samples_merged", "samples_reduced")  # samples joined or folded into others
READ_COUNTERS = ("samples_read", "samples_mapped", "samples_dropped", "samples_failed",
                 "sample_errors", "bytes_in")  # what the stage that reads samples counts


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
    samples_merged: int = 0  # joined into another sample of the same key (--merge)
    samples_reduced: int = 0  # folded into another by reduce_samples (n in, k < n out)
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
    sha256: str = ""  # of the output as stored (for the shard index)
    fields: dict[str, int] = field(default_factory=dict)  # samples written with each field
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
            lines = tb.splitlines()
            if lines and lines[-1].endswith(error):  # the error's own line: once is enough
                tb = "\n".join(lines[:-1])
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
        self.samples_mapped = self.samples_merged = self.samples_reduced = 0
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


_KEY = re.compile(r"\bkey '(?:[^'\\]|\\.)*'|\bkey \"(?:[^\"\\]|\\.)*\"")


def failure_kind(r: dict) -> str:
    """A failed shard's error with its own URLs, the sample key and the traceback taken
    out: shards that failed for the same reason (a script that cannot load, a bug that
    fails every sample, a server that refuses writes) share it."""
    kind = (r["error"] or "").split("\n", 1)[0]
    urls = [r["input"]] if isinstance(r["input"], str) else list(r["input"])
    for url in urls + [r["output"]]:
        if url:
            kind = kind.replace(hide_credentials(url), "{shard}")
    return _KEY.sub("key {key}", kind)


def sample_error_kind(e: dict) -> str:
    """A failed sample's error with its key and shard taken out (for grouping)."""
    return _KEY.sub("key {key}", (e["error"] or "").split("\n", 1)[0])


def _hide(value: str | list[str]) -> str | list[str]:
    return hide_credentials(value) if isinstance(value, str) else [hide_credentials(v) for v in value]


_FRESH = ShardResult().as_dict()  # a result's values before its task changed any


def compact(r: dict) -> dict:
    """A result dict as it travels from its worker to the client: ``status`` and the
    values a task changed (a result of one sample is about 150 bytes pickled, not 700:
    a write task of 1,024 outputs returns them all at once)."""
    return {k: v for k, v in r.items() if k == "status" or k not in _FRESH or v != _FRESH[k]}


def expand(r: dict) -> dict:
    """A :func:`compact` result whole again (as ``as_dict`` made it, keys in order)."""
    out = dict(_FRESH)
    out["errors"], out["extra"], out["fields"] = [], {}, {}  # its own, not shared
    out.update(r)
    return out


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
    samples_merged: int = 0  # joined into another by --merge
    samples_reduced: int = 0  # folded into another by reduce_samples
    sample_errors: int = 0
    max_errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    shards_retried: int = 0  # shards run again after a transient failure (each counted once)
    shards_differ: int = 0  # shards a check found unlike what they should be (htextract --verify)
    retries: list[dict] = field(default_factory=list)  # the first retries: input, output, why
    # failed shards per error (the shard's own URLs taken out), for the first kinds
    failure_kinds: dict[str, int] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)  # first failed shards: input, output, error
    errors: list[dict] = field(default_factory=list)  # failed samples (first MAX_LISTED_ERRORS)
    extra: dict[str, Any] = field(default_factory=dict)
    plan: list[str] = field(default_factory=list)  # with dry_run: what would run
    notes: list[str] = field(default_factory=list)  # what the counts alone do not say
    # each output written this run: output, nsamples, filesize, sha256, fields (for the
    # shard index; not in as_dict(), which stays compact)
    written: Written = field(default_factory=lambda: Written(), repr=False)
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
            if r["output"] and r.get("sha256"):
                self.written.append(index_entry(r["output"], r))
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + r.get(name, 0))
        room = MAX_LISTED_ERRORS - len(self.errors)
        if room > 0:
            self.errors.extend(r["errors"][:room])

    # ---- one job's summary from its stages (the exchange's 2-5 runs of tasks) ----------

    @classmethod
    def of_reads(cls, tool: str, first: JobSummary) -> JobSummary:
        """A job's summary from the stage that read its samples: their counts, bytes in,
        failures and retries; no shards yet (a later stage's outputs are the job's)."""
        out = cls(tool, max_errors=first.max_errors, errors=list(first.errors),
                  **{n: getattr(first, n) for n in READ_COUNTERS})
        out.add_failures(first, samples=False)
        return out

    def add_failures(self, later: JobSummary, *, samples: bool = True) -> None:
        """A later stage's failed shards (by kind), retries and, with ``samples``, its
        sample errors; not its shard or sample counts."""
        self.failures += later.failures
        self.shards_retried += later.shards_retried
        self.retries += later.retries
        for kind, n in later.failure_kinds.items():
            self.failure_kinds[kind] = self.failure_kinds.get(kind, 0) + n
        if samples:
            self.sample_errors += later.sample_errors
            self.errors += later.errors

    def add_tasks(self, other: JobSummary) -> None:
        """More tasks of one stage (the next merge level): tasks, failures, retries."""
        for name in ("shards_total", "shards_done", "shards_failed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.add_failures(other, samples=False)

    def dropped_later(self, n: int) -> None:
        """``n`` samples mapped by the reading stage that a later one dropped."""
        self.samples_mapped -= n
        self.samples_dropped += n

    def wrote(self, end: JobSummary) -> None:
        """The outputs of the stage that wrote them: its shards are the job's; the samples
        it dropped (reduce -> None, duplicates), lost (a failed output), joined (--merge)
        or folded (a reduce) move out of "mapped"."""
        for name in ("shards_total", "shards_done", "shards_skipped", "shards_failed",
                     "samples_written", "written", "bytes_out"):
            setattr(self, name, getattr(end, name))
        for name in ("samples_dropped", "samples_failed", *FOLDED):
            self.samples_mapped -= getattr(end, name)
            setattr(self, name, getattr(self, name) + getattr(end, name))

    def nothing_written(self, outputs: int, note: str) -> None:
        """A stage failed before any output was written: every output failed, every
        sample read and mapped is lost."""
        self.shards_total = self.shards_failed = outputs
        self.samples_failed += self.samples_mapped
        self.samples_mapped = 0
        self.notes.append(note)

    @property
    def ok(self) -> bool:
        # --max-errors is a per-shard budget, enforced by each task: a shard over it fails
        # and leaves no output, so a resumed job can never pass over lost samples.
        # A check that ran on every shard and found some differing is not ok either.
        return (self.shards_failed == 0 and self.shards_differ == 0
                and self.shards_done + self.shards_skipped == self.shards_total)

    def finish(self) -> JobSummary:
        self.seconds = round(time.time() - self.started, 3)
        return self

    def as_dict(self) -> dict:
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)
             if f.name not in ("started", "written")}  # asdict() would copy `written` too
        d["ok"] = self.ok
        return d

    def line(self) -> str:
        mb_in, mb_out = self.bytes_in / 1e6, self.bytes_out / 1e6
        parts = [
            f"{self.tool}: {'ok' if self.ok else 'FAILED'}",
            f"shards {self.shards_done} done, {self.shards_skipped} skipped, "
            f"{self.shards_failed} failed of {self.shards_total}",
            f"samples {self.samples_read} read, {self.samples_written} written, "
            f"{self.samples_dropped} dropped, {self.samples_failed} failed{self._folded()}",
            f"{mb_in:.1f} MB in, {mb_out:.1f} MB out",
            *([f"{self.shards_retried} shards retried"] if self.shards_retried else []),
            *([f"{self.shards_differ} differ"] if self.shards_differ else []),
            *self.notes,
            f"{self.seconds:.1f}s",
        ]
        return "; ".join(parts)

    def _folded(self, sep: str = "") -> str:
        """``, 60 merged``, ``, 7 reduced``: the samples joined or folded, when any."""
        return "".join(f", {getattr(self, n):{sep}} {n[8:]}" for n in FOLDED if getattr(self, n))

    def write_json(self, path: str) -> None:
        """The summary as JSON in the file ``path``, whole or not at all: written beside it
        and renamed over it (a reader never sees half of it; a pipe or a device such as
        ``/dev/stdout`` is written in place)."""
        text = json.dumps(self.as_dict(), indent=2) + "\n"
        if os.path.exists(path) and not os.path.isfile(path):
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            return
        part = f"{path}.part-{os.getpid()}"
        try:
            with open(part, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(part, path)
        finally:
            if os.path.exists(part):
                os.unlink(part)

    # ---- display (htools.summary_view): ``print(summary)``, a notebook's rich output ----

    def __str__(self) -> str:
        """The summary line, then the first failures (shards, then samples) with their errors."""
        return summary_view.text(self)

    def _repr_html_(self) -> str:
        """A table for Jupyter: shards, samples, bytes, time and throughput, and the first
        failures with their errors (everything escaped)."""
        return summary_view.html_table(self)


format_bytes = summary_view.format_bytes  # where peek and the exchange's sizing take it
