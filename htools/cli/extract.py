"""htextract: fields, field-name sets, or value counts of every sample."""

from __future__ import annotations

import os
import sys

import click

from htools.cli.common import command, finish, report, select_options
from htools.extract import extract
from htools.extract_index import index_shards, verify


@command(without=("index",))  # htextract writes no shards: no shard index beside them
@click.argument("inputs")
@click.option("-f", "--fields", default="__key__", show_default=True,
              help="Comma-separated fields to extract (__key__, __url__, cls, txt ...).")
@click.option("-K", "--field-names", is_flag=True, help="List each sample's set of field names.")
@click.option("--count", type=click.IntRange(1), default=None, metavar="N",
              help="Print the N most common values (count<TAB>value; <missing> for a "
                   "sample without the field) instead of rows.")
@click.option("--format", "fmt", type=click.Choice(["tsv", "jsonl", "parquet"]), default=None,
              help="Default: the one -o's suffix names (.parquet, .jsonl/.json, .tsv/.txt), "
                   "else tsv. parquet: a typed table at -o FILE.parquet, or one per shard "
                   "with -o meta-@N.parquet or --to-dir DIR, every file typing each column "
                   "alike (needs pyarrow: pip install 'htools-wds[parquet]').")
@click.option("--binary", type=click.Choice(["length", "base64"]), default="length",
              show_default=True,
              help="How non-text fields are shown: <binary: N bytes>, or base64.")
@click.option("--to-dir", metavar="DIR", default=None,
              help="Write the selected fields as files DIR/KEY.FIELD instead of rows; "
                   "with --format parquet one DIR/NAME.parquet per shard NAME.tar.")
@click.option("-o", "--output", default="-", metavar="FILE",
              help="Where rows go (default stdout): a file or URL, written whole or not "
                   "at all; with --format parquet a path, URL or pattern.")
@click.option("--allow-missing", is_flag=True,
              help="Accept a field of -f that no sample has (an empty column) instead of "
                   "failing.")
@click.option("--index", "index_to", metavar="OUT.json", default=None,
              help="Instead of rows: write the shard index of INPUTS (wids dataset "
                   "description: samples, size, sha256 and fields of every shard) to OUT.json.")
@click.option("--verify", "verify_index", is_flag=True,
              help="INPUTS is a STEM.index.json: check that every shard it lists exists "
                   "with its size and sha256 and still parses to its sample count; one "
                   "line per mismatch, exit 1 on any.")
@select_options
def main(inputs, fields, field_names, count, fmt, binary, to_dir, output, allow_missing,
         index_to, verify_index, select, opts) -> None:
    """Extract fields of every sample of INPUTS (a shard set), in shard order.

    \b
    Examples:
      htextract 'data-{000..099}.tar' -f __key__,cls
      htextract 'data-@100.tar' -f cls --count 20
      htextract 'data-@100.tar' -f __key__,cls -o rows.jsonl
      htextract 'data-@100.tar' --index data.index.json
      htextract --verify data.index.json
      htextract 'data-@100.tar' -f __key__,cls,json -o meta-@100.parquet
      htextract 'data-@100.tar' -f __key__,cls --format parquet --to-dir meta/
      htextract 'data-@100.tar' -f __key__,json --keep picked.parquet --select-by json:uid
    """
    if verify_index:
        _verify(inputs, opts)
    if index_to and (select["keep"] or select["drop"]):
        raise click.UsageError("--index describes whole shards: not with --keep/--drop")
    if index_to:
        finish(index_shards(inputs, index_to, **opts.as_kwargs()), opts)
    kw = dict(fields=fields, field_names=field_names, count=count or 0, format=fmt,
              binary=binary, to_dir=to_dir, allow_missing=allow_missing, **select,
              **opts.as_kwargs())
    if output != "-":
        finish(extract(inputs, out=output, **kw), opts)
    try:
        summary = extract(inputs, out=sys.stdout, **kw)
    except BrokenPipeError:  # `htextract ... | head`: the reader has all it wants
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's own flush stays quiet
        sys.exit(0)
    finish(summary, opts)


def _verify(index: str, opts) -> None:
    """``--verify``: one line per shard that differs from the index, their count, and
    the summary; exit 1 when any differs (or a shard could not be read)."""
    summary = verify(index, **opts.as_kwargs())
    if opts.dry_run:
        finish(summary, opts)
    mismatched = summary.extra.get("mismatched", 0)
    for line in summary.extra.get("mismatches", []):
        print(line)
    print(f"{mismatched} of {summary.shards_total} shard(s) differ from the index"
          if mismatched else f"ok: {summary.shards_total} shard(s) match the index")
    report(summary, opts)
    sys.exit(1 if mismatched or not summary.ok else 0)
