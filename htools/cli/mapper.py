"""htmapper: run script.py's process_sample over every sample of every shard."""

from __future__ import annotations

import click

from ..mapper import map_shards
from .common import command, finish, mtime_option, py_files_option


@command
@click.option("-p", "--script", "script_path", required=True, metavar="SCRIPT.py",
              help="Defines process_sample(sample) -> sample | None | list; optional init().")
@click.argument("inputs")
@click.argument("outputs")
@mtime_option
@py_files_option
def main(inputs: str, outputs: str, script_path: str, mtime: float, py_files, opts) -> None:
    """Map every sample of INPUTS (a shard set) into OUTPUTS (one output per input).

    \b
    Example:
      htmapper -p script.py gs://b/Volume_@1000.tgz http://host/processed-@1000.tgz
    """
    finish(map_shards(inputs, outputs, script_path, mtime=mtime, py_files=py_files,
                      **opts.as_kwargs()), opts)
