"""htupload -> htmapper -> htextract end to end, as a user runs them: on the embedded
cluster and on a separate `dask scheduler` with two `dask worker` processes, with
data on local files and through nginx.  Results are read back with webdataset."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from helpers import BIN, make_shards, ok, read_wds, run

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "thumbnails.py"


def make_images(root: Path, per_class: int = 6) -> int:
    out = subprocess.run([str(BIN / "python"), str(REPO / "examples" / "make_images.py"),
                          str(root), "--per-class", str(per_class), "--size", "8"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def test_upload_map_extract(tmp_path, cluster_args, place):
    base, local = place
    n = make_images(tmp_path / "imgs")
    ok(run("htupload", tmp_path / "imgs", f"{base}img-@3.tar", *cluster_args, "-q"))
    uploaded = read_wds(sorted(local.glob("img-*.tar")))
    assert len(uploaded) == n
    for s in uploaded:  # byte for byte against the source files
        assert s["ppm"] == (tmp_path / "imgs" / f"{s['__key__']}.ppm").read_bytes()
        assert s["cls"] == (tmp_path / "imgs" / f"{s['__key__']}.cls").read_bytes()

    summary = tmp_path / "summary.json"
    ok(run("htmapper", "-p", EXAMPLE, f"{base}img-@3.tar", f"{base}thumb-@3.tar",
           *cluster_args, "--summary", summary))
    mapped = read_wds(sorted(local.glob("thumb-*.tar")))
    assert sorted(s["__key__"] for s in mapped) == sorted(s["__key__"] for s in uploaded)
    for s in mapped:
        assert set(s) == {"__key__", "cls", "thumb.ppm", "mean.json"}
        assert s["thumb.ppm"].startswith(b"P6\n4 4\n255\n")
        assert len(json.loads(s["mean.json"])["rgb"]) == 3
    js = json.loads(summary.read_text())
    assert js["ok"] and js["shards_done"] == 3 and js["samples_read"] == n
    assert js["samples_written"] == n
    assert js["samples_read"] == js["samples_mapped"] + js["samples_dropped"] + js["samples_failed"]

    out = ok(run("htextract", f"{base}thumb-@3.tar", "-f", "cls", "--count", "10",
                 *cluster_args, "-q"))
    counts = {line.split("\t")[1]: int(line.split("\t")[0]) for line in out.stdout.splitlines()}
    assert counts == {str(c): n // 5 for c in range(5)}

    rows = ok(run("htextract", f"{base}thumb-@3.tar", "-f", "__key__,cls,thumb.ppm",
                  *cluster_args, "-q")).stdout.splitlines()
    assert [r.split("\t")[0] for r in rows] == [s["__key__"] for s in mapped]  # shard order
    assert all(r.split("\t")[2] == "<binary: 59 bytes>" for r in rows)  # marked, with its length


def test_original_description_script_unchanged(tmp_path):
    import webdataset as wds

    (tmp_path / "in").mkdir()
    with wds.TarWriter(str(tmp_path / "in" / "v-0.tar")) as w:
        w.write({"__key__": "a", "bin.png": b"B1", "lines.png": b"L1"})
        w.write({"__key__": "b", "bin.png": b"B2"})  # no lines.png: dropped
        w.write({"__key__": "c", "lines.png": b"L3"})  # no bin.png: dropped
    script = tmp_path / "script.py"
    script.write_text(
        "def process_sample(record):\n"
        "    if \"bin.png\" not in record: return None\n"
        "    if \"lines.png\" not in record: return None\n"
        "    return {\"key\": record[\"key\"], \"png\": record[\"bin.png\"], "
        "\"lines.png\": record[\"lines.png\"]}\n")
    p = ok(run("htmapper", "-p", script, tmp_path / "in" / "v-@1.tar",
               tmp_path / "out" / "p-@1.tar", "--workers", "1"))
    assert "1 written, 2 dropped" in p.stderr
    assert read_wds([tmp_path / "out" / "p-0.tar"]) == [
        {"__key__": "a", "png": b"B1", "lines.png": b"L1"}]
    listing = subprocess.run(["tar", "-tvf", tmp_path / "out" / "p-0.tar"], capture_output=True,
                             text=True, check=True).stdout
    assert "a.lines.png" in listing and "a.png" in listing


def test_upload_maxcount_and_reshard_tars(tmp_path):
    samples = make_shards(tmp_path / "src", shards=3, per_shard=10)
    ok(run("htupload", tmp_path / "src" / "data-@3.tar", tmp_path / "re" / "r-%04d.tar",
           "--maxcount", "7", "--workers", "2", "-q"))
    outs = sorted((tmp_path / "re").glob("r-*.tar"))
    assert [p.name for p in outs] == [f"r-{i:04d}.tar" for i in range(5)]
    got = read_wds(outs)
    assert [s["__key__"] for s in got] == list(samples)  # order kept
    assert all(s == samples[s["__key__"]] for s in got)
    assert [len(read_wds([p])) for p in outs] == [7, 7, 7, 7, 2]


def test_upload_groups_non_contiguous_directory_files(tmp_path):
    src = tmp_path / "d"
    (src / "x").mkdir(parents=True)
    for name, data in [("x/b.txt", b"bt"), ("x/a.txt", b"at"), ("x/b.cls", b"1"),
                       ("x/a.cls", b"0"), ("x/a.seg.png", b"PNG")]:
        (src / name).write_bytes(data)
    (src / "x" / ".DS_Store").write_bytes(b"hidden files are skipped")
    (src / "README").write_bytes(b"files without an extension are not sample members")
    ok(run("htupload", src, tmp_path / "o" / "u-@1.tar", "--workers", "1", "-q"))
    assert read_wds([tmp_path / "o" / "u-0.tar"]) == [
        {"__key__": "x/a", "cls": b"0", "seg.png": b"PNG", "txt": b"at"},
        {"__key__": "x/b", "cls": b"1", "txt": b"bt"}]


def test_extract_formats_field_names_and_to_dir(tmp_path):
    samples = make_shards(tmp_path / "src", shards=2, per_shard=3)
    src = str(tmp_path / "src" / "data-@2.tar")
    lines = ok(run("htextract", src, "-f", "__key__,txt,jpg", "--format", "jsonl", "-q",
                   "--workers", "1")).stdout.splitlines()
    rows = [json.loads(x) for x in lines]
    assert [r["__key__"] for r in rows] == list(samples)
    assert rows[0]["txt"] == samples[rows[0]["__key__"]]["txt"].decode()
    assert rows[0]["jpg"] == f"<binary: {len(samples[rows[0]['__key__']]['jpg'])} bytes>"
    names = ok(run("htextract", src, "-K", "-q", "--workers", "1")).stdout.splitlines()
    assert names[0] == f"{list(samples)[0]}\tcls,jpg,txt"
    ok(run("htextract", src, "-f", "jpg", "--to-dir", tmp_path / "files", "-q", "--workers", "1"))
    for key, s in samples.items():
        assert (tmp_path / "files" / f"{key}.jpg").read_bytes() == s["jpg"]


def test_extract_refuses_names_escaping_to_dir(tmp_path):
    import webdataset as wds

    (tmp_path / "in").mkdir()
    with wds.TarWriter(str(tmp_path / "in" / "evil.tar")) as w:
        w.write({"__key__": "../../escape", "txt": b"x"})
    p = run("htextract", tmp_path / "in" / "evil.tar", "-f", "txt", "--to-dir",
            tmp_path / "out", "--workers", "1")
    assert p.returncode == 1
    assert "would escape the target directory" in p.stderr
    assert not (tmp_path / "escape.txt").exists()


def test_object_stores_end_to_end(tmp_path, s3_server, gcs_server):
    """Options travel to the workers: upload to S3 (moto), map S3 -> GCS (emulator), extract."""
    opts = json.dumps({**s3_server.options, **gcs_server.options})
    sub = uuid.uuid4().hex[:8]
    s3 = f"s3://{s3_server.bucket}/{sub}"
    gs = f"gs://{gcs_server.bucket}/{sub}"
    n = make_images(tmp_path / "imgs", per_class=4)
    common = ["--workers", "2", "--storage-options", opts, "-q"]
    ok(run("htupload", tmp_path / "imgs", f"{s3}/img-@2.tar", *common))
    ok(run("htmapper", "-p", EXAMPLE, f"{s3}/img-@2.tar", f"{gs}/thumb-@2.tgz", *common))
    out = ok(run("htextract", f"{gs}/thumb-@2.tgz", "-f", "cls", "--count", "5", *common))
    assert sorted(out.stdout.splitlines()) == [f"{n // 5}\t{c}" for c in range(5)]
    ok(run("htshuffle", f"{gs}/thumb-@2.tgz", f"{s3}/shuf-@3.tar", *common))
    rows = ok(run("htextract", f"{s3}/shuf-@3.tar", *common)).stdout.split()
    assert len(rows) == n and sorted(rows) != rows


def test_upload_maxsize_is_a_bound_on_file_size(tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    for i in range(30):
        (src / f"s{i:03d}.bin").write_bytes(bytes(1500))
    ok(run("htupload", src, tmp_path / "o" / "u-%03d.tar", "--maxsize", "12000", "--workers", "1",
           "-q"))
    outs = sorted((tmp_path / "o").glob("u-*.tar"))
    assert all(p.stat().st_size <= 12000 for p in outs)
    assert sum(len(read_wds([p])) for p in outs) == 30


def test_reshard_one_big_tar_reads_each_byte_about_once(tmp_path):
    import webdataset as wds

    src = tmp_path / "big.tar"
    samples = {}
    with wds.TarWriter(str(src)) as w:
        for i in range(100):
            samples[f"k{i:03d}"] = {"__key__": f"k{i:03d}", "bin": bytes([i]) * (200 << 10)}
            w.write(samples[f"k{i:03d}"])
    summary = tmp_path / "s.json"
    ok(run("htupload", src, tmp_path / "o" / "r-@20.tar", "--workers", "2", "-q",
           "--summary", summary))
    got = read_wds(sorted((tmp_path / "o").glob("r-*.tar")))
    assert [s["__key__"] for s in got] == list(samples) and all(s == samples[s["__key__"]] for s in got)
    # each copy task range-reads its own samples (plus read-ahead), not the file's prefix:
    # reading prefixes would be ~10x the file
    assert json.loads(summary.read_text())["bytes_in"] < 3 * src.stat().st_size


def test_upload_list_file_keys(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes(b"A")
    (tmp_path / ".h").mkdir()
    (tmp_path / ".h" / "b.txt").write_bytes(b"B")
    lst = tmp_path / "files.txt"
    lst.write_text("./d/a.txt\n.h/b.txt\n")
    ok(run("htupload", lst, tmp_path / "o.tar", "--workers", "1", "-q"))
    assert read_wds([tmp_path / "o.tar"]) == [{"__key__": ".h/b", "txt": b"B"},
                                             {"__key__": "d/a", "txt": b"A"}]
    lst.write_text("../escape.txt\n")
    p = run("htupload", lst, tmp_path / "o2.tar", "--workers", "1")
    assert p.returncode == 1 and "climbs out with '..'" in p.stderr
