"""Who made a shard set, beside it: the lineage (:mod:`htools.lineage`) of the job that
writes it is checked against the one recorded there before any task runs
(:func:`check_lineage`: ``--resume``, ``--overwrite``), recorded in ``STEM.lineage.json``
as its first output task starts (:func:`start_record`: a job that fails, is stopped by
Ctrl-C or killed leaves it), and replaced by the shard index when the job succeeds
(:func:`finish`, :func:`htools.shardindex.write_for_job`).

``made``, a job's lineage, comes with the count of outputs its pattern fixes
(:func:`htools.lineage.counted`, applied where each tool makes its lineage)."""

from __future__ import annotations

import re
from collections.abc import Callable

from htools import lineage, storage
from htools.errors import HtoolsError, NotFound, StorageError, hide_credentials
from htools.naming import TAR_SUFFIXES
from htools.options import RunOptions
from htools.runtime import engine
from htools.shardindex import index_url, read_index, read_lineage, write, write_for_job
from htools.shards import OutputSet
from htools.summary import JobSummary


def lineage_url(outset: OutputSet) -> str:
    """Where a job that failed part-way records what made the outputs it wrote:
    ``thumbs.lineage.json`` beside ``thumbs.index.json`` (no index vouches for a set a
    job left incomplete, but ``--resume`` must still know whose outputs they are)."""
    return index_url(outset).removesuffix(".index.json") + ".lineage.json"


def recorded_lineage(outset: OutputSet, options: dict | None
                     ) -> tuple[dict | None, dict | None]:
    """The lineage recorded beside ``outset`` -- the index's, else the one an unfinished
    job left in :func:`lineage_url` -- and that unfinished job's record (None: none)."""
    old = read_lineage(index_url(outset), options)
    partial = read_index(lineage_url(outset), options)
    if not isinstance(old, dict) and partial is not None:
        old = partial.get("lineage")
    return (old if isinstance(old, dict) else None), partial


def check_lineage(outset: OutputSet, made: dict | None, opts: RunOptions,
                  outputs: list[str] | None = None) -> str | None:
    """Before a job that writes ``outset`` runs a task, against the lineage recorded
    beside it (:func:`recorded_lineage`):

    * ``--resume`` when it is another job's than ``made`` (this job's), or when an
      ``--overwrite`` of another job's set, or a ``--resume-any`` that kept another job's
      outputs, did not finish (some outputs may be that job's): refused in one line
      saying what differs (``--resume-any`` keeps them);
    * ``--overwrite``: another job's index (or unfinished job's record), or an index
      without lineage, is deleted first, so that a job that then stops part-way leaves no
      index vouching for a set it changed.

    An unfinished job's record beside none of the outputs it may describe
    (:func:`_outputs_exist`: a job stopped before it wrote one) vouches for nothing: it
    is removed, not refused by.  Returns, for :func:`start_record`, what makes the set
    not this job's alone until it finishes: for ``--overwrite``, what differs from the
    job whose outputs it replaces (another job's, the unfinished one recorded, or outputs
    with no recorded lineage); for ``--resume-any``, why the set is mixed.  Outputs
    without a recorded lineage are kept by ``--resume`` as before; :func:`finish` says so."""
    if made is None or not (opts.resume or opts.overwrite):
        return None
    old, partial = recorded_lineage(outset, opts.storage_options)
    if old is None:
        return _unrecorded(outset, opts, outputs)
    diffs = lineage.differences(old, made)
    if opts.resume and not diffs and not opts.resume_any:
        _refuse_unfinished(outset, partial)
    if opts.resume_any:  # what the record says while it runs: the set is mixed
        kept = diffs and f"kept by --resume-any: {'; '.join(diffs)}"
        return "; ".join(x for x in (_mixed(partial), kept) if x) or None
    if not diffs:
        return _replacing(partial) if opts.overwrite else None
    if opts.resume and partial is not None and old is partial.get("lineage") \
            and not _outputs_exist(outset, outputs, opts.storage_options):
        storage.delete(lineage_url(outset), opts.storage_options)
        return None
    if opts.resume:
        raise HtoolsError(f"--resume: the outputs beside {hide_credentials(index_url(outset))} "
                          f"were made by another job: {'; '.join(diffs)}; use --overwrite, "
                          "or --resume-any to keep them")
    if opts.overwrite and not opts.dry_run:
        storage.delete(index_url(outset), opts.storage_options)
        if partial is not None:
            storage.delete(lineage_url(outset), opts.storage_options)
    return "; ".join(diffs)


UNRECORDED = "outputs with no recorded lineage (an older htools', or made by hand)"


def _unrecorded(outset: OutputSet, opts: RunOptions, outputs: list[str] | None
                ) -> str | None:
    """``--overwrite`` of a set whose outputs no lineage vouches for: an index without
    one is deleted first, as another job's; :data:`UNRECORDED` when there is an index or
    an output (:func:`_outputs_exist`) to replace, for the record to say so."""
    options = opts.storage_options
    if not opts.overwrite:
        return None
    index = storage.exists(index_url(outset), options)
    if not index and not _outputs_exist(outset, outputs, options):
        return None
    if index and not opts.dry_run:
        storage.delete(index_url(outset), options)
    return UNRECORDED


def _outputs_exist(outset: OutputSet, outputs: list[str] | None, options: dict | None
                   ) -> bool:
    """Whether an output that a record beside ``outset`` may describe exists: one of
    ``outputs`` (this job's, when it knows them) or of the set's fixed names, or any
    shard of the set's name in its folder (``o-7.tar`` for ``o-@4.tar``: a record lists
    no outputs, and the job that left it may have named another count or numbering).
    One listing of the folder; one that cannot be listed: the known outputs are asked
    for, and with none known, the answer is yes (a record stays)."""
    folder, known = outset.folder(), list(outputs or outset.fixed or [])
    stem = index_url(outset).rsplit("/", 1)[-1].removesuffix(".index.json")
    shard = re.compile(re.escape(stem) + r"[-_.]*\d+(" +
                       "|".join(re.escape(s) for s in TAR_SUFFIXES) + ")?")
    try:
        names = {u.rsplit("/", 1)[-1] for u in storage.listdir(folder, options)}
    except NotFound:
        names = set()
    except StorageError:  # no listing (an HTTP server without one)
        return bool(engine.existing_outputs(known, options)) if known else True
    beside = [u for u in known if u.startswith(folder) and "/" not in u[len(folder):]]
    return any(u[len(folder):] in names for u in beside) \
        or any(shard.fullmatch(name) for name in names) \
        or bool(engine.existing_outputs([u for u in known if u not in beside], options))


def _refuse_unfinished(outset: OutputSet, partial: dict | None) -> None:
    """``--resume`` of this job's set, refused when its record says the set is not this
    job's alone: an ``--overwrite`` or a ``--resume-any`` did not finish."""
    where = hide_credentials(index_url(outset))
    if (partial or {}).get("overwriting"):
        raise HtoolsError(f"--resume: an --overwrite of the outputs beside {where} did not "
                          f"finish: some may still be another job's "
                          f"({partial['overwriting']}); use --overwrite, or --resume-any to "
                          "keep them")
    if (partial or {}).get("mixed"):
        raise HtoolsError(f"--resume: the outputs beside {where} are of more than one job "
                          f"({partial['mixed']}); use --overwrite, or --resume-any to keep "
                          "them")


def _mixed(partial: dict | None) -> str | None:
    """Why an unfinished job's record says its set is not one job's (None: it does not)."""
    if (partial or {}).get("overwriting"):
        return f"an --overwrite did not finish: {partial['overwriting']}"
    return (partial or {}).get("mixed") or None


def _replacing(partial: dict | None) -> str | None:
    """What an ``--overwrite`` of the set whose record is ``partial`` still replaces."""
    return (partial or {}).get("overwriting") or (partial or {}).get("mixed") or None


def start_record(outset: OutputSet, made: dict | None, opts: RunOptions,
                 replacing: str | None = None, kept: int = 0
                 ) -> Callable[[], None] | None:
    """As a job's first output task is about to run: its lineage ``made`` in
    :func:`lineage_url`, as a job that failed part-way leaves it, so that a client
    stopped by Ctrl-C or killed leaves who made the outputs it wrote; ``replacing``
    (from :func:`check_lineage`): the set held another job's outputs, which this one
    overwrites (``"overwriting"``) or keeps with ``--resume-any`` (``"mixed"``) -- until
    it finishes, a ``--resume`` is refused.  Otherwise a ``--resume`` that keeps
    ``kept`` > 0 outputs leaves the set's record as it was (the lineage it checked them
    by).  The index written when the job succeeds replaces the record.

    Returns what removes the record again when every task of the job failed (nothing
    written), unless it replaces another job's outputs."""
    if made is None or opts.dry_run or not opts.index or storage.is_stream(outset.first()) \
            or (opts.resume and kept and not replacing):
        return None
    at = lineage_url(outset)
    flag = {("overwriting" if opts.overwrite else "mixed"): replacing} if replacing else {}
    write(_record(made, **flag), at, opts.storage_options)
    if replacing:
        return None

    def forget() -> None:
        try:
            storage.delete(at, opts.storage_options)
        except StorageError:  # the job's own failure is what the user must see
            pass
    return forget


def finish(summary: JobSummary, opts: RunOptions, outset: OutputSet,
           outputs: list[str], made: dict | None = None) -> JobSummary:
    """The end of a job that wrote ``outputs`` (of the output set ``outset``): when it
    succeeded, the shard index beside them (unless ``index=False``) recording the job's
    lineage ``made`` (:mod:`htools.lineage`), then :func:`htools.runtime.engine.finish`
    (``--summary`` JSON, naming the index).  A job that failed after writing outputs
    records ``made`` in :func:`lineage_url` instead, for a later ``--resume`` to check.
    Outputs kept by ``--resume`` whose lineage was not checked (none recorded, or
    ``--resume-any``) get a note."""
    if opts.dry_run or any(storage.is_stream(u) for u in outputs):
        return engine.finish(summary, opts)
    options = opts.storage_options
    # a failed job's record beside the outputs: replaced by the index a success writes
    record = read_index(lineage_url(outset), options) if opts.resume or opts.overwrite \
        else None
    previous = None
    if opts.resume and summary.shards_skipped:  # their entries come from the old index
        previous = read_index(index_url(outset), options)
        if not (previous or {}).get("lineage") and isinstance((record or {}).get("lineage"),
                                                              dict):
            previous = {**(previous or {}), "lineage": record["lineage"]}
        note, mixed = _resume_note(previous, made, summary.shards_skipped)
        if note:
            summary.notes.append(note)
        mixed = mixed or _mixed(record)  # kept by --resume-any
        if mixed and made is not None:  # the record says the set is not one job's
            made = {**made, "mixed": mixed}
    if outputs and opts.index and summary.ok:
        write_for_job(outset, outputs, summary, options, made, previous)
        if record is not None or summary.shards_done:  # the index vouches for the set
            storage.delete(lineage_url(outset), options)  # (start_record wrote one)
    elif outputs and opts.index and summary.shards_done and made is not None:
        at = lineage_url(outset)
        try:
            flags = {k: v for k, v in (record or {}).items() if k in ("overwriting", "mixed")}
            write(_record(made, **flags, shards_done=summary.shards_done,
                          shards_total=summary.shards_total), at, options)
            summary.extra["lineage"] = hide_credentials(at)
        except StorageError as e:  # the job's own failure is what the user must see
            summary.notes.append(f"could not record the lineage of the outputs written in "
                                 f"{hide_credentials(at)}: {e}")
    return engine.finish(summary, opts)


def _record(made: dict, overwriting: str | None = None, mixed: str | None = None,
            **counts: int) -> dict:
    """What a job that did not finish leaves beside its outputs (no shard list: it
    vouches for nothing but who made them); ``overwriting``: what differs from the job
    whose outputs an ``--overwrite`` replaces; ``mixed``: why a ``--resume-any`` keeps
    another job's; ``counts``: its shards done and total, once known (a failed job's)."""
    doc = {"complete": False, "lineage": made, **counts,
           "note": "outputs of a job that did not finish; --resume checks this lineage"}
    if overwriting:
        doc["overwriting"] = overwriting
    if mixed:
        doc["mixed"] = mixed
    return doc


def _resume_note(previous: dict | None, made: dict | None, kept: int
                 ) -> tuple[str | None, str | None]:
    """The summary's note on ``kept`` outputs a resumed job did not write, and, when
    some were made by another job (kept by ``--resume-any``), what differs."""
    old = (previous or {}).get("lineage")
    if made is None:
        return None, None
    if not isinstance(old, dict):
        return (f"{kept} output(s) kept by --resume have no recorded lineage (an index made "
                "before lineage was recorded, or none): not checked that this job made "
                "them"), None
    diffs = lineage.differences(old, made)
    if diffs:
        note = f"{kept} output(s) kept by --resume-any were made by another job: "
        return note + "; ".join(diffs), "; ".join(diffs)
    if "digest" not in (old.get("inputs") or {}):  # lineage.sized_later's record
        return (f"{kept} output(s) kept by --resume were checked by their files' paths, not "
                "their sizes (the job that wrote them was stopped before it had sized them)"
                ), old.get("mixed")
    return None, old.get("mixed")
