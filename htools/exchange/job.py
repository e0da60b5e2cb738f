"""Driving the exchange: one plan (:func:`.plan.plan_exchange`), then stage 1, as many
merge levels as the fan-in needs, the writes; ``--dry-run`` shows the same plan.

The client plans from aggregated numbers only: each stage-1 task returns its runs'
URLs and sizes and its sparse counts per bucket; merge and write tasks find their
byte ranges in the runs' own offset tables.  Client memory is O(N + M + buckets).
Each stage hands back a typed result (:mod:`.stages`), and the job's summary is made
from them.  Scratch (``--scratch``, default a temp dir for the embedded cluster, else
``_htools_tmp/`` beside the outputs) is deleted at the end, after failures and Ctrl-C
too; each merge level deletes the runs it consumed.

Here: the job's checks, lineage and cluster; the stages of one exchange run in
:class:`.runner.ExchangeJob`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from htools import lineage, lineage_record, shards
from htools.errors import HtoolsError
from htools.exchange.dryrun import dry_run
from htools.exchange.keys import KeySpec
from htools.exchange.runner import ExchangeJob
from htools.exchange.specs import compact
from htools.options import RunOptions
from htools.runtime import engine, preflight
from htools.selection import Selection, selection_lineage
from htools.summary import JobSummary
from htools.usercode.script import Script
from htools.usercode.shipping import Shipment


@dataclass(frozen=True)
class ExchangeSpec:
    tool: str
    inputs: tuple[str, ...]
    outputs: str
    key: KeySpec
    script: Script | None = None  # process_sample / sort_key / reduce_samples
    merge: bool = False
    maxcount: int | None = None
    memory: int | None = None
    scratch: str | None = None
    mtime: float | None = 0
    fan_in: int | None = None  # runs one task reads at most (default: from --memory)
    select: Selection | None = None  # --keep/--drop LIST (built into scratch by the tool)


def run_exchange(spec: ExchangeSpec, opts: RunOptions) -> JobSummary:
    """Run the exchange; the summary (written to ``opts.summary`` if set) is returned."""
    outset = shards.OutputSet.parse(spec.outputs)
    inputs = shards.expand_all(list(spec.inputs), opts.storage_options)
    made = lineage.counted(exchange_lineage(spec, inputs), outset.count)
    inputs = compact(inputs, 0, len(inputs))  # a brace pattern's: five values, not N URLs
    summary, outputs = _exchange(spec, outset, inputs, opts, made)
    return lineage_record.finish(summary, opts, outset, outputs, made)


def exchange_lineage(spec: ExchangeSpec, inputs: list[str]) -> dict:
    """The lineage of an htshuffle or htsort (:mod:`htools.lineage`): the options that
    change the outputs' bytes (not --memory, --fan-in or --scratch, which do not)."""
    k = spec.key
    keyed = {"seed": k.seed} if k.mode == "random" else \
        {"key": k.field if k.mode == "field" else None, "key_type": k.type,
         "reverse": k.reverse, "merge": spec.merge}
    return lineage.make(spec.tool, inputs=inputs, outputs=spec.outputs, script=spec.script,
                        options={**keyed, "dedup": k.dedup, "maxcount": spec.maxcount,
                                 "mtime": spec.mtime, **selection_lineage(spec.select)})


def _exchange(spec: ExchangeSpec, outset: shards.OutputSet, inputs: Sequence[str],
              opts: RunOptions, made: dict) -> tuple[JobSummary, list[str]]:
    n_out = outset.count
    if n_out is None and not spec.maxcount:
        raise HtoolsError(f"{spec.outputs!r} is open-ended: give --maxcount, or name the "
                          "outputs with @M")
    if n_out is not None and spec.maxcount:
        raise HtoolsError(f"{spec.outputs!r} names exactly {n_out} outputs; --maxcount needs "
                          "a numbered pattern such as out-%06d.tar")
    if spec.mtime is None:  # "now", taken once: stage 1 encodes every sample's headers
        spec = replace(spec, mtime=time.time())
    known = outset.urls(n_out) if n_out else []
    preflight.check(inputs, known or [outset.first()], opts.storage_options,
                    write=not opts.dry_run)
    if spec.scratch:
        try:
            preflight.check([], [spec.scratch], opts.storage_options, write=not opts.dry_run)
        except preflight.Unreachable as e:  # say which folder: scratch, not the outputs
            raise preflight.Unreachable(
                str(e).replace("cannot write outputs", "cannot write scratch", 1)) from None
    replacing = lineage_record.check_lineage(outset, made, opts, known)
    present = engine.plan_outputs(known, opts)
    if opts.dry_run:
        return dry_run(spec, outset, inputs, known, present, opts), []
    if known and len(present) == len(known):
        summary = JobSummary(spec.tool, shards_total=len(known), shards_skipped=len(known))
        return summary.finish(), known
    del known  # the job makes its own list of the outputs (ExchangeJob._outputs)
    started = time.time()
    job = None
    try:
        # the script's modules travel once per worker for the whole job (all its stages)
        shipment = Shipment(spec.script)
        with engine.cluster(opts) as client, shipment.registered(client):
            job = ExchangeJob(replace(spec, script=shipment.script), inputs, outset, present,
                       opts.with_(client=client))
            preflight.check_workers(client, inputs, [outset.first(), job.scratch_root])
            # the outputs --resume keeps: known once stage 1 has counted (--maxcount)
            job.on_write = lambda _: lineage_record.start_record(outset, made, opts, replacing,
                                                             len(job.present))
            summary = job.run()
    finally:  # once an embedded cluster is gone: its workers write no more runs
        if job is not None:
            job.clean_up()
    summary.started = started
    return summary.finish(), job.outputs
