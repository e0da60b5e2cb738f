"""Flags shared by htshuffle and htsort."""

from __future__ import annotations

from collections.abc import Callable

import click


def parse_bytes(ctx, param, value: str | None) -> int | None:
    if value is None:
        return None
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    v = value.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if v and v[-1] in units:
            return int(float(v[:-1]) * units[v[-1]])
        return int(v)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size like 512M or 2G") from None


def exchange_options(fn: Callable) -> Callable:
    for d in reversed([
        click.option("--maxcount", type=click.IntRange(1), default=None,
                     help="At most about N samples per output (with out-%06d.tar)."),
        click.option("--memory", callback=parse_bytes, default=None, metavar="BYTES",
                     help="Memory budget per task (512M, 2G); default: a quarter of a "
                          "worker's memory limit. Larger data spills to scratch."),
        click.option("--scratch", metavar="URL", default=None,
                     help="Where intermediate runs go (default: a temp dir for the embedded "
                          "cluster, else _htools_tmp/ beside the outputs)."),
        click.option("--mtime", type=float, default=0, show_default=True,
                     help="mtime of written members."),
    ]):
        fn = d(fn)
    return fn
