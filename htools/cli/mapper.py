"""htmapper: run script.py's process_sample (or process_batch) over every sample of every
shard."""

from __future__ import annotations

import click

from htools.cli.common import command, finish, mtime_option, py_files_option, select_options
from htools.mapper import map_shards


@command
@click.option("-p", "--script", "script_path", default=None, metavar="SCRIPT.py",
              help="Defines process_sample(sample) -> sample | None | list, or "
                   "process_batch(samples) -> one such entry per sample (optional "
                   "prepare_sample(sample)); optional init().")
@click.option("-s", "--shell", "shell", default=None, metavar="COMMAND",
              help="Instead of -p: run COMMAND (sh -c) once per sample in a folder of "
                   "sample.FIELD files, with $KEY set; the sample.* files left are the output.")
@click.argument("inputs")
@click.argument("outputs")
@click.option("--batch-size", "batch_size", type=int, default=None, metavar="N",
              help="Samples per process_batch call (default 32; a shard's last batch is "
                   "shorter).")
@click.option("--prepare-threads", "prepare_threads", type=int, default=None, metavar="N",
              help="Threads per task running prepare_sample ahead of the batches (default 1).")
@mtime_option
@py_files_option
@select_options
def main(inputs: str, outputs: str, script_path: str | None, shell: str | None,
         batch_size: int | None, prepare_threads: int | None, mtime: float,
         py_files, select: dict, opts) -> None:
    """Map every sample of INPUTS (a shard set) into OUTPUTS (one output per input).

    \b
    Examples:
      htmapper -p script.py gs://b/Volume_@1000.tgz http://host/processed-@1000.tgz
      htmapper -s 'convert sample.jpg sample.png && rm sample.jpg' in-@8.tar out-@8.tar
      htmapper -p examples/embed.py --batch-size 64 --prepare-threads 2 in-@8.tar emb-@8.tar
    """
    if script_path is not None and shell is not None:
        raise click.UsageError("-s/--shell and -p/--script exclude each other: give one")
    if script_path is None and shell is None:
        raise click.UsageError("give -p SCRIPT.py (a Python script) or -s 'COMMAND' "
                               "(a shell command run once per sample)")
    if shell is not None and py_files:
        raise click.UsageError("--py-files goes with -p SCRIPT.py, not with -s/--shell")
    finish(map_shards(inputs, outputs, script_path, shell=shell, mtime=mtime,
                      batch_size=batch_size, prepare_threads=prepare_threads,
                      py_files=py_files, **select, **opts.as_kwargs()), opts)
