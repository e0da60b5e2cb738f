"""htextract --format parquet: the selected fields of every sample as a typed table.

One column per field, in ``-f`` order: ``__key__`` (and other ``__`` names) as strings;
a field whose every present value parses as an integer as int64 (as float64 when they
parse as numbers but not all as 64-bit integers); else strings when every value is
valid UTF-8; else binary.  A sample without the field has a null there
(:mod:`htools.parquet_schema`).

``-o meta.parquet`` gathers every row on the client, in shard order, and writes one
file.  A pattern (``-o meta-@N.parquet``, N the number of input shards) or
``--to-dir DIR`` (``DIR/NAME.parquet`` for a shard ``NAME.tar``, ``NAME.tgz`` ...) has
every task write its own shard's file; then every file of the job types each column
alike: each task returns the kinds it inferred, the client takes the greatest of each
field over the job (files skipped by ``--resume`` give theirs from their footer), and
the shards whose files differ are written again from their input with the job's kinds.
Files are written through :mod:`htools.storage` (atomic, any protocol).  pyarrow is an
optional extra: ``pip install 'htools-wds[parquet]'``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

from htools import shards, storage
from htools.errors import HtoolsError, hide_credentials
from htools.fields import check_present
from htools.naming import TAR_SUFFIXES
from htools.options import RunOptions
from htools.parquet_schema import (
    differs,
    file_kinds,
    merge,
    pyarrow,
    reasons,
    table,
)
from htools.runtime import engine, preflight
from htools.runtime.engine import Task
from htools.runtime.shardio import read_shard
from htools.runtime.task import shard_task
from htools.selection import Selection, selected
from htools.summary import JobSummary, ShardResult


def write(names: list[str], rows: list[list], url: str, options: dict | None,
          kinds: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    """Write the rows as one parquet file at ``url`` (atomic), with their inferred kinds
    or ``kinds``; returns its size and the kinds written."""
    _pa, pq = pyarrow()
    data, written = table(names, rows, kinds)
    buf = io.BytesIO()
    pq.write_table(data, buf)
    with storage.open_write(url, options) as out:
        out.write(buf.getvalue())
    return len(buf.getvalue()), written


def parquet_shard(input: str, fields: tuple[str, ...], out: str | None,
                  options: dict | None, kinds: dict[str, str] | None = None,
                  select: Selection | None = None) -> dict:
    """Task: the selected fields of one shard (of its samples that ``select`` keeps);
    written to ``out`` as parquet (typed as ``kinds`` say, else as the values call
    for), or (without ``out``) returned as rows for the client to gather."""
    rows: list[list] = []
    written: dict[str, str] = {}
    seen: set[str] = set()
    with shard_task(input, out or "") as result:
        with read_shard(input, options, result) as samples:
            for sample in selected(samples, select, result, input, options):
                result.samples_read += 1
                seen.update(sample)
                rows.append([sample.get(f) for f in fields])
                result.samples_mapped += 1
                result.samples_written += 1
        if out:
            result.bytes_out, written = write(list(fields), rows, out, options, kinds)
    ok = result.status == "ok"
    result.extra = {"rows": rows if out is None and ok else [], "kinds": written if ok else None,
                    "seen": sorted(seen)}
    return result.as_dict()


def shard_name(url: str) -> str:
    """``.../train-0003.tgz`` -> ``train-0003``: a shard's file name without its tar or
    compression suffix (a ``scheme://`` URL's query and fragment left out)."""
    path = url.split("?", 1)[0].split("#", 1)[0] if "://" in url else url
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for suffix in TAR_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def dir_targets(urls: list[str], to_dir: str) -> list[str]:
    """``DIR/NAME.parquet`` for every input shard; two shards of one name are refused."""
    if storage.is_stream(to_dir):
        raise HtoolsError(f"--to-dir {to_dir!r}: give a folder or storage URL")
    folder = shards.absolute(to_dir)
    seen: dict[str, str] = {}
    targets = []
    for url in urls:
        name = shard_name(url)
        if name in ("", ".", "..") or "\\" in name:
            raise HtoolsError(f"--to-dir: cannot name a parquet file after "
                              f"{hide_credentials(url)}")
        name += ".parquet"
        if name in seen:
            raise HtoolsError(f"--to-dir: {hide_credentials(seen[name])} and "
                              f"{hide_credentials(url)} would both write {name}: give shards "
                              "distinct names, or use -o NAME-@N.parquet")
        seen[name] = url
        targets.append(storage.join(folder, name))
    return targets


def extract_parquet(inputs, fields: tuple[str, ...], out, opts: RunOptions,
                    to_dir: str | None = None, allow_missing: bool = False,
                    select: Selection | None = None) -> JobSummary:
    """``extract(..., format="parquet", out=PATH | to_dir=DIR)``: see the module's docstring."""
    pyarrow()
    if to_dir and out not in (None, "", "-"):
        raise HtoolsError("--format parquet: give -o FILE.parquet or --to-dir DIR, not both")
    if not to_dir and (not isinstance(out, str) or not out or out == "-"):
        raise HtoolsError("--format parquet needs -o FILE.parquet (one file), a pattern "
                          "such as -o meta-@N.parquet or --to-dir DIR (one file per input "
                          "shard)")
    if not fields:
        raise HtoolsError("--format parquet needs at least one field (-f)")
    urls = shards.expand_all(inputs if isinstance(inputs, str) else list(inputs))
    single = False
    if to_dir:
        targets = dir_targets(urls, to_dir)
    else:
        outset = shards.OutputSet.parse(out)
        if outset.count is None:
            raise HtoolsError(f"{out!r} is open-ended: name one parquet file per input shard "
                              f"with @{len(urls)} (e.g. meta-@{len(urls)}.parquet)")
        single = list(outset.fixed) == [shards.absolute(out)]
        if not single and outset.count != len(urls):
            raise HtoolsError(f"{out!r} names {outset.count} parquet files but there are "
                              f"{len(urls)} input shards: one file per shard (@{len(urls)})")
        targets = list(outset.fixed)
    options = storage.resolve_options(opts.storage_options)
    kw = {"fields": tuple(fields), "options": options, "select": select}
    if single:
        tasks = [Task(parquet_shard, {"input": u, "out": None, **kw}, input=u) for u in urls]
    else:
        tasks = [Task(parquet_shard, {"input": u, "out": t, **kw}, input=u, output=t)
                 for u, t in zip(urls, targets)]
    preflight.check(urls, targets[:1], opts.storage_options, write=not opts.dry_run)
    if single:
        return _one_file(tasks, targets[0], list(fields), options, opts, allow_missing)
    if opts.dry_run:
        return engine.finish(engine.run("htextract", tasks, opts, check_outputs=True), opts)
    skip = engine.plan_outputs(targets, opts)  # refused (or skipped) before a cluster starts
    firsts: dict[int, dict] = {}
    todo = [i for i, t in enumerate(tasks) if t.output not in skip]
    with ExitStack() as stack:
        client = [opts.client]

        def connected() -> RunOptions:  # one client for both passes, made when needed
            if client[0] is None:
                client[0] = stack.enter_context(engine.cluster(opts))
            return opts.with_(client=client[0])

        summary = JobSummary("htextract", max_errors=opts.max_errors)
        if todo:
            summary = engine.run("htextract", [tasks[i] for i in todo], connected(),
                                 on_result=lambda j, r: firsts.__setitem__(todo[j], r),
                                 check_outputs=False)
            _check_fields(summary, fields, [r.get("extra", {}).get("seen", []) for r in firsts.values()],
                          allow_missing)
        for i, t in enumerate(tasks):
            if t.output in skip:
                firsts[i] = ShardResult(input=t.input, output=t.output, status="skipped").as_dict()
                summary.shards_total += 1
                summary.add(firsts[i])
        _unify(summary, tasks, firsts, list(fields), opts, connected)
    return engine.finish(summary.finish(), opts)


def _one_file(tasks: list[Task], target: str, fields: list[str], options: dict | None,
              opts: RunOptions, allow_missing: bool = False) -> JobSummary:
    """``-o meta.parquet``: the rows of every shard, gathered in shard order."""
    # refused before work starts when it exists (unless --overwrite)
    if engine.plan_outputs([target], opts) and not opts.dry_run:
        summary = JobSummary("htextract", shards_total=len(tasks), shards_skipped=len(tasks))
        summary.notes.append(f"{hide_credentials(target)} exists (--resume): skipped")
        return engine.finish(summary.finish(), opts)
    gathered, summary = gather(tasks, fields, opts, allow_missing)
    if not opts.dry_run:
        if summary.ok:
            summary.bytes_out = write(fields, gathered, target, options)[0]
        else:
            summary.notes.append(f"{hide_credentials(target)} not written: "
                                 f"{summary.shards_failed} shard(s) failed")
    return engine.finish(summary, opts)


def gather(tasks: list[Task], fields, opts: RunOptions,
           allow_missing: bool = False) -> tuple[list[list], JobSummary]:
    """Run ``parquet_shard`` tasks that return their rows; every row in shard order, and
    the job's summary (a field no sample had refused unless ``allow_missing``)."""
    rows: dict[int, list] = {}
    seen: list[list[str]] = []

    def on_result(i: int, r: dict) -> None:
        extra = r.pop("extra", {})
        rows[i] = extra.get("rows", [])
        seen.append(extra.get("seen", []))

    summary = engine.run("htextract", tasks, opts, on_result=on_result, ordered=True,
                         check_outputs=False)
    if not opts.dry_run:
        _check_fields(summary, fields, seen, allow_missing)
    return [row for i in sorted(rows) for row in rows[i]], summary


def _check_fields(summary: JobSummary, fields, seen: list[list[str]],
                  allow_missing: bool) -> None:
    """A field of ``-f`` that no sample read had: refused, or noted (``allow_missing``)."""
    if summary.samples_read:
        note = check_present(fields, {f for names in seen for f in names}, allow_missing)
        summary.notes += [note] if note else []


def _unify(summary: JobSummary, tasks: list[Task], firsts: dict[int, dict], fields: list[str],
           opts: RunOptions, connected: Callable[[], RunOptions]) -> None:
    """Write again, from its input, every file that types a column otherwise than the
    job does (the greatest kind of the field over every file); a rewrite that fails
    counts its shard as failed (its file, typed on its own, stays for a --resume)."""
    kinds = {i: r["extra"].get("kinds") for i, r in firsts.items() if r["status"] == "ok"}
    skipped = [i for i, r in firsts.items() if r["status"] == "skipped"]
    options = storage.resolve_options(opts.storage_options)
    with ThreadPoolExecutor(max_workers=16) as pool:  # footers only: small reads
        kinds.update(zip(skipped, pool.map(
            lambda i: file_kinds(tasks[i].output, fields, options), skipped)))
    job = merge([k for k in kinds.values() if k is not None], fields)
    redo = {i: d for i, d in ((i, differs(k, job)) for i, k in sorted(kinds.items())) if d}
    if not redo:
        return
    order = list(redo)
    again = [Task(tasks[i].fn, {**tasks[i].kwargs, "kinds": job}, input=tasks[i].input,
                  output=tasks[i].output) for i in order]
    results: dict[int, dict] = {}
    engine.run("htextract", again, connected().with_(resume=False, overwrite=False),
               on_result=lambda j, r: results.__setitem__(order[j], r), check_outputs=False)
    failed = 0
    for i, r in results.items():
        if r["status"] == "ok":
            summary.bytes_in += r["bytes_in"]
            summary.bytes_out += r["bytes_out"] - firsts[i]["bytes_out"]
        else:
            failed += 1
            _count_failed(summary, tasks[i], firsts[i], r)
    why = reasons({i: kinds[i] for i in redo}, job)
    why += [f"{failed} of the rewrites failed"] if failed else []
    summary.notes.append(f"{len(redo)} of {len(kinds)} parquet files rewritten so every "
                         f"file types each column alike: {', '.join(why)}")


def _count_failed(summary: JobSummary, task: Task, first: dict, rewrite: dict) -> None:
    """Count a shard done (or skipped) in the first pass as failed: its rewrite failed."""
    if first["status"] == "skipped":
        summary.shards_skipped -= 1
    else:
        summary.shards_done -= 1
        summary.samples_failed += first["samples_mapped"]
        summary.samples_mapped -= first["samples_mapped"]
        summary.samples_written -= first["samples_written"]
        summary.bytes_out -= first["bytes_out"]
    r = ShardResult(input=task.input, output=task.output)
    r.fail(f"rewriting its parquet file with the job's types: {rewrite['error']}",
           rewrite.get("traceback", ""))
    summary.add(r.as_dict())  # the shard failed, with no counts of its own
