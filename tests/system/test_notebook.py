"""examples/tour.ipynb executed end to end (nbclient, a kernel running this Python):
upload, head/sample, map, extract to DataFrames + plot, shuffle and sort on a 2-process
LocalCluster; its outputs hold the thumbnails, the DataFrames, rendered summaries and
progress displays updated in place."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from helpers import require_module

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "examples" / "tour.ipynb"


@pytest.mark.timeout(240)
def test_tour_notebook_runs(tmp_path, monkeypatch):
    nbformat = require_module("nbformat")
    nbclient = require_module("nbclient")
    require_module("ipykernel")  # the kernel that runs the notebook
    # The native "python3" kernel of jupyter_client is the Python running this test
    # (ipykernel importable here), so the notebook sees this venv's htools.
    monkeypatch.setenv("HTOOLS_EXAMPLES", str(REPO / "examples"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / ".ipython"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit the notebook without outputs"
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    first = "".join(o.get("text", "") for o in nb.cells[0].outputs).strip()
    assert os.path.realpath(first) == os.path.realpath(sys.executable)
    work = tmp_path / "tour-data"
    assert len(list(work.glob("images-*.tar"))) == 4
    assert len(list(work.glob("thumbs-*.tar"))) == 4
    assert len(list(work.glob("shuffled-*.tar"))) == 3
    assert len(list(work.glob("sorted-*.tar"))) == 2
    assert len(list(work.glob("emb-*.tar"))) == 4  # examples/embed.py, in batches
    assert (work / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = work / "class_counts.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = [o for c in nb.cells for o in c.get("outputs", [])
             if "image/png" in o.get("data", {})]
    assert len(shown) >= 2, "the plot or the thumbnails of the scores were not displayed"
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors

    def html_of(cell) -> list[str]:
        return [o["data"]["text/html"] for o in cell.get("outputs", [])
                if "text/html" in o.get("data", {})]

    def cell_with(text: str):
        found = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
        assert found, f"no cell calls {text}"
        return found[0]

    # htools.head: a table with the images as thumbnails (the ppm converted to PNG)
    head = "".join(html_of(cell_with("htools.head(")))
    assert "<table class='htools-samples'>" in head
    assert head.count("<img src='data:image/png;base64,") == 6
    assert "<img" in "".join(html_of(cell_with("htools.sample(")))
    # extract without out=: a DataFrame, shown as one
    assert any("class=\"dataframe\"" in h for h in html_of(cell_with("rows.head()")))
    assert any("class=\"dataframe\"" in h for h in html_of(cell_with("count=10")))
    # a summary, rendered
    summaries = [h for c in nb.cells for h in html_of(c) if "class='htools-summary'" in h]
    assert len(summaries) >= 3 and "4 done, 0 skipped, 0 failed of 4" in summaries[0]
    # progress: one output per job, updated in place (its last state, not a scroll of
    # states), with the dashboard link; no text bar on stderr
    upload = cell_with("htools.upload(")
    progress = [h for h in html_of(upload) if "class='htools-progress'" in h]
    assert len(progress) == 1, progress
    assert "4/4 shards" in progress[0] and "done" in progress[0] and ">dashboard</a>" in progress[0]
    stderr = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                     if o.get("name") == "stderr")
    assert "shard/s" not in stderr and "shards/s" not in stderr and "it/s" not in stderr
