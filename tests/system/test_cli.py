"""The commands as a shell user meets them: pipes, --help of the scripts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fixtures.servers import REPO
from helpers import ENV, make_shards

BIN = Path(sys.executable).parent


def test_htextract_into_head_ends_quietly(tmp_path):
    make_shards(tmp_path / "in", shards=4, per_shard=2000)
    p = subprocess.run(f"{BIN}/htextract '{tmp_path}/in/data-{{0..3}}.tar' -f __key__,txt "
                       "--workers 1 -q | head -2; exit ${PIPESTATUS[0]}", shell=True,
                       executable="/bin/bash", capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].startswith("s0/k0000\t") and len(p.stdout.splitlines()) == 2
    assert "Traceback" not in p.stderr and "Broken pipe" not in p.stderr


def test_scripts_help_exits_zero_with_usage_on_stdout():
    for name in ("nginx-start", "nginx-stop", "cluster-start"):
        p = subprocess.run([str(REPO / "scripts" / name), "--help"], capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 0 and p.stdout.strip(), (name, p.stderr)
    bad = subprocess.run([str(REPO / "scripts" / "nginx-start"), "--bogus"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown argument --bogus" in bad.stderr
