"""htupload of a folder that cannot be uploaded as it is: a symlink loop, a broken link.
The scan runs while the embedded cluster starts; its error is still one line, the
command fails, and no shard is written (the cluster started meanwhile is closed)."""

from __future__ import annotations

import os

import pytest
from helpers import run


@pytest.mark.parametrize("link, says", [
    ("..", "src/a/up: a symlink loop (it leads back to "),
    ("gone.txt", "src/a/w.txt: No such file or directory"),
])
def test_a_folder_htupload_cannot_read_is_refused_in_one_line(tmp_path, link, says):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(3):
        (src / "a" / f"n{i}.txt").write_bytes(b"x" * 10)
    os.symlink(link, src / "a" / ("up" if link == ".." else "w.txt"))
    p = run("htupload", src, tmp_path / "out" / "o-@2.tar", "--workers", "1")
    assert p.returncode != 0
    assert says in p.stderr, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    assert not list(tmp_path.glob("out/o-*.tar"))


def test_outputs_that_exist_are_refused_before_a_cluster_starts(tmp_path):
    """The cluster starts beside the scan, but not for a job refused before its tasks."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "n0.txt").write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "o-0.tar").write_bytes(b"")
    p = run("htupload", src, out / "o-@2.tar", "--workers", "1")
    assert p.returncode != 0
    assert "already exist" in p.stderr and "--overwrite" in p.stderr, p.stderr
    assert "workers, dashboard" not in p.stderr, p.stderr
