"""What each stage of an exchange hands the driver (:mod:`.job`), typed: the summary of
its tasks and what they reported besides their counts (memory, duplicates), the runs and
counts a partitioning stage wrote; and the job's one summary made from the stages
(:func:`job_summary`, with :class:`~htools.summary.JobSummary`'s stage arithmetic)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from htools.exchange.runfile import Run
from htools.summary import JobSummary


@dataclass
class Reports:
    """What a stage's tasks reported in their result's ``extra`` besides their counts:
    the memory each started with and peaked at, and the duplicates they dropped."""

    # (the lowest at start, the highest peak) of its tasks, once one reported: not a pair
    # per result (a million outputs' results held 110 MB of them on the client)
    rss: list[tuple[int, int]] = field(default_factory=list)
    duplicates: int = 0

    def add(self, extra: dict) -> None:
        start, peak = extra.get("rss_start", 0), extra.get("peak_rss", 0)
        if self.rss:
            start, peak = min(start, self.rss[0][0]), max(peak, self.rss[0][1])
        self.rss[:] = [(start, peak)]
        self.duplicates += extra.get("duplicates", 0)


@dataclass
class Stage:
    """One stage's tasks: their summary and their reports."""

    summary: JobSummary
    reports: Reports = field(default_factory=Reports)


@dataclass
class Partitioned(Stage):
    """Stage 1, the dedup tasks, or the decide tasks (their drop runs): the runs they
    wrote (in task order, then spill order: equal keys keep their input order) and, when
    counted, their records per bucket."""

    runs: list[Run] = field(default_factory=list)
    counts: np.ndarray | None = None
    keys: list[Run] = field(default_factory=list)  # the runs' keys files (.groupcount)
    digests: list[Run] = field(default_factory=list)  # stage 1's digest runs (.semijoin)


@dataclass
class Merged:
    """The merge levels of one pass: the parts the next step reads (first output, end
    output, runs) and the levels' summary (None: no level was needed)."""

    parts: list[tuple[int, int, list[Run]]]
    summary: JobSummary | None = None

    @property
    def ok(self) -> bool:
        return self.summary is None or self.summary.ok


def add_counts(counts: np.ndarray, sparse: tuple | None) -> None:
    """Add a task's sparse per-bucket counts (bucket numbers, counts) to ``counts``."""
    if sparse is not None:
        idx, n = sparse
        np.add.at(counts, np.frombuffer(idx, dtype=np.uint32),
                  np.frombuffer(n, dtype=np.uint64).astype(np.int64))


def job_summary(tool: str, read: Stage, deduped: Stage | None, end: Stage | None,
                outputs: int, extra: dict, failed: str | None = None) -> JobSummary:
    """One summary whose shards are the outputs: samples read in stage 1 (``read``),
    dropped as duplicates by the dedup pass, written by the writes (``end``); the
    failures of every stage.  When a stage ``failed`` (stage 1, the dedup pass, a merge
    level: ``end`` is its stage, if any), nothing was written: every output counts as
    failed, every sample read as lost.  ``extra`` (the plan's figures) gets the peak
    memory of the tasks that read or wrote samples."""
    out = JobSummary.of_reads(tool, read.summary)
    reports = [read.reports]
    for later in (deduped, end):
        if later is not None:
            out.add_failures(later.summary)
    if deduped is not None:  # duplicates the dedup pass dropped
        out.dropped_later(deduped.summary.samples_dropped)
        reports.append(deduped.reports)
    if end is not None and failed is None:
        out.wrote(end.summary)
        reports.append(end.reports)
    else:
        tasks = (end or read).summary
        out.nothing_written(outputs, f"{failed} failed ({tasks.shards_failed} of "
                                     f"{tasks.shards_total} tasks): nothing was written")
    out.extra = dict(extra)
    rss = [r for rep in reports for r in rep.rss]
    if rss:
        out.extra["peak_rss"] = max(peak for _start, peak in rss)
        out.extra["rss_start_min"] = min(start for start, _peak in rss)
    return out
