"""Options every command shares, and the one way a command reports and exits."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable

import click

from ..engine import RunOptions, report
from ..errors import HtoolsError
from ..summary import JobSummary


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


def run_options(fn: Callable) -> Callable:
    """The flags every htools command takes."""
    decorators = [
        click.option("-c", "--cluster", metavar="ADDRESS", envvar="HTOOLS_SCHEDULER",
                     help="Dask scheduler (host:8786, tcp://host:8786) or k8s://NAME?workers=N; "
                          "default: an embedded local cluster. Env: HTOOLS_SCHEDULER."),
        click.option("--workers", type=click.IntRange(1), default=None,
                     help="Worker processes of the embedded cluster (default: one per core)."),
        click.option("--retries", type=click.IntRange(0), default=2, show_default=True,
                     help="Times a task is retried when its worker dies."),
        click.option("--resume", is_flag=True, help="Skip outputs that already exist."),
        click.option("--overwrite", is_flag=True, help="Replace outputs that already exist."),
        click.option("--dry-run", is_flag=True, help="Print the plan; touch nothing."),
        click.option("--max-errors", type=click.IntRange(0), default=0, show_default=True,
                     help="Let each shard go on past up to N failing samples (counted and listed); "
                          "a shard with more fails and writes nothing."),
        click.option("--summary", "summary_file", metavar="FILE", default=None,
                     help="Also write the job summary as JSON to FILE."),
        click.option("--storage-options", callback=_storage_options, metavar="JSON",
                     envvar="HTOOLS_STORAGE_OPTIONS",
                     help='Per-protocol fsspec options, e.g. {"s3": {"endpoint_url": "..."}} '
                          "(or @file.json). Env: HTOOLS_STORAGE_OPTIONS."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar or chatter."),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


def make_run_options(kw: dict) -> RunOptions:
    """Pop the shared flags from a command's keyword arguments."""
    if kw.get("resume") and kw.get("overwrite"):
        raise click.UsageError("--resume and --overwrite exclude each other")
    return RunOptions(
        cluster=kw.pop("cluster"), workers=kw.pop("workers"), retries=kw.pop("retries"),
        resume=kw.pop("resume"), overwrite=kw.pop("overwrite"), dry_run=kw.pop("dry_run"),
        max_errors=kw.pop("max_errors"), summary=kw.pop("summary_file"),
        storage_options=kw.pop("storage_options"), quiet=kw.pop("quiet"))


def finish(summary: JobSummary, opts: RunOptions) -> None:
    """Report the summary and exit: 0 only if every shard succeeded."""
    report(summary, opts)
    sys.exit(0 if summary.ok or opts.dry_run else 1)


def user_errors(fn: Callable) -> Callable:
    """Turn htools' user errors into one clear line and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kw):
        try:
            return fn(*args, **kw)
        except HtoolsError as e:
            raise click.ClickException(str(e)) from None

    return wrapper
