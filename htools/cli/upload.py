"""htupload: a local directory, a list of files, or tar shards -> sharded tars at a URL."""

from __future__ import annotations

import click

from ..upload import run
from .common import finish, make_run_options, run_options, user_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source")
@click.argument("outputs")
@click.option("--maxcount", type=click.IntRange(1), default=None,
              help="At most N samples per shard (with a numbered pattern like out-%06d.tar).")
@click.option("--maxsize", type=click.IntRange(1024), default=None, metavar="BYTES",
              help="At most BYTES per shard (with a numbered pattern).")
@click.option("--shuffle", is_flag=True, help="Shuffle the samples of a directory or list.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mtime", type=float, default=0, show_default=True,
              help="mtime of written members (fixed, so outputs are reproducible).")
@run_options
@user_errors
def main(source, outputs, maxcount, maxsize, shuffle, seed, mtime, **kw) -> None:
    """Shard SOURCE (a directory, a list file of paths, or tar shards) into OUTPUTS.

    \b
    Examples:
      htupload photos/ s3://bucket/photos-@16.tar
      htupload photos/ http://host/photos-%06d.tar --maxcount 10000
      htupload 'old-{000..099}.tgz' gs://b/new-@20.tar
    """
    opts = make_run_options(kw)
    finish(run(source, outputs, opts, maxcount=maxcount, maxsize=maxsize, shuffle=shuffle,
               seed=seed, mtime=mtime), opts)
