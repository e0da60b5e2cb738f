"""htupload: a local directory, a list file of paths, or tar shards -> sharded tars at a URL."""

from __future__ import annotations

import atexit
import functools
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import click

from htools.cli.common import (
    command,
    finish,
    maxcount_option,
    mtime_option,
    parse_bytes,
    seed_option,
    select_options,
)
from htools.upload import upload


@command
@click.argument("source")
@click.argument("outputs")
@maxcount_option()
@click.option("--maxsize", callback=functools.partial(parse_bytes, minimum=1024), default=None,
              metavar="BYTES", help="At most BYTES per shard (4096, 64M, 1G; with a numbered "
                                    "pattern).")
@click.option("--shuffle", is_flag=True, help="Shuffle the samples of a directory or list.")
@seed_option
@mtime_option
@select_options
def main(source, outputs, maxcount, maxsize, shuffle, seed, mtime, select, opts) -> None:
    """Shard SOURCE (a directory, a list file of paths, or tar shards) into OUTPUTS.

    \b
    Examples:
      htupload photos/ s3://bucket/photos-@16.tar
      htupload photos/ http://host/photos-%06d.tar --maxcount 10000
      htupload 'old-{000..099}.tgz' gs://b/new-@20.tar
      htupload 'old-{000..099}.tgz' gs://b/new-@20.tar --drop blocked-keys.txt
    """
    with exit_at_once():
        finish(upload(source, outputs, maxcount=maxcount, maxsize=maxsize, shuffle=shuffle,
                      seed=seed, mtime=mtime, **select, **opts.as_kwargs()), opts)


@contextmanager
def exit_at_once() -> Iterator[None]:
    """The command's exit, once the job is over and reported, without the interpreter's
    clean-up: freeing the job's objects one by one (a folder's 100,000 samples: about 0.1
    s on 2 cores, a tenth of a small job).  The exit handlers run and the output is
    flushed as in a normal exit; only in the ``htupload`` command (not a Python caller of
    :func:`main`, nor a profiler running the command: it writes its figures after the
    command returns), and when no thread that a normal exit would wait for still runs."""
    try:
        yield
    except SystemExit as e:
        me = threading.current_thread()
        if not isinstance(e.code, (int, type(None))) or me is not threading.main_thread() \
                or not _the_command() \
                or any(t.is_alive() and not t.daemon and t is not me
                       for t in threading.enumerate()):
            raise
        atexit._run_exitfuncs()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # a reader gone (| head): Python's own exit says 120 then
            os._exit(120)
        os._exit(e.code or 0)


def _the_command() -> bool:
    """Whether this process is the ``htupload`` console script itself."""
    main = getattr(sys.modules.get("__main__"), "__file__", None) or ""
    return os.path.basename(main).startswith("htupload")
