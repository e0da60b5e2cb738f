"""htsort: global sort by a key, optional reduce or --merge, N inputs into M outputs."""

from __future__ import annotations

import click

from ..exchange_job import run_exchange
from ..sort import load, sort_spec
from .common import finish, make_run_options, run_options, user_errors
from .exchange_options import exchange_options


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("patterns", nargs=-1, required=True)
@click.option("--key", default=None, metavar="FIELD",
              help="Sort by this field's text (default __key__).")
@click.option("--key-type", type=click.Choice(["str", "int", "float"]), default="str",
              show_default=True)
@click.option("--reverse", is_flag=True, help="Largest key first.")
@click.option("--merge", is_flag=True,
              help="Join samples with the same __key__ into one (fields united).")
@click.option("-p", "--script", "script_path", default=None, metavar="SCRIPT.py",
              help="May define process_sample, sort_key(sample), reduce_samples(key, samples).")
@exchange_options
@run_options
@user_errors
def main(patterns, key, key_type, reverse, merge, script_path, maxcount, memory, scratch,
         mtime, **kw) -> None:
    """Sort every sample of INPUTS... into OUTPUTS (the last argument).

    \b
    Examples:
      htsort 'data-@100.tar' 'sorted-@100.tar' --key score --key-type float --reverse
      htsort images-@100.tar labels-@10.tar joined-@100.tar --merge
    """
    if len(patterns) < 2:
        raise click.UsageError("give INPUTS... and OUTPUTS")
    opts = make_run_options(kw)
    script = load(script_path) if script_path else None
    spec = sort_spec(patterns[:-1], patterns[-1], key=key, key_type=key_type, reverse=reverse,
                     merge=merge, script=script, maxcount=maxcount, memory=memory,
                     scratch=scratch, mtime=mtime)
    finish(run_exchange(spec, opts), opts)
