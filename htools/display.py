"""Where a job's output goes: a Jupyter kernel or a terminal.  At the bottom of the
package (imports nothing of htools), so the cluster code and the progress display ask
it the same way."""

from __future__ import annotations

import sys


def in_notebook() -> bool:
    """True inside a Jupyter kernel (a ZMQ IPython shell), where progress and links are
    shown as HTML rather than stderr lines."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:  # noqa: BLE001 -- no IPython shell: not a notebook
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"
