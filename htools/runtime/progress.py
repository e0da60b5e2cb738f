"""How a running job shows its progress: a tqdm bar on a terminal (stderr), an HTML line
updated in place in a Jupyter kernel, nothing when quiet or piped."""

from __future__ import annotations

import sys
import time
from typing import Any

from htools.display import in_notebook


class _Bar:
    """A tqdm bar on stderr: shards done/total, samples/s, MB/s, ETA."""

    def __init__(self, total: int, enabled: bool):
        self.samples = 0
        self.bytes = 0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="shard", file=sys.stderr, dynamic_ncols=True)

    def update(self, r: dict) -> None:
        if self.bar is None:
            return
        self.samples += r["samples_read"]
        self.bytes += r["bytes_in"]
        elapsed = max(self.bar.format_dict.get("elapsed", 0.0), 1e-6)
        self.bar.set_postfix_str(f"{self.samples / elapsed:,.0f} samples/s, "
                                 f"{self.bytes / elapsed / 1e6:,.1f} MB/s", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_display(total: int, quiet: bool, client: Any = None, tool: str = ""):
    """A job's progress: in place in a notebook, a tqdm bar on a terminal, else nothing
    (``update(result)`` per shard, ``close()`` at the end)."""
    if not quiet and in_notebook():
        return _NotebookBar(total, tool, client)
    return _Bar(total, enabled=not quiet and sys.stderr.isatty() and not in_notebook())


class _NotebookBar:
    """The job's progress in a Jupyter kernel: one HTML output (a progress bar, shards
    done, samples/s, MB/s, the dashboard link) updated in place through a display handle,
    at most 4 times a second.  No ipywidgets needed, and the last state stays in the saved
    notebook (and its HTML export) as plain HTML."""

    def __init__(self, total: int, tool: str, client: Any = None):
        self.total, self.tool = total, tool or "htools"
        self.done = self.failed = self.samples = self.bytes = 0
        self.started = self.shown = time.monotonic()
        try:
            self.link = client.dashboard_link if client is not None else None
        except Exception:  # noqa: BLE001 - no dashboard: no link
            self.link = None
        try:
            from IPython.display import display

            self.handle = display(self._html(), display_id=True)
        except Exception:  # noqa: BLE001 - not a rich display after all: no progress
            self.handle = None

    def _html(self, final: bool = False) -> Any:
        import html

        from IPython.display import HTML

        elapsed = max(time.monotonic() - self.started, 1e-6)
        text = (f"{self.done}/{self.total} shards"
                + (f" ({self.failed} failed)" if self.failed else "")
                + f" · {self.samples / elapsed:,.0f} samples/s"
                + (f" · {self.bytes / elapsed / 1e6:,.1f} MB/s" if self.bytes else "")
                + f" · {elapsed:.1f} s"
                + (" · done" if final else ""))
        link = (f" · <a href='{html.escape(self.link, True)}' target='_blank'>dashboard</a>"
                if self.link else "")
        return HTML(f"<div class='htools-progress'><progress value='{self.done}' "
                    f"max='{max(self.total, 1)}' style='width:16em;vertical-align:middle'>"
                    f"</progress> <code>{html.escape(self.tool)}</code> "
                    f"{html.escape(text)}{link}</div>")

    def update(self, r: dict) -> None:
        self.done += 1
        self.failed += r["status"] == "failed"
        self.samples += r["samples_read"]
        self.bytes += r["bytes_in"]
        if self.handle is not None and time.monotonic() - self.shown >= 0.25:
            self.shown = time.monotonic()
            self.handle.update(self._html())

    def close(self) -> None:
        if self.handle is not None:
            self.handle.update(self._html(final=True))
            self.handle = None
