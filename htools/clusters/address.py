"""Query parameters of cluster addresses (``k8s://NAME?workers=2``,
``slurm://PART?jobs=4``): one parser for the numbers every cluster kind takes."""

from __future__ import annotations

from collections.abc import Mapping

from htools.errors import HtoolsError


def positive_int(params: Mapping[str, str], key: str, address: str,
                 error: type[HtoolsError] = HtoolsError) -> int | None:
    """``params[key]`` as a positive integer (None when absent); else ``error``."""
    if key not in params:
        return None
    try:
        value = int(params[key])
    except ValueError:
        value = 0
    if value < 1:
        raise error(f"{key} must be a positive integer, not {params[key]!r} in {address!r}")
    return value
