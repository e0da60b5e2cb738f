"""What every command shares: the run flags (declared once, turned into
:class:`RunOptions` in one place), option declarations used by several commands,
and the one way a command reports its summary and exits."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable

import click

from htools import __version__
from htools.clusters import forkserver
from htools.errors import HtoolsError, hide_credentials
from htools.options import RunOptions
from htools.runtime import interrupts
from htools.summary import JobSummary, failure_kind, sample_error_kind

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _storage_options(ctx, param, value: str | None) -> dict | None:
    if not value:
        return None
    try:
        if value.startswith("@"):
            with open(value[1:], encoding="utf-8") as f:
                value = f.read()
        opts = json.loads(value)
    except (OSError, ValueError) as e:
        raise click.BadParameter(f"not JSON (or @file of JSON): {e}") from None
    if not isinstance(opts, dict):
        raise click.BadParameter('expected a JSON object such as {"s3": {"endpoint_url": "..."}}')
    return opts


def _resources(ctx, param, value) -> dict | None:
    """``--resources GPU=1`` (repeatable; ``GPU=1,MEM=2e9`` too) as a dict."""
    if not value:
        return None
    from htools.options import parse_resources

    try:
        return parse_resources(value)
    except HtoolsError as e:
        raise click.BadParameter(str(e)) from None


def parse_bytes(ctx, param, value: str | None, minimum: int = 0) -> int | None:
    """A size such as ``4096``, ``512M`` or ``2G`` (powers of 1024) in bytes."""
    if value is None:
        return None
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    v = value.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        n = int(float(v[:-1]) * units[v[-1]]) if v and v[-1] in units else int(v)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size like 512M or 2G") from None
    if n < minimum:
        raise click.BadParameter(f"{value!r} is less than the least size, {minimum} bytes")
    return n


# (RunOptions field, click option) -- the one declaration of each shared flag
RUN_FLAGS: list[tuple[str, Callable]] = [
    ("cluster", click.option(
        "-c", "--cluster", "cluster", metavar="ADDRESS", envvar="HTOOLS_SCHEDULER",
        help="Dask scheduler (host:8786, tcp://host:8786), k8s://NAME?workers=N or "
             "slurm://PARTITION?jobs=N&cores=C&memory=M; default: an embedded local "
             "cluster. Env: HTOOLS_SCHEDULER.")),
    ("workers", click.option(
        "--workers", "workers", type=click.IntRange(1), default=None,
        help="Worker processes of the embedded cluster (default: one per core).")),
    ("resources", click.option(
        "--resources", "resources", multiple=True, callback=_resources, metavar="NAME=AMOUNT",
        help="Dask worker resources every task asks for (GPU=1; repeatable): tasks run "
             "only on workers started with `dask worker --resources GPU=1`.")),
    ("retries", click.option(
        "--retries", "retries", type=click.IntRange(0), default=2, show_default=True,
        help="Times a task is retried when its worker dies.")),
    ("resume", click.option("--resume", "resume", is_flag=True,
                            help="Skip outputs that already exist, if the index beside "
                                 "them records this same job (script, options, inputs).")),
    ("resume_any", click.option(
        "--resume-any", "resume_any", is_flag=True,
        help="Like --resume, but keep existing outputs even when another job made them "
             "(a different script, options or inputs).")),
    ("overwrite", click.option("--overwrite", "overwrite", is_flag=True,
                               help="Replace outputs that already exist.")),
    ("dry_run", click.option("--dry-run", "dry_run", is_flag=True,
                             help="Print the plan; touch nothing.")),
    ("max_errors", click.option(
        "--max-errors", "max_errors", type=click.IntRange(0), default=0, show_default=True,
        help="Let each shard go on past up to N failing samples (counted and listed); "
             "a shard with more fails and writes nothing.")),
    ("summary", click.option("--summary", "summary", metavar="FILE", default=None,
                             help="Also write the job summary as JSON to FILE.")),
    ("storage_options", click.option(
        "--storage-options", "storage_options", callback=_storage_options, metavar="JSON",
        envvar="HTOOLS_STORAGE_OPTIONS",
        help='Per-protocol options, e.g. {"s3": {"endpoint_url": "..."}} '
             "(or @file.json). Env: HTOOLS_STORAGE_OPTIONS.")),
    ("quiet", click.option("-q", "--quiet", "quiet", is_flag=True,
                           help="No progress bar or chatter.")),
    ("index", click.option("--no-index", "index", flag_value=False, default=True,
                           help="Do not write STEM.index.json (shard sizes, sample counts, "
                                "sha256) beside the outputs.")),
]

# Options several commands take, declared once.
mtime_option = click.option("--mtime", type=float, default=0, show_default=True,
                            help="mtime of written members (fixed, so outputs are reproducible).")
seed_option = click.option("--seed", type=int, default=0, show_default=True,
                           help="Seed of the random choices (same seed, same outputs).")
py_files_option = click.option(
    "--py-files", "py_files", multiple=True, metavar="PATH",
    help="A .py file, a package folder or a folder of modules shipped to the workers with "
         "the script, besides the modules in the script's own folder (repeatable).")


SELECT_FLAGS = ("keep", "drop", "select_by", "select_column")


def select_options(fn: Callable) -> Callable:
    """``--keep FILE`` / ``--drop FILE``, ``--select-by``, ``--select-column``, passed on
    as one ``select`` dict of the library's keyword arguments."""
    @functools.wraps(fn)
    def wrapper(*args, **kw):
        return fn(*args, select={k: kw.pop(k) for k in SELECT_FLAGS}, **kw)

    for d in reversed([
        click.option("--keep", metavar="FILE", default=None,
                     help="Keep only samples whose value is listed in FILE (text, one value "
                          "a line, or .parquet; any URL)."),
        click.option("--drop", metavar="FILE", default=None,
                     help="Drop samples whose value is listed in FILE (a blocklist)."),
        click.option("--select-by", "select_by", metavar="FIELD[:MEMBER]", default=None,
                     help="What --keep/--drop match: a field's bytes, or a top-level member "
                          "of a JSON field (json:uid); default __key__."),
        click.option("--select-column", "select_column", metavar="NAME", default=None,
                     help="The column of a .parquet list (default: the member or field "
                          "matched)."),
    ]):
        wrapper = d(wrapper)
    return wrapper


def maxcount_option(text: str = "At most N samples per output") -> Callable:
    return click.option("--maxcount", type=click.IntRange(1), default=None,
                        help=f"{text} (with a numbered pattern like out-%06d.tar).")


def exchange_options(maxcount_help: str, dedup_help: str) -> Callable[[Callable], Callable]:
    """Flags of htshuffle and htsort; each says what ``--maxcount`` and ``--dedup`` do in
    its own command."""
    return functools.partial(_exchange_options, maxcount_help, dedup_help)


def _exchange_options(text: str, dedup_help: str, fn: Callable) -> Callable:
    for d in reversed([
        maxcount_option(text),
        click.option("--memory", callback=parse_bytes, default=None, metavar="BYTES",
                     help="Memory budget per task (512M, 2G); default: a quarter of a "
                          "worker's memory limit. Larger data spills to scratch."),
        click.option("--scratch", metavar="URL", default=None,
                     help="Where intermediate runs go (default: a temp dir for the embedded "
                          "cluster, else _htools_tmp/ beside the outputs)."),
        mtime_option,
        click.option("--fan-in", type=click.IntRange(2), default=None, metavar="F",
                     help="Runs one task reads at most; more runs add merge levels "
                          "(default: from --memory, 4..256)."),
        click.option("--dedup", metavar="FIELD", default=None, help=dedup_help),
    ]):
        fn = d(fn)
    return fn


class _Command(click.Command):
    """A click command whose own errors (usage errors, bad option values, extra
    arguments) never print a URL's ``user:password@``: click echoes the offending
    argument, which may be a URL with credentials."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.ClickException as e:
            raise _redacted(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.ClickException as e:
            raise _redacted(e) from None


def _redacted(e: click.ClickException) -> click.ClickException:
    """``e`` with credentials removed from its message, however click formats it."""
    e.message = hide_credentials(e.message)
    shown = e.format_message
    e.format_message = lambda: hide_credentials(shown())  # type: ignore[method-assign]
    return e


def command(fn: Callable | None = None, *, without: tuple[str, ...] = ()) -> Callable:
    """The outermost decorator of every htools command: adds the shared run flags
    (after the command's own options; ``without`` names those that do nothing in this
    command, left at their defaults) and ``--version``, hands the flags to ``fn`` as
    ``opts`` (a RunOptions), and turns an :class:`HtoolsError` into one clear line, exit
    1, and a Ctrl-C into one line, exit 130 (128 + SIGINT, as shells report it)."""
    if fn is None:
        return functools.partial(command, without=without)
    flags = [(name, option) for name, option in RUN_FLAGS if name not in without]

    @functools.wraps(fn)
    def wrapper(*args, **kw):
        try:
            opts = RunOptions(**{name: kw.pop(name) for name, _ in flags})
            forkserver.for_command(fn.__module__)  # what an embedded cluster's workers import
            with interrupts.as_command():  # once the job is done, a Ctrl-C cannot undo it
                return fn(*args, opts=opts, **kw)
        except HtoolsError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:  # Ctrl-C: the job stopped and cleaned up; say so
            print("htools: interrupted: running tasks cancelled, partial outputs and "
                  "scratch removed, complete outputs kept (--resume goes on from them)",
                  file=sys.stderr, flush=True)
            sys.exit(130)

    def shared() -> None: ...
    for _name, option in reversed(flags):
        shared = option(shared)
    shared = click.version_option(__version__, "--version", package_name="htools",
                                  message="%(prog)s (htools) %(version)s")(shared)
    # click lists decorator params in reverse order of application: putting the shared
    # ones first in the list shows them after the command's own options in --help
    wrapper.__click_params__ = shared.__click_params__ + getattr(fn, "__click_params__", [])
    return click.command(cls=_Command, context_settings=CONTEXT)(wrapper)


PLAN_HEAD, PLAN_TAIL = 12, 6  # a longer dry-run plan shows its first and last lines


def plan_shown(plan: list[str]) -> list[str]:
    """A dry run's plan as printed: whole up to ~20 lines, else its head and tail with
    how many lines were left out between (``--summary FILE`` has every line)."""
    if len(plan) <= PLAN_HEAD + PLAN_TAIL + 2:
        return list(plan)
    left = len(plan) - PLAN_HEAD - PLAN_TAIL
    return [*plan[:PLAN_HEAD], f"... {left} more lines ({len(plan)} in all; every line in "
            "--summary FILE)", *plan[-PLAN_TAIL:]]


def report(summary: JobSummary, opts: RunOptions, err=None) -> None:
    """The plan (dry run), or the failures and the one-line summary, on stderr.  Shards
    that failed with the same error are listed once, with their count."""
    err = err or sys.stderr
    if opts.dry_run:
        for line in plan_shown(summary.plan):
            print(line)
        return
    _failed_shards(summary, err)
    _failed_samples(summary, err)
    print(summary.line(), file=err, flush=True)


def _failed_shards(summary: JobSummary, err) -> None:
    """Each kind of shard failure once, with how many shards had it; the traceback of the
    first only (every one is in ``--summary FILE``)."""
    shown, kinds, traced = 0, set(), False
    for f in summary.failures:
        kind = failure_kind(f)
        if kind in kinds:
            continue
        kinds.add(kind)
        count = summary.failure_kinds.get(kind, 1)
        src = f["input"] if isinstance(f["input"], str) else " + ".join(f["input"])
        where = f"{hide_credentials(src)}" + (f" -> {hide_credentials(f['output'])}"
                                              if f["output"] else "")
        if count > 1:
            where = f"{count} shards with the same error, the first {where}"
        first, _, rest = (f["error"] or "").partition("\n")
        print(f"htools: FAILED {where}: {first}", file=err)
        if rest and not traced:
            print(rest, file=err)
            traced = True
        shown += count
        if len(kinds) == 20:
            break
    if summary.shards_failed > shown:
        listed = len(summary.failures)
        where = "the first 100 in --summary FILE" if listed < summary.shards_failed \
            else "every one in --summary FILE"
        print(f"htools: ... and {summary.shards_failed - shown} more failed shard"
              f"{'s' if summary.shards_failed - shown > 1 else ''} ({where})", file=err)


def _failed_samples(summary: JobSummary, err) -> None:
    """Each kind of failed sample once (its first key), unless a failed shard above
    already said it, with how many of the listed samples had it."""
    said = {failure_kind(f).split(": ", 1)[-1] for f in summary.failures}
    groups: dict[str, list[dict]] = {}
    for e in summary.errors:
        groups.setdefault(sample_error_kind(e), []).append(e)
    for kind, group in list(groups.items())[:10]:
        if any(kind in s or s.endswith(kind) for s in said):
            continue
        e = group[0]
        more = f" (and {len(group) - 1} more samples)" if len(group) > 1 else ""
        print(f"htools: sample error {hide_credentials(e['url'])} key {e['key']!r}: "
              f"{e['error'].splitlines()[0] if e['error'] else ''}{more}", file=err)


def finish(summary: JobSummary, opts: RunOptions) -> None:
    """Report the summary and exit: 0 only if every shard succeeded (or a dry run).
    The job is over: a Ctrl-C from here on changes nothing (without this, one just
    after the summary line printed ``ok`` and exited 130)."""
    interrupts.ignored()
    report(summary, opts)
    sys.exit(0 if summary.ok or opts.dry_run else 1)
