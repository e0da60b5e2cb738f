"""htupload: a local directory, a list of files, or tar shards -> sharded tars at a URL."""

from __future__ import annotations

import functools

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
    finish(upload(source, outputs, maxcount=maxcount, maxsize=maxsize, shuffle=shuffle,
                  seed=seed, mtime=mtime, **select, **opts.as_kwargs()), opts)
