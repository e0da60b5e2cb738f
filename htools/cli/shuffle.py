"""htshuffle: global random shuffle and reshard of N input shards into M outputs."""

from __future__ import annotations

import click

from ..exchange_job import run_exchange
from ..mapper import load_script
from ..shuffle import shuffle_spec
from .common import finish, make_run_options, run_options, user_errors
from .exchange_options import exchange_options


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs")
@click.argument("outputs")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-p", "--script", "script_path", default=None, metavar="SCRIPT.py",
              help="Optional process_sample(sample) applied before shuffling.")
@exchange_options
@run_options
@user_errors
def main(inputs, outputs, seed, script_path, maxcount, memory, scratch, mtime, **kw) -> None:
    """Shuffle every sample of INPUTS into OUTPUTS (out-@M.tar, or out-%06d.tar with --maxcount).

    \b
    Example:
      htshuffle 's3://b/train-{0000..0999}.tar' 's3://b/shuffled-@1000.tar' --seed 7
    """
    opts = make_run_options(kw)
    script = load_script(script_path) if script_path else None
    spec = shuffle_spec(inputs, outputs, seed=seed, maxcount=maxcount, script=script,
                        memory=memory, scratch=scratch, mtime=mtime)
    finish(run_exchange(spec, opts), opts)
