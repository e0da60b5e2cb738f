"""Every tool, the Python API and the notebook's calls on workers that behave as if they
were on other machines (tests/fixtures/remote.py: own mount namespace, the client's folders
hidden, no HTOOLS_* or credential variables), with data on nginx, moto and the GCS
emulator (issue 17)."""

from __future__ import annotations

import io
import json
import os
import sys
import time
import uuid
from pathlib import Path

import pytest
from fixtures.servers import REPO
from helpers import ENV, make_shards, ok, read_wds, run

HINT = "exists here but not on the Dask workers"


@pytest.fixture
def remote(remote_cluster):  # noqa: F811
    return remote_cluster


@pytest.fixture
def web(nginx_server, tmp_path):
    """(base URL on nginx, the local folder behind it) with 4 input shards in it."""
    sub = uuid.uuid4().hex[:8]
    folder = Path(nginx_server.root) / sub
    samples = make_shards(folder, shards=4, per_shard=10)
    return f"{nginx_server.url}/{sub}/", folder, samples


def client_run(*args, cwd: Path, env: dict | None = None, timeout: float = 120):
    """A tool run from ``cwd`` (a folder the workers cannot see), as a user would."""
    return run(*args, cwd=str(cwd), env=env or ENV, timeout=timeout)


def test_the_workers_cannot_see_the_client(remote, tmp_path):
    (tmp_path / "here.txt").write_text("x")
    os.environ["HTOOLS_RIG_MARK"] = "client only"
    try:
        with remote.client() as c:
            seen = c.run(lambda p: (os.path.exists(p), os.getcwd(),
                                    sorted(k for k in os.environ
                                           if k.startswith(("HTOOLS_", "AWS_")))),
                         str(tmp_path / "here.txt"))
    finally:
        del os.environ["HTOOLS_RIG_MARK"]
    assert len(seen) == remote.workers
    for exists, cwd, env in seen.values():
        assert not exists and env == []
        assert cwd != os.getcwd() and not Path(cwd).exists()  # its own, in its namespace


SCRIPT = """\
import helper_mod
from pkg.sub import deep
import extra_mod

def process_sample(sample):
    sample["tag.txt"] = helper_mod.tag() + deep.D + extra_mod.E
    return sample
"""


def _script_dir(tmp_path: Path) -> tuple[Path, Path]:
    code = tmp_path / "code"
    (code / "pkg" / "sub").mkdir(parents=True)
    (code / "up.py").write_text(SCRIPT)
    (code / "helper_mod.py").write_text("def tag():\n    return 'h-'\n")
    (code / "pkg" / "__init__.py").write_text("")
    (code / "pkg" / "sub" / "__init__.py").write_text("")
    (code / "pkg" / "sub" / "deep.py").write_text("D = 'd-'\n")
    (code / "big.bin").write_bytes(b"\0" * 1000)  # data files are not shipped
    extra = tmp_path / "elsewhere"
    extra.mkdir()
    (extra / "extra_mod.py").write_text("E = 'e'\n")
    return code / "up.py", extra / "extra_mod.py"


def test_mapper_ships_what_the_script_imports(remote, web, tmp_path):
    base, folder, samples = web
    script, extra = _script_dir(tmp_path)
    ok(client_run("htmapper", "-c", remote.address, "-p", script, "--py-files", extra,
                  f"{base}data-@4.tar", f"{base}out-@4.tar", "-q", cwd=tmp_path))
    out = read_wds(sorted(folder.glob("out-*.tar")))
    assert len(out) == len(samples)
    assert {s["tag.txt"] for s in out} == {b"h-d-e"}

    # without --py-files: extra_mod is neither shipped nor installed: one line, once
    t0 = time.monotonic()
    proc = client_run("htmapper", "-c", remote.address, "-p", script,
                      f"{base}data-@4.tar", f"{base}bad-@4.tar", "-q", cwd=tmp_path)
    assert proc.returncode == 1 and time.monotonic() - t0 < 30
    assert proc.stderr.count("no module named 'extra_mod'") == 1, proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if "extra_mod" in ln)
    assert "imported at up.py line 3" in line and "--py-files" in line
    assert "installed on the workers" in line
    assert not list(folder.glob("bad-*.tar"))


def test_local_paths_the_workers_cannot_see_stop_in_seconds(remote, web, tmp_path):
    base, _folder, _samples = web
    local = tmp_path / "local"
    make_shards(local, shards=2, per_shard=3)
    (tmp_path / "id.py").write_text("def process_sample(s):\n    return s\n")
    for args, named in [
        (["htmapper", "-p", "id.py", str(local / "data-@2.tar"), f"{base}o-@2.tar"],
         local / "data-0.tar"),
        (["htmapper", "-p", "id.py", f"{base}data-@4.tar", str(tmp_path / "out" / "o-@4.tar")],
         tmp_path),
        (["htmapper", "-p", "id.py", f"@list:{tmp_path / 'inputs.txt'}", f"{base}l-@2.tar"],
         local / "data-0.tar"),
        (["htsort", f"{base}data-@4.tar", f"{base}sorted-@2.tar", "--scratch",
          str(tmp_path / "scratch")], tmp_path),
    ]:
        (tmp_path / "inputs.txt").write_text(f"{local}/data-0.tar\n{local}/data-1.tar\n")
        t0 = time.monotonic()
        proc = client_run(*args, "-c", remote.address, "-q", cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert time.monotonic() - t0 < 20
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"Error: {named} {HINT}"), proc.stderr
        assert "shared" not in last or "http(s)://, s3:// or gs:// URL" in last


def test_upload_from_the_client(remote, nginx_server, tmp_path):
    from make_images_here import make  # examples/, on the client only

    photos = tmp_path / "photos"
    n = make(str(photos), classes=3, per_class=7, size=8)
    sub = uuid.uuid4().hex[:8]
    base = f"{nginx_server.url}/{sub}/"
    for where, args, out_base in [
        ("embedded", ["--workers", "2"], str(tmp_path / "embedded") + "/"),
        ("remote", ["-c", remote.address], base),
    ]:
        ok(client_run("htupload", photos, f"{out_base}up-@3.tar", *args, "-q", "--summary",
                      tmp_path / f"{where}.json", cwd=tmp_path))
    # a list file, written to a local folder: the client writes it, the workers never see it
    (tmp_path / "files.txt").write_text("".join(f"{p.relative_to(tmp_path)}\n"
                                                for p in sorted(photos.rglob("*.*"))))
    proc = ok(client_run("htupload", "@files:files.txt", str(tmp_path / "listed" / "up-@3.tar"),
                         "-c", remote.address, "--summary", tmp_path / "listed.json",
                         cwd=tmp_path))
    assert "this machine reads the files" in proc.stderr
    here = Path(nginx_server.root) / sub
    for i in range(3):
        embedded = (tmp_path / "embedded" / f"up-{i}.tar").read_bytes()
        assert (here / f"up-{i}.tar").read_bytes() == embedded
    assert len(read_wds(sorted((tmp_path / "listed").glob("up-*.tar")))) == n

    def counts(name):
        js = json.loads((tmp_path / f"{name}.json").read_text())
        return {k: v for k, v in js.items() if k.startswith(("shards_", "samples_", "bytes_"))
                or k == "ok"}
    assert counts("remote") == counts("embedded")
    assert counts("remote")["samples_written"] == n and counts("remote")["ok"]


def test_exchange_and_extract_with_options_that_travel(remote, s3_server, gcs_server, nginx_server,
                                                       tmp_path):
    """S3 credentials and endpoints only in --storage-options (the workers have no AWS_*
    variables); htsort's default scratch beside the outputs on GCS, cleaned up."""
    local = tmp_path / "in"
    samples = make_shards(local, shards=3, per_shard=8)
    sub = uuid.uuid4().hex[:8]
    s3 = f"s3://{s3_server.bucket}/{sub}/"
    gs = f"gs://{gcs_server.bucket}/{sub}/"
    options = json.dumps({**s3_server.options, **gcs_server.options})
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True, **s3_server.options["s3"]).put(
        [str(p) for p in sorted(local.glob("*.tar"))], f"{s3_server.bucket}/{sub}/")
    script, extra = _script_dir(tmp_path)
    ok(client_run("htshuffle", f"{s3}data-@3.tar", f"{gs}shuffled-@2.tar", "-p", script,
                  "--py-files", extra.parent, "--seed", "3", "-c", remote.address,
                  "--storage-options", options, "-q", cwd=tmp_path))
    ok(client_run("htsort", f"{gs}shuffled-@2.tar", f"{gs}sorted-@2.tar", "-c", remote.address,
                  "--storage-options", options, "-q", cwd=tmp_path))
    import gcsfs

    fs = gcsfs.GCSFileSystem(skip_instance_cache=True, **gcs_server.options["gs"])
    left = [p.rsplit("/", 1)[-1] for p in fs.ls(f"{gcs_server.bucket}/{sub}")]
    assert {"shuffled-0.tar", "sorted-1.tar"} <= set(left), left
    assert not [p for p in left if "htools_tmp" in p], left  # scratch cleaned up
    rows = ok(client_run("htextract", f"{gs}sorted-@2.tar", "-f", "__key__,tag.txt",
                         "-c", remote.address, "--storage-options", options, "-q",
                         cwd=tmp_path)).stdout.splitlines()
    assert [r.split("\t")[0] for r in rows] == sorted(samples)
    assert {r.split("\t")[1] for r in rows} == {"h-d-e"}


def test_python_api_and_the_notebooks_calls(remote, nginx_server, tmp_path, monkeypatch):
    """The calls of examples/tour.ipynb, as plain API calls, with a Client of the rig
    and data on nginx; plus a function as the script, by ``cluster=``."""
    from make_images_here import make

    import htools

    monkeypatch.chdir(tmp_path)
    sub = uuid.uuid4().hex[:8]
    web = f"{nginx_server.url}/{sub}/"
    n = make(str(tmp_path / "images"), classes=5, per_class=8, size=16)
    with remote.client() as client:
        summary = htools.upload(str(tmp_path / "images"), f"{web}images-@4.tar",
                                client=client, overwrite=True, quiet=True)
        assert summary.ok and summary.as_dict()["samples_written"] == n
        summary = htools.map_shards(f"{web}images-@4.tar", f"{web}thumbs-@4.tar",
                                    str(REPO / "examples" / "thumbnails.py"), client=client,
                                    overwrite=True, quiet=True)
        assert summary.ok and summary.as_dict()["samples_written"] == n
        summary = htools.extract(f"{web}thumbs-@4.tar", fields=["cls"], count=10,
                                 client=client, out=io.StringIO(), quiet=True)
        counts = {values[0]: k for values, k in summary.extra["counts"]}
        assert sum(counts.values()) == n and len(counts) == 5
        assert htools.shuffle(f"{web}thumbs-@4.tar", f"{web}shuffled-@3.tar", seed=42,
                              client=client, overwrite=True, quiet=True).ok
        assert htools.sort(f"{web}shuffled-@3.tar", f"{web}sorted-@2.tar", key="cls",
                           client=client, overwrite=True, quiet=True).ok
        rows = io.StringIO()
        htools.extract(f"{web}sorted-@2.tar", fields=["__key__", "cls"], out=rows,
                       client=client, quiet=True)
        labels = [line.split("\t")[1] for line in rows.getvalue().splitlines()]
        assert labels == sorted(labels) and len(labels) == n
        make_shards(tmp_path / "local", shards=2, per_shard=2)
        with pytest.raises(htools.HtoolsError, match=HINT):
            htools.map_shards(str(tmp_path / "local" / "data-@2.tar"), f"{web}no-@2.tar",
                              lambda s: s, client=client, quiet=True)

    def label(sample):  # nested: travels by value, like a notebook's function
        sample["label.txt"] = b"L" + sample["cls"]
        return sample

    summary = htools.map_shards(f"{web}thumbs-@4.tar", f"{web}labelled-@4.tar", label,
                                cluster=remote.address, quiet=True)
    assert summary.ok and summary.as_dict()["samples_written"] == n


def test_credentials_travel(remote, nginx_auth_server, tmp_path):
    """Writes need basic auth: credentials in the URL, in --storage-options and in the
    client's $HTOOLS_HTTP_USER/PASSWORD all reach workers that have none."""
    srv = nginx_auth_server
    sub = uuid.uuid4().hex[:8]
    (Path(srv.root) / sub).mkdir()
    make_shards(Path(srv.root) / sub, shards=2, per_shard=4)
    base = f"{srv.url}/{sub}/"
    authed = base.replace("://", f"://{srv.user}:{srv.password}@", 1)
    (tmp_path / "id.py").write_text("def process_sample(s):\n    return s\n")
    common = ["-p", "id.py", "-c", remote.address, "-q"]
    ok(client_run("htmapper", f"{base}data-@2.tar", f"{authed}url-@2.tar", *common,
                  cwd=tmp_path))
    opts = json.dumps({"http": {"auth": {"user": srv.user, "password": srv.password}}})
    ok(client_run("htmapper", f"{base}data-@2.tar", f"{base}opt-@2.tar", *common,
                  "--storage-options", opts, cwd=tmp_path))
    env = {**ENV, "HTOOLS_HTTP_USER": srv.user, "HTOOLS_HTTP_PASSWORD": srv.password}
    proc = ok(client_run("htmapper", f"{base}data-@2.tar", f"{base}env-@2.tar", *common,
                         env=env, cwd=tmp_path))
    assert srv.password not in proc.stderr
    written = sorted(p.name for p in (Path(srv.root) / sub).glob("*-?.tar")
                     if not p.name.startswith("data"))
    assert written == ["env-0.tar", "env-1.tar", "opt-0.tar", "opt-1.tar", "url-0.tar",
                       "url-1.tar"]


@pytest.fixture(autouse=True)
def _examples_on_path(monkeypatch):
    """examples/make_images.py importable here (the client) as make_images_here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_images_here",
                                                  REPO / "examples" / "make_images.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setitem(sys.modules, "make_images_here", mod)


# ------------------------------------------------ without the rig (any user) --

def test_a_script_carries_its_folders_modules_not_its_data(tmp_path):
    from htools.usercode.script import load_script

    script, extra = _script_dir(tmp_path)
    s = load_script(script, require=("process_sample",), py_files=[extra])
    assert [p for p, _src in s.modules] == ["extra_mod.py", "helper_mod.py", "pkg/__init__.py",
                                            "pkg/sub/__init__.py", "pkg/sub/deep.py", "up.py"]
    again = load_script(script, require=("process_sample",), py_files=[extra])
    assert again.digest == s.digest
    (tmp_path / "code" / "helper_mod.py").write_text("def tag():\n    return 'v2-'\n")
    assert load_script(script, py_files=[extra], require=("process_sample",)).digest != s.digest


def test_shipped_modules_of_one_job_do_not_answer_anothers_imports(tmp_path):
    from htools.errors import ScriptLoadError
    from htools.usercode.script import Script

    one = Script.from_source("import rig_helper_x\nV = rig_helper_x.V\n", "one.py",
                             modules=(("rig_helper_x.py", "V = 1\n"),))
    two = Script.from_source("import rig_helper_x\nV = rig_helper_x.V\n", "two.py",
                             modules=(("rig_helper_x.py", "V = 2\n"),))
    assert one.load().V == 1 and two.load().V == 2 and one.load().V == 1
    three = Script.from_source("import rig_helper_x\n", "three.py",
                               modules=(("other.py", "\n"),))
    with pytest.raises(ScriptLoadError, match="no module named 'rig_helper_x' .imported at "
                                               "three.py line 1.: it is neither beside"):
        three.load()


def test_what_a_script_may_carry_is_bounded_and_checked(tmp_path, monkeypatch):
    from htools.errors import ScriptError
    from htools.usercode import script as script_mod
    from htools.usercode.script import load_script

    (tmp_path / "s.py").write_text("def process_sample(s):\n    return s\n")
    (tmp_path / "big.py").write_text("X = 1\n" * 1000)
    monkeypatch.setattr(script_mod, "MAX_SHIPPED", 4000)
    with pytest.raises(ScriptError, match=r"add up to 0.0 MB .* \(the largest big.py\)"):
        load_script(tmp_path / "s.py", require=("process_sample",))
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "s.py").write_text("def process_sample(s):\n    return s\n")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ScriptError, match="--py-files .*data.txt: not a Python module"):
        load_script(tmp_path / "own" / "s.py", py_files=[tmp_path / "data.txt"])
    with pytest.raises(ScriptError, match="--py-files .*missing: no such file or folder"):
        load_script(tmp_path / "own" / "s.py", py_files=[tmp_path / "missing"])
    with pytest.raises(ScriptError, match="py_files are shipped with a script file"):
        load_script(lambda s: s, require=("process_sample",), py_files=[tmp_path / "big.py"])


def test_check_workers_is_silent_for_an_embedded_cluster(tmp_path, processes_client):
    from htools.clusters.info import is_embedded
    from htools.runtime import preflight

    assert is_embedded(processes_client)
    preflight.check_workers(processes_client, [str(tmp_path)], [str(tmp_path / "o-1.tar")])
    assert preflight.unseen(None, [str(tmp_path)]) == []
