"""Security: no credential reaches the terminal through click's own errors (usage
errors echo the offending argument), and tar member names with ``..`` or an absolute
path never become file paths outside ``htextract --to-dir``.

(Basic-auth refusals -- 401, the redacted URL, no password printed, nothing written --
are covered end to end by test_nginx_auth.py.)"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from helpers import run

SECRET = "s3cr3t-pw-xyzzy"
URL = f"http://alice:{SECRET}@127.0.0.1:9/in-@2.tar"
OUT = f"http://alice:{SECRET}@127.0.0.1:9/out-@2.tar"


@pytest.mark.parametrize("tool,args", [
    ("htmapper", ["-p", "x.py", URL]),                               # missing OUTPUTS
    ("htmapper", ["-p", "x.py", URL, OUT, "--retries", "nope"]),     # bad option value
    ("htmapper", ["-p", "x.py", URL, OUT, OUT]),                     # extra argument
    ("htmapper", ["-p", "x.py", URL, OUT, "--workers", URL]),        # the URL as a bad value
    ("htmapper", ["-p", "x.py", URL, OUT, f"--no-such={URL}"]),      # unknown option
    ("htshuffle", [URL, OUT, "--seed", URL]),
    ("htsort", [URL, OUT, "--key-type", URL]),
    ("htextract", [URL, "--format", URL]),
    ("htupload", [URL, OUT, OUT]),
])
def test_usage_errors_hide_credentials(tmp_path, tool, args):
    p = run(tool, *args, cwd=str(tmp_path), timeout=60)
    assert p.returncode == 2, p.stderr  # click's usage-error exit
    assert "Error:" in p.stderr
    assert SECRET not in p.stderr and SECRET not in p.stdout, p.stderr
    assert "alice" not in p.stderr


def test_usage_error_still_names_the_redacted_url(tmp_path):
    p = run("htmapper", "-p", "x.py", URL, OUT, OUT, cwd=str(tmp_path), timeout=60)
    assert p.returncode == 2
    assert "http://127.0.0.1:9/out-@2.tar" in p.stderr  # what was wrong, minus userinfo


def raw_tar(path: Path, names: list[str]) -> None:
    """A tar written by Python's tarfile with exactly these member names."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as t:
        for name in names:
            info = tarfile.TarInfo(name)
            data = f"content of {name}".encode()
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("evil", ["../evil.txt", "../../evil.txt", "a/../../evil.txt",
                                  "/etc/x", "/etc/x.txt", "/tmp-htools-evil.txt"])
def test_extract_to_dir_never_writes_outside(tmp_path, evil):
    work = tmp_path / "work"
    target = work / "files"
    work.mkdir()
    raw_tar(work / "evil.tar", ["fine.txt", evil])
    absolute = [Path(evil)] if evil.startswith("/") else []
    existed = [a for a in absolute if a.exists()]
    before = set(tmp_path.rglob("*"))
    p = run("htextract", work / "evil.tar", "--to-dir", target, "--workers", "1")
    assert p.returncode == 1, p.stderr
    assert "would escape the target directory" in p.stderr
    assert f"'{evil}" in p.stderr  # names the member
    made = sorted(str(x.relative_to(tmp_path)) for x in set(tmp_path.rglob("*")) - before)
    assert all(m == "work/files" or m.startswith("work/files/") for m in made), made
    assert [a for a in absolute if a.exists()] == existed  # nothing at the absolute path
