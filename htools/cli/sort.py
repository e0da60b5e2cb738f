"""htsort: global sort by a key, optional reduce or --merge, N inputs into M outputs."""

from __future__ import annotations

import click

from htools.cli.common import command, exchange_options, finish, py_files_option, select_options
from htools.sort import sort


@command
@click.argument("patterns", nargs=-1, required=True)
@click.option("--key", default=None, metavar="FIELD",
              help="Sort by this field's text (default __key__).")
@click.option("--key-type", type=click.Choice(["str", "int", "float"]), default="str",
              show_default=True,
              help="Compare --key values as text, integers or numbers (10 after 9).")
@click.option("--reverse", is_flag=True, help="Largest key first.")
@click.option("--merge", is_flag=True,
              help="Join samples with the same __key__ into one (fields united).")
@click.option("-p", "--script", "script_path", default=None, metavar="SCRIPT.py",
              help="May define process_sample, sort_key(sample), reduce_samples(key, samples).")
@py_files_option
@exchange_options(
    maxcount_help="N samples per output, the last one fewer; about N where the sort cuts "
                  "between groups of equal keys (a reduce, --merge, --dedup by its key)",
    dedup_help="Keep only the first sample (in input order) of each distinct FIELD value "
               "(sha256 of its bytes); by another key than FIELD one more pass over "
               "scratch.")
@select_options
def main(patterns, key, key_type, reverse, merge, script_path, py_files, maxcount, memory,
         scratch, mtime, fan_in, dedup, select, opts) -> None:
    """Sort every sample of INPUTS... into OUTPUTS (the last argument).

    \b
    Examples:
      htsort 'data-@100.tar' 'sorted-@100.tar' --key score --key-type float --reverse
      htsort images-@100.tar labels-@10.tar joined-@100.tar --merge
    """
    if len(patterns) < 2:
        raise click.UsageError("give INPUTS... and OUTPUTS")
    finish(sort(list(patterns[:-1]), patterns[-1], key=key, key_type=key_type, reverse=reverse,
                merge=merge, script=script_path, maxcount=maxcount, memory=memory,
                scratch=scratch, mtime=mtime, fan_in=fan_in, py_files=py_files, dedup=dedup,
                **select, **opts.as_kwargs()),
           opts)
