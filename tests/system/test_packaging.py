"""The built wheel and sdist carry the license text (pyproject.toml: license-files).

Built from a copy of the project in tmp_path, without build isolation and without an
index (no network): the interpreter's own setuptools builds them, so it must be new
enough for ``license-files`` and SPDX ``license`` (setuptools 77)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from helpers import child_env, require_module

ROOT = Path(__file__).resolve().parents[2]
SETUPTOOLS_MIN = 77


@pytest.fixture
def project_copy(tmp_path) -> Path:
    """What a build reads (pyproject, README, LICENSE, the package), copied so the build
    leaves nothing (build/, egg-info) in the working tree."""
    setuptools = require_module("setuptools")
    major = int(setuptools.__version__.split(".")[0])
    if major < SETUPTOOLS_MIN:
        pytest.fail(f"building htools needs setuptools>={SETUPTOOLS_MIN} (license-files), "
                    f"this interpreter has {setuptools.__version__}: run scripts/setup",
                    pytrace=False)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "htools", src / "htools",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


def test_license_file_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()


def test_wheel_and_sdist_carry_the_license(project_copy, tmp_path):
    license_text = (ROOT / "LICENSE").read_bytes()
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "-w", str(out), str(project_copy)],
                   check=True, env=child_env(), timeout=300)
    (wheel,) = out.glob("htools_wds-*.whl")  # the distribution htools-wds
    with zipfile.ZipFile(wheel) as zf:
        licenses = [n for n in zf.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert len(licenses) == 1, zf.namelist()
        assert zf.read(licenses[0]) == license_text
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(meta).decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata

    # The sdist, through the same build backend pip used (PEP 517's build_sdist).
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.build_sdist(sys.argv[1]))")
    name = subprocess.run([sys.executable, "-c", code, str(out)], cwd=project_copy, check=True,
                          capture_output=True, text=True, env=child_env(),
                          timeout=300).stdout.strip().splitlines()[-1]
    with tarfile.open(out / name) as tf:
        top = name.removesuffix(".tar.gz")
        member = tf.extractfile(f"{top}/LICENSE")
        assert member is not None and member.read() == license_text
        pkg_info = tf.extractfile(f"{top}/PKG-INFO")
        assert pkg_info is not None and b"License-File: LICENSE" in pkg_info.read()
