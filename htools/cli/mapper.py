"""htmapper: run script.py's process_sample over every sample of every shard."""

from __future__ import annotations

import click

from .. import engine, mapper
from .common import finish, make_run_options, run_options, user_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-p", "--script", "script_path", required=True, metavar="SCRIPT.py",
              help="Defines process_sample(sample) -> sample | None | list; optional init().")
@click.argument("inputs")
@click.argument("outputs")
@click.option("--mtime", type=float, default=0, show_default=True,
              help="mtime of written members (fixed, so outputs are reproducible).")
@run_options
@user_errors
def main(inputs: str, outputs: str, script_path: str, mtime: float, **kw) -> None:
    """Map every sample of INPUTS (a shard set) into OUTPUTS (one output per input).

    \b
    Example:
      htmapper -p script.py gs://b/Volume_@1000.tgz http://host/processed-@1000.tgz
    """
    opts = make_run_options(kw)
    script = mapper.load_script(script_path)
    tasks = mapper.plan(inputs, outputs, script, opts, mtime=mtime)
    finish(engine.run("htmapper", tasks, opts), opts)
