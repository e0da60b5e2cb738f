"""This process's memory, as the tasks report it (Linux ``/proc``)."""

from __future__ import annotations

import os
import resource


def rss() -> int:
    """Resident memory now, in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def peak_rss() -> int:
    """This process's own peak RSS (VmHWM; ru_maxrss would include what the parent had)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
