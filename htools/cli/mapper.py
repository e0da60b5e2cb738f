"""htmapper: run script.py's process_sample over every sample of every shard."""

from __future__ import annotations

import click

from htools.cli.common import command, finish, mtime_option, py_files_option, select_options
from htools.mapper import map_shards


@command
@click.option("-p", "--script", "script_path", default=None, metavar="SCRIPT.py",
              help="Defines process_sample(sample) -> sample | None | list; optional init().")
@click.option("-s", "--shell", "shell", default=None, metavar="COMMAND",
              help="Instead of -p: run COMMAND (sh -c) once per sample in a folder of "
                   "sample.FIELD files, with $KEY set; the sample.* files left are the output.")
@click.argument("inputs")
@click.argument("outputs")
@mtime_option
@py_files_option
@select_options
def main(inputs: str, outputs: str, script_path: str | None, shell: str | None, mtime: float,
         py_files, select: dict, opts) -> None:
    """Map every sample of INPUTS (a shard set) into OUTPUTS (one output per input).

    \b
    Examples:
      htmapper -p script.py gs://b/Volume_@1000.tgz http://host/processed-@1000.tgz
      htmapper -s 'convert sample.jpg sample.png && rm sample.jpg' in-@8.tar out-@8.tar
    """
    if script_path is not None and shell is not None:
        raise click.UsageError("-s/--shell and -p/--script exclude each other: give one")
    if script_path is None and shell is None:
        raise click.UsageError("give -p SCRIPT.py (a Python script) or -s 'COMMAND' "
                               "(a shell command run once per sample)")
    if shell is not None and py_files:
        raise click.UsageError("--py-files goes with -p SCRIPT.py, not with -s/--shell")
    finish(map_shards(inputs, outputs, script_path, shell=shell, mtime=mtime,
                      py_files=py_files, **select, **opts.as_kwargs()), opts)
