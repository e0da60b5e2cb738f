"""Bad inputs and bad luck: every failure is named clearly, exits non-zero, and loses
or duplicates nothing."""

from __future__ import annotations

import json
import shutil
import socket
import time
import uuid
from pathlib import Path

import pytest
from helpers import make_shards, ok, read_wds, run


def script(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "script.py"
    p.write_text(body)
    return p


@pytest.fixture
def data(tmp_path):
    return make_shards(tmp_path / "in", shards=3, per_shard=20)


RAISES = """
def process_sample(sample):
    if sample["__key__"] == "s1/k0003":
        raise ValueError("cannot handle this one")
    return sample
"""


def test_script_error_names_shard_and_key_and_leaves_no_output(tmp_path, data):
    p = run("htmapper", "-p", script(tmp_path, RAISES), tmp_path / "in" / "data-@3.tar",
            tmp_path / "out" / "o-@3.tar", "--workers", "2")
    assert p.returncode == 1
    assert "data-1.tar" in p.stderr and "'s1/k0003'" in p.stderr
    assert "ValueError: cannot handle this one" in p.stderr
    assert 'raise ValueError("cannot handle this one")' in p.stderr  # the user's traceback
    assert "shards 2 done, 0 skipped, 1 failed of 3" in p.stderr
    outs = sorted(p.name for p in (tmp_path / "out").iterdir())
    # no partial output, no temp file left; who made the two written is recorded
    assert outs == ["o-0.tar", "o-2.tar", "o.lineage.json"]
    assert len(read_wds([tmp_path / "out" / "o-0.tar", tmp_path / "out" / "o-2.tar"])) == 40


def test_max_errors_goes_on_and_counts(tmp_path, data):
    summary = tmp_path / "s.json"
    ok(run("htmapper", "-p", script(tmp_path, RAISES), tmp_path / "in" / "data-@3.tar",
           tmp_path / "out" / "o-@3.tar", "--workers", "2", "--max-errors", "1",
           "--summary", summary))
    js = json.loads(summary.read_text())
    assert js["ok"] and js["samples_read"] == 60 and js["samples_written"] == 59
    assert js["samples_failed"] == 1 and js["sample_errors"] == 1
    assert js["errors"][0]["key"] == "s1/k0003" and js["errors"][0]["url"].endswith("data-1.tar")
    got = read_wds(sorted((tmp_path / "out").glob("o-*.tar")))
    assert sorted(s["__key__"] for s in got) == sorted(k for k in data if k != "s1/k0003")
    assert all(s == data[s["__key__"]] for s in got)


def test_missing_local_input_fails_fast_before_any_cluster(tmp_path, data):
    (tmp_path / "in" / "data-1.tar").unlink()
    t0 = time.monotonic()
    p = run("htmapper", "-p", script(tmp_path, "def process_sample(s):\n    return s\n"),
            tmp_path / "in" / "data-@3.tar", tmp_path / "out" / "o-@3.tar", "--workers", "2")
    assert time.monotonic() - t0 < 5
    assert p.returncode == 1 and "workers" not in p.stderr  # no cluster was started
    assert p.stderr.strip().splitlines() == [f"Error: input {tmp_path}/in/data-1.tar does not exist"]
    assert not (tmp_path / "out").exists()


def test_input_missing_on_the_server_fails_that_shard_only(tmp_path, data, nginx_server):
    sub = nginx_server.root / f"m-{uuid.uuid4().hex[:6]}"
    sub.mkdir()
    for name in ("data-0.tar", "data-2.tar"):  # data-1 is not there
        shutil.copy(tmp_path / "in" / name, sub / name)
    base = f"{nginx_server.url}/{sub.name}"
    p = run("htmapper", "-p", script(tmp_path, "def process_sample(s):\n    return s\n"),
            f"{base}/data-@3.tar", tmp_path / "out" / "o-@3.tar", "--workers", "2")
    assert p.returncode == 1
    assert f"FAILED {base}/data-1.tar" in p.stderr and "404" in p.stderr
    assert sorted(x.name for x in (tmp_path / "out").iterdir()) == ["o-0.tar", "o-2.tar",
                                                                 "o.lineage.json"]


def test_corrupt_shard_is_named_with_offset(tmp_path, data):
    bad = tmp_path / "in" / "data-1.tar"
    import tarfile

    with tarfile.open(bad) as tf:
        header = tf.getmembers()[7].offset
    raw = bytearray(bad.read_bytes())
    raw[header + 3] ^= 0x20  # a letter of the member name: the header checksum no longer matches
    bad.write_bytes(bytes(raw))
    p = run("htmapper", "-p", script(tmp_path, "def process_sample(s):\n    return s\n"),
            tmp_path / "in" / "data-@3.tar", tmp_path / "out" / "o-@3.tar", "--workers", "2")
    assert p.returncode == 1
    assert "data-1.tar" in p.stderr and f"offset {header}" in p.stderr
    assert "checksum" in p.stderr
    assert not (tmp_path / "out" / "o-1.tar").exists()


def test_truncated_shard(tmp_path, data):
    bad = tmp_path / "in" / "data-2.tar"
    bad.write_bytes(bad.read_bytes()[:5000])
    p = run("htextract", tmp_path / "in" / "data-@3.tar", "--workers", "1")
    assert p.returncode == 1
    assert "data-2.tar" in p.stderr and "truncated" in p.stderr.lower()


def test_unreachable_server_fails_clearly_and_quickly(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens
    t0 = time.monotonic()
    p = run("htextract", f"http://127.0.0.1:{port}/data-@2.tar", "--workers", "1",
            env=dict(__import__("os").environ, HTOOLS_RETRIES="2"))
    assert p.returncode == 1
    assert f"127.0.0.1:{port}/data-0.tar" in p.stderr
    assert time.monotonic() - t0 < 60


def test_unreachable_scheduler(tmp_path, data):
    p = run("htextract", tmp_path / "in" / "data-@3.tar", "-c", "127.0.0.1:1",
            env=dict(__import__("os").environ, HTOOLS_CONNECT_TIMEOUT="2s"))
    assert p.returncode == 1
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in p.stderr


def test_bad_scripts_fail_before_any_task(tmp_path, data):
    for body, why in [("def process_sample(s)\n    return s\n", "syntax error at line 1"),
                      ("def process(s):\n    return s\n", "does not define process_sample()")]:
        t0 = time.monotonic()
        p = run("htmapper", "-p", script(tmp_path, body), tmp_path / "in" / "data-@3.tar",
                tmp_path / "out" / "o-@3.tar")
        assert p.returncode == 1 and why in p.stderr
        assert "workers" not in p.stderr  # no cluster was started
        assert time.monotonic() - t0 < 15
    assert not (tmp_path / "out").exists()


def test_existing_outputs_refused_then_resume_finishes(tmp_path, data):
    identity = script(tmp_path, "def process_sample(s):\n    return s\n")
    ok(run("htmapper", "-p", identity, tmp_path / "in" / "data-@3.tar",
           tmp_path / "out" / "o-@3.tar", "--workers", "2"))
    (tmp_path / "out" / "o-1.tar").unlink()  # an interrupted job: shard 1 never got done
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("o-*.tar")}
    assert sorted(before) == ["o-0.tar", "o-2.tar"]

    p = run("htmapper", "-p", identity, tmp_path / "in" / "data-@3.tar",
            tmp_path / "out" / "o-@3.tar", "--workers", "2")
    assert p.returncode == 1 and "2 output(s) already exist" in p.stderr
    assert "--resume" in p.stderr

    p = run("htmapper", "-p", identity, tmp_path / "in" / "data-@3.tar",
            tmp_path / "out" / "o-@3.tar", "--workers", "2", "--dry-run", "--resume")
    assert p.returncode == 0 and "(exists, skipped)" in p.stdout and "o-1.tar" in p.stdout
    assert len(p.stdout.splitlines()) == 3
    assert not (tmp_path / "out" / "o-1.tar").exists()

    p = ok(run("htmapper", "-p", identity, tmp_path / "in" / "data-@3.tar",
               tmp_path / "out" / "o-@3.tar", "--workers", "2", "--resume"))
    assert "shards 1 done, 2 skipped, 0 failed of 3" in p.stderr
    assert {n: (tmp_path / "out" / n).stat().st_mtime_ns for n in before} == before
    got = read_wds(sorted((tmp_path / "out").glob("o-*.tar")))
    assert sorted(s["__key__"] for s in got) == sorted(data)

    ok(run("htmapper", "-p", identity, tmp_path / "in" / "data-@3.tar",
           tmp_path / "out" / "o-@3.tar", "--workers", "2", "--overwrite"))


KILLS_ITS_WORKER = """
import os, signal
MARK = {mark!r}

def process_sample(sample):
    if sample["__key__"] == "s1/k0010" and not os.path.exists(MARK):
        open(MARK, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-shard
    return sample
"""


def test_worker_killed_mid_job_writes_every_sample_once(tmp_path, data, cluster_args):
    mark = tmp_path / "killed"
    p = ok(run("htmapper", "-p", script(tmp_path, KILLS_ITS_WORKER.format(mark=str(mark))),
               tmp_path / "in" / "data-@3.tar", tmp_path / "out" / "o-@3.tar", *cluster_args))
    assert mark.exists()  # a worker really died
    assert "shards 3 done" in p.stderr
    # the killed attempt's temp file is cleaned up, the retry's output committed once
    # every output once, no temp file left; the shard index beside them
    assert sorted(x.name for x in (tmp_path / "out").iterdir()) == ["o-0.tar", "o-1.tar",
                                                                     "o-2.tar", "o.index.json"]
    got = read_wds(sorted((tmp_path / "out").glob("o-*.tar")))
    assert sorted(s["__key__"] for s in got) == sorted(data)  # exactly once each
    assert all(s == data[s["__key__"]] for s in got)


def test_expansion_gives_distinct_keys(tmp_path, data):
    body = ("def process_sample(s):\n"
            "    return [{'jpg': s['jpg']}, {'jpg': s['jpg'][::-1]}]\n")
    p = ok(run("htmapper", "-p", script(tmp_path, body), tmp_path / "in" / "data-0.tar",
               tmp_path / "out" / "o.tar", "--workers", "1"))
    assert "20 read, 40 written" in p.stderr
    got = read_wds([tmp_path / "out" / "o.tar"])
    assert [s["__key__"] for s in got[:2]] == ["s0/k0000-0", "s0/k0000-1"]
    assert got[1]["jpg"] == data["s0/k0000"]["jpg"][::-1]


def test_progress_bar_on_a_terminal(tmp_path, data):
    """On a terminal, stderr shows shards done/total, samples/s, MB/s and the dashboard."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    from helpers import BIN, ENV

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    proc = subprocess.Popen([str(BIN / "htextract"), str(tmp_path / "in" / "data-@3.tar"),
                             "--workers", "1", "-o", str(tmp_path / "rows.tsv")],
                            stdin=slave, stdout=slave, stderr=slave, env=ENV)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=120) == 0
    os.close(master)
    text = out.decode(errors="replace")
    assert "dashboard at http://127.0.0.1:" in text
    assert "3/3" in text and "samples/s" in text and "MB/s" in text
    assert "htextract: ok; shards 3 done" in text


@pytest.mark.parametrize("body,keys,written", [
    # copies of the input keep its key: they get -0, -1 suffixes, never a duplicate key
    ("def process_sample(s):\n    out = []\n    for i in range(2):\n"
     "        d = dict(s); d['txt'] = str(i).encode(); out.append(d)\n    return out\n",
     ["s0/k0000-0", "s0/k0000-1"], 40),
    # a changed alias renames the sample
    ("def process_sample(s):\n    s['key'] = 'new/' + s['key']\n    return s\n",
     ["new/s0/k0000", "new/s0/k0001"], 20),
    # an output with only _-fields writes nothing: the input counts as dropped
    ("def process_sample(s):\n    return {'_note': b'x'}\n", [], 0),
])
def test_output_keys_and_counts(tmp_path, data, body, keys, written):
    summary = tmp_path / "s.json"
    ok(run("htmapper", "-p", script(tmp_path, body), tmp_path / "in" / "data-0.tar",
           tmp_path / "out" / "o.tar", "--workers", "1", "--summary", summary, "-q"))
    got = read_wds([tmp_path / "out" / "o.tar"])
    assert [s["__key__"] for s in got[:2]] == keys
    js = json.loads(summary.read_text())
    assert js["samples_written"] == written == len(got)
    assert js["samples_dropped"] == (20 if not written else 0)


def test_duplicate_output_keys_fail_the_shard(tmp_path, data):
    body = ("def process_sample(s):\n"
            "    return [{'__key__': 'same', 'a': b'1'}, {'__key__': 'same', 'b': b'2'}]\n")
    p = run("htmapper", "-p", script(tmp_path, body), tmp_path / "in" / "data-0.tar",
            tmp_path / "out" / "o.tar", "--workers", "1")
    assert p.returncode == 1 and "share the key 'same'" in p.stderr
    assert not (tmp_path / "out" / "o.tar").exists()


def test_credentials_never_reach_messages_or_summary(tmp_path, data):
    bad = tmp_path / "in" / "data-1.tar"
    bad.write_bytes(bad.read_bytes()[:5000])
    summary = tmp_path / "s.json"
    src = f"file://user:s3cret@localhost{tmp_path}/in/data-@3.tar"
    p = run("htmapper", "-p", script(tmp_path, "def process_sample(s):\n    return s\n"), src,
            f"file://user:s3cret@localhost{tmp_path}/out/o-@3.tar", "--workers", "1",
            "--summary", summary)
    assert p.returncode == 1 and "data-1.tar" in p.stderr
    assert "s3cret" not in p.stderr + p.stdout + summary.read_text()
    rows = ok(run("htextract", f"file://user:s3cret@localhost{tmp_path}/out/o-0.tar",
                  "-f", "__key__,__url__", "-q", "--workers", "1"))
    assert "s3cret" not in rows.stdout + rows.stderr and "localhost" in rows.stdout


def test_stdin_is_refused_and_pipe_outputs_work(tmp_path, data):
    identity = script(tmp_path, "def process_sample(s):\n    return s\n")
    p = run("htmapper", "-p", identity, "-", tmp_path / "o.tar", "--workers", "1")
    assert p.returncode == 1 and "'-' (stdin/stdout) is not available to Dask workers" in p.stderr
    ok(run("htmapper", "-p", identity, tmp_path / "in" / "data-0.tar",
           f"pipe:cat > {tmp_path}/piped.tgz", "--workers", "1", "-q"))  # gzip by suffix
    assert len(read_wds([tmp_path / "piped.tgz"])) == 20


def test_max_errors_is_per_shard_and_resume_redoes_failed_shards(tmp_path, data):
    body = ("def process_sample(s):\n"
            "    if s['__key__'].endswith(('k0001', 'k0002')):\n"
            "        raise ValueError('bad')\n    return s\n")
    args = ["-p", script(tmp_path, body), tmp_path / "in" / "data-@3.tar",
            tmp_path / "out" / "o-@3.tar", "--workers", "2"]
    p = ok(run("htmapper", *args, "--max-errors", "2"))  # 2 per shard: every shard is within
    assert "54 written" in p.stderr and "6 failed" in p.stderr
    p = run("htmapper", *args, "--max-errors", "1", "--overwrite")
    assert p.returncode == 1 and "shards 0 done, 0 skipped, 3 failed of 3" in p.stderr
    # the first run's outputs are gone too: nothing stale that a resume could skip
    assert not list((tmp_path / "out").glob("o-*.tar"))


def test_a_script_that_cannot_import_fails_once(tmp_path):
    make_shards(tmp_path / "in", shards=20, per_shard=2)
    p = run("htmapper", "-p", script(tmp_path, "import numpyy\n\ndef process_sample(s):\n"
                                              "    return s\n"),
            tmp_path / "in" / "data-{0..19}.tar", tmp_path / "out" / "o-@20.tar", "--workers", "2")
    assert p.returncode == 1
    failed = [ln for ln in p.stderr.splitlines() if "FAILED" in ln and "htools:" in ln]
    assert len(failed) == 1 and "20 shards with the same error" in failed[0]
    assert "no module named 'numpyy'" in failed[0].lower()
    assert "shards 0 done, 0 skipped, 20 failed of 20" in p.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_failed_exchange_counts_its_outputs_truthfully(tmp_path):
    make_shards(tmp_path / "in", shards=4, per_shard=5)
    (tmp_path / "in" / "data-1.tar").write_bytes(b"this is not a tar file" * 40)
    p = run("htshuffle", tmp_path / "in" / "data-@4.tar", tmp_path / "o" / "o-@3.tar",
            "--workers", "2")
    assert p.returncode == 1 and f"FAILED {tmp_path}/in/data-1.tar" in p.stderr
    assert "shards 0 done, 0 skipped, 3 failed of 3" in p.stderr
    assert "stage 1 failed (1 of 4 tasks): nothing was written" in p.stderr
    assert "15 read, 0 written, 0 dropped, 15 failed" in p.stderr
