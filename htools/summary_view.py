"""How a :class:`~htools.summary.JobSummary` shows itself: ``print(summary)`` (the line,
then the first failures) and a notebook's rich output (an HTML table).  Kept apart from
the counting so each stays small."""

from __future__ import annotations

import html as _html
from typing import TYPE_CHECKING

from htools.errors import hide_credentials

if TYPE_CHECKING:
    from htools.summary import JobSummary

SHOWN_FAILURES = 10  # failures shown by str() and the notebook display (the JSON has more)


def text(self: JobSummary) -> str:
    """The summary line, then the first failures (shards, then samples) with their errors."""
    lines = [self.line(), *(f"  plan: {p}" for p in self.plan[:2 * SHOWN_FAILURES])]
    if len(self.plan) > 2 * SHOWN_FAILURES:
        lines.append(f"  ... {len(self.plan) - 2 * SHOWN_FAILURES} more planned")
    for f in self.failures[:SHOWN_FAILURES]:
        error = hide_credentials(f["error"] or "")
        lines.append(f"  failed shard {_shown(f['input'])}: {error}")
    if self.shards_failed > SHOWN_FAILURES:
        lines.append(f"  ... {self.shards_failed - SHOWN_FAILURES} more failed shards")
    for e in self.errors[:SHOWN_FAILURES]:
        lines.append(f"  failed sample {e['key']} of {_shown(e['url'])}: "
                     f"{hide_credentials(e['error'])}")
    if self.sample_errors > SHOWN_FAILURES:
        lines.append(f"  ... {self.sample_errors - SHOWN_FAILURES} more failed samples")
    return "\n".join(lines)

def html_table(self: JobSummary) -> str:
    """A table for Jupyter: shards, samples, bytes, time and throughput, and the first
    failures with their errors (everything escaped)."""
    esc = _html.escape
    secs = max(self.seconds, 1e-9)
    status = ("<b style='color:#1a7f37'>ok</b>" if self.ok
              else "<b style='color:#cf222e'>FAILED</b>")
    rows = [
        ("shards", f"{self.shards_done} done, {self.shards_skipped} skipped, "
                   f"{self.shards_failed} failed of {self.shards_total}"
                   + (f" ({self.shards_retried} retried)" if self.shards_retried else "")),
        ("samples", f"{self.samples_read:,} read, {self.samples_written:,} written, "
                    f"{self.samples_dropped:,} dropped, {self.samples_failed:,} failed"
                    + self._folded(",")),
        ("bytes", f"{format_bytes(self.bytes_in)} in, {format_bytes(self.bytes_out)} out"),
        ("time", f"{self.seconds:.1f} s"),
        ("throughput", f"{self.samples_read / secs:,.0f} samples/s, "
                       f"{self.bytes_in / secs / 1e6:,.1f} MB/s in"
                       if self.seconds > 0 else "-"),
        *(("note", n) for n in self.notes),
    ]
    body = "".join(f"<tr><th style='text-align:left'>{esc(k)}</th>"
                   f"<td style='text-align:left'>{esc(v)}</td></tr>" for k, v in rows)
    parts = [f"<div class='htools-summary'><p><code>{esc(self.tool)}</code>: {status}</p>"
             f"<table>{body}</table>"]
    if self.plan:
        shown = "\n".join(self.plan[:SHOWN_FAILURES * 2])
        more = len(self.plan) - SHOWN_FAILURES * 2
        parts.append(f"<p>plan (dry run):</p><pre>{esc(shown)}"
                     f"{esc(f'{chr(10)}... {more} more') if more > 0 else ''}</pre>")
    failed = [(_shown(f["input"]), f["error"] or "") for f in self.failures[:SHOWN_FAILURES]]
    failed += [(f"{_shown(e['url'])} key {e['key']}", e["error"])
               for e in self.errors[:SHOWN_FAILURES]]
    if failed:
        items = "".join(f"<tr><td style='text-align:left'><code>{esc(where)}</code></td>"
                        f"<td style='text-align:left'>"
                        f"<pre style='margin:0;white-space:pre-wrap'>"
                        f"{esc(hide_credentials(error))}</pre></td></tr>"
                        for where, error in failed)
        parts.append(f"<p>first failures (shards failed: {self.shards_failed}, "
                     f"sample errors: {self.sample_errors}):</p>"
                     f"<table><tr><th>where</th><th>error</th></tr>{items}</table>")
    parts.append("</div>")
    return "".join(parts)


def _shown(url: str | list[str]) -> str:
    return hide_credentials(url if isinstance(url, str) else " + ".join(url))


def format_bytes(n: float) -> str:
    """A byte count for people, in decimal units: ``768 B``, ``1.2 kB``, ``3.5 MB`` ... ``TB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"
