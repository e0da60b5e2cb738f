"""``extract()``'s results as data: a pandas DataFrame when pandas is there (integers with
gaps as pandas' Int64), else plain rows (:class:`Rows`) or value counts (:class:`Counts`),
each carrying the job summary as ``.summary``."""

from __future__ import annotations

from collections import Counter

from htools.errors import HtoolsError
from htools.summary import JobSummary


class Rows(list):
    """``extract``'s rows as a list of dicts (no pandas); the job summary is ``.summary``."""

    summary: JobSummary


class Counts(Counter):
    """``extract``'s value counts (no pandas); the job summary is ``.summary``."""

    summary: JobSummary


def _series(pd, values: list):
    """A column's values; integers with a missing value keep their type (pandas' Int64)."""
    if any(v is None for v in values) and any(type(v) is int for v in values):
        return pd.array(values, dtype="Int64")
    return values


def as_data(names: list[str], rows: list[dict] | dict[str, list], top: list | None,
             summary: JobSummary,
             frame: bool | None):
    pd = None
    if frame is not False:
        try:
            import pandas as pd
        except ImportError:
            if frame:
                raise HtoolsError("extract(frame=True) needs pandas: pip install pandas") from None
    if top is not None:
        if pd is not None:
            data = pd.DataFrame([[*values, n] for values, n in top], columns=[*names, "count"])
        else:
            data = Counts({values[0] if len(values) == 1 else values: n for values, n in top})
    elif isinstance(rows, dict):  # typed columns
        if pd is not None:
            data = pd.DataFrame({n: _series(pd, rows[n]) for n in names}, columns=names)
        else:
            data = Rows(dict(zip(names, values)) for values in zip(*rows.values()))
    elif pd is not None:
        data = pd.DataFrame(rows, columns=names)
    else:
        data = Rows(rows)
    data.summary = summary  # a plain instance attribute, also on a DataFrame
    return data
