"""htshuffle: global random shuffle and reshard of N input shards into M outputs."""

from __future__ import annotations

import click

from htools.cli.common import (
    command,
    exchange_options,
    finish,
    py_files_option,
    seed_option,
    select_options,
)
from htools.shuffle import shuffle


@command
@click.argument("inputs")
@click.argument("outputs")
@seed_option
@click.option("-p", "--script", "script_path", default=None, metavar="SCRIPT.py",
              help="Optional process_sample(sample) applied before shuffling.")
@py_files_option
@exchange_options(
    maxcount_help="N samples per output, the last one fewer (after --dedup drops duplicates)",
    dedup_help="Keep only the first sample (in input order) of each distinct FIELD value "
               "(sha256 of its bytes); duplicates land side by side, at no extra pass.")
@select_options
def main(inputs, outputs, seed, script_path, py_files, maxcount, memory, scratch, mtime,
         fan_in, dedup, select, opts) -> None:
    """Shuffle every sample of INPUTS into OUTPUTS (out-@M.tar, or out-%06d.tar with --maxcount).

    \b
    Example:
      htshuffle 's3://b/train-{0000..0999}.tar' 's3://b/shuffled-@1000.tar' --seed 7
    """
    finish(shuffle(inputs, outputs, seed=seed, maxcount=maxcount, script=script_path,
                   memory=memory, scratch=scratch, mtime=mtime, fan_in=fan_in, py_files=py_files,
                   dedup=dedup, **select, **opts.as_kwargs()), opts)
