"""The job's side of a selection: build the digest table once into scratch, run the job
with it, count what matched, and delete the table and counts (after failures too).

Scratch is the caller's: the exchange's choice (:func:`htools.exchange.sizing.default_scratch`,
a local temp dir for the embedded cluster, else ``_htools_tmp/`` beside the outputs) is
passed in, so a list lands where the job's runs would.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from htools import storage
from htools.clusters.info import ClusterInfo
from htools.errors import HtoolsError
from htools.options import RunOptions
from htools.runtime import engine
from htools.selection import table as tables
from htools.selection.digest import new_key
from htools.selection.filter import read_counts
from htools.selection.spec import Selection
from htools.selection.values import list_digests
from htools.storage.local import local_path
from htools.summary import JobSummary

READERS = 16  # counts files read at once at the end
BUDGET = 0  # bytes of the table a worker holds, when set (tests, benchmarks)
NO_LIMIT_BUDGET = 512 << 20  # when workers declare no memory limit
MIN_BUDGET = 16 << 20
LOCAL = {"file": {"fsync": False}}  # the client's build: a temporary file, moved or copied


@dataclass
class SelectedJob:
    """What a tool runs with: the built selection (None without one) and the options
    (the connected client; no ``--summary`` yet: :meth:`finish` writes it, counts included)."""

    selection: Selection | None
    opts: RunOptions
    user_opts: RunOptions
    options: dict

    def finish(self, summary: JobSummary) -> JobSummary:
        sel = self.selection
        if sel is not None and sel.table:
            account(summary, sel, self.options)
        elif sel is not None:
            summary.plan.insert(0, f"selection: {sel.flag} {sel.source} by {sel.by} "
                                   "(digests sorted once into scratch)")
        return engine.finish(summary, self.user_opts)


@contextmanager
def prepared(sel: Selection | None, opts: RunOptions,
             scratch: Callable[[RunOptions], str]) -> Iterator[SelectedJob]:
    """The job's selection built into ``scratch(opts)`` (on the job's connected client),
    removed when the block ends.  The table is built into a local temporary file while
    the cluster starts (4M keys: 0.6 s of CPU, less than an embedded cluster's start),
    then moved into a local scratch (copied to another)."""
    options = storage.resolve_options(opts.storage_options)
    if sel is None or opts.dry_run:
        yield SelectedJob(sel, opts, opts, options)
        return
    key = new_key()
    with tempfile.TemporaryDirectory(prefix="htools-list-") as tmp, \
            ThreadPoolExecutor(max_workers=1) as builder:
        local = os.path.join(tmp, "list.digests")
        building = builder.submit(tables.build, list_digests(sel, options, key), local, LOCAL)
        with engine.cluster(opts) as client:
            run_opts = opts.with_(client=client, summary=None)
            root = scratch(run_opts)
            folder = storage.join(root, f"select-{uuid.uuid4().hex[:12]}/")
            try:
                listed, dg = building.result()
                url = storage.join(folder, "list.digests")
                tables.copy(local, url, options)
                built = sel.built(url, dg, listed, storage.join(folder, "counts/"), key,
                                  budget(client))
                yield SelectedJob(built, run_opts, opts, options)
            finally:
                _remove(folder, root, options)


def budget(client) -> int:
    """Bytes of the list's table a worker may hold: ``BUDGET`` when set, else a quarter
    of the smallest worker memory limit (512 MiB without limits), as the exchange's
    --memory default; a larger table is looked up by partition."""
    if BUDGET:
        return BUDGET
    memory = ClusterInfo.of(client).memory
    return max(MIN_BUDGET, memory // 4) if memory else NO_LIMIT_BUDGET


def run_selected(sel: Selection | None, opts: RunOptions,
                 scratch: Callable[[RunOptions], str],
                 run: Callable[[Selection | None, RunOptions], JobSummary]) -> JobSummary:
    """``run(selection, opts)`` with the selection built (see :func:`prepared`); its
    summary with the selection's counts, ``--summary`` written."""
    with prepared(sel, opts, scratch) as job:
        return job.finish(run(job.selection, job.opts))


def _remove(folder: str, root: str, options: dict) -> None:
    try:
        storage.delete_prefix(folder, options)
        if storage.protocol(root) == "file":
            os.rmdir(local_path(root))  # the temp dir or _htools_tmp/, when now empty
    except (HtoolsError, OSError):
        pass  # clean-up is best effort; the job's result stands


def account(summary: JobSummary, sel: Selection, options: dict) -> None:
    """``extra.selection`` = {listed, matched, unselected}, and a note for the report line."""
    try:
        urls = [u for u in storage.listdir(sel.counts, options) if u.endswith(".npy")]
    except HtoolsError:
        urls = []
    found = np.zeros(sel.listed, dtype=bool)
    left_out = 0

    def read(url: str) -> bytes:
        with storage.open_read(url, options) as f:
            return f.read()

    with ThreadPoolExecutor(max_workers=READERS) as pool:
        for data in pool.map(read, urls):
            n, rows = read_counts(data)
            left_out += n
            found[rows] = True
    matched = int(found.sum())
    summary.extra["selection"] = {"listed": sel.listed, "matched": matched,
                                  "unselected": left_out}
    summary.notes.append(f"{left_out} samples left out by {sel.flag} "
                         f"({matched} of {sel.listed} listed values found"
                         + (", looked up by partition: the list's table exceeds a worker's "
                            f"budget of {sel.budget} bytes)" if sel.partitioned else ")"))


