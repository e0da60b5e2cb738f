"""What a new user hit in a day (issue 24), each done as the user did it and checked
against what the user should have seen: htextract's output footguns, a field nobody has,
typed Python rows, marked binary and missing values, help and docs, globs, the package
name, the shard index's figures and a long dry run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import make_shards, ok, read_wds, require_module, run

import htools

ROOT = Path(__file__).resolve().parents[2]  # the repository
W1 = ("--workers", "1")
TOOLS = ("htmapper", "htextract", "htshuffle", "htsort", "htupload")


@pytest.fixture
def src(tmp_path) -> str:
    make_shards(tmp_path / "src", shards=2, per_shard=3)
    return str(tmp_path / "src" / "data-@2.tar")


def errors(p) -> list[str]:
    return [ln for ln in p.stderr.splitlines() if not ln.startswith("htools: ") or "FAILED" in ln]


# ----------------------------------------------------------------- htextract -o --

def test_output_suffix_chooses_the_format(tmp_path, src):
    ok(run("htextract", src, "-f", "__key__,cls", "-o", tmp_path / "y.parquet", *W1))
    assert (tmp_path / "y.parquet").read_bytes()[:4] == b"PAR1"  # not TSV in a .parquet
    ok(run("htextract", src, "-f", "__key__,cls", "-o", tmp_path / "m-@2.parquet", *W1))
    assert sorted(p.name for p in tmp_path.glob("m-*")) == ["m-0.parquet", "m-1.parquet"]
    ok(run("htextract", src, "-f", "__key__,cls", "-o", tmp_path / "r.json", *W1))
    rows = [json.loads(x) for x in (tmp_path / "r.json").read_text().splitlines()]
    assert rows[0] == {"__key__": "s0/k0000", "cls": "0"}
    p = run("htextract", src, "-f", "cls", "-o", tmp_path / "r.tsv", "--format", "jsonl", *W1)
    assert p.returncode == 1 and not (tmp_path / "r.tsv").exists()
    assert errors(p) == ["Error: -o " + str(tmp_path / "r.tsv") + ": a .tsv file holds tsv, "
                         "not --format jsonl: drop --format or change the suffix"]


def test_text_output_is_atomic_refused_when_present_and_resumable(tmp_path, src):
    out = tmp_path / "new" / "folder" / "rows.tsv"
    ok(run("htextract", src, "-f", "__key__,cls", "-o", out, *W1))  # its folder made
    first = out.read_text()
    assert first.splitlines()[0] == "s0/k0000\t0" and len(first.splitlines()) == 6
    p = run("htextract", src, "-f", "__key__", "-o", out, *W1)
    assert p.returncode == 1 and "already exist" in p.stderr and out.read_text() == first
    p = ok(run("htextract", src, "-f", "__key__", "-o", out, "--resume", *W1))
    assert "exists (--resume): skipped" in p.stderr and out.read_text() == first
    p = run("htextract", src, "-f", "__key__", "--resume", *W1)  # stdout cannot resume
    assert p.returncode == 1 and len(errors(p)) == 1 and "--resume" in p.stderr
    bad = tmp_path / "src" / "data-1.tar"
    bad.write_bytes(bad.read_bytes()[:3000])  # a truncated second shard
    p = run("htextract", src, "-f", "__key__", "-o", tmp_path / "b" / "rows.jsonl", *W1)
    assert p.returncode == 1 and "not written" in p.stderr
    assert list((tmp_path / "b").iterdir()) == []  # no partial file, no temp file


def test_index_refuses_to_overwrite_and_counts_its_own_bytes(tmp_path, src):
    index = tmp_path / "data.index.json"
    ok(run("htextract", src, "--index", index, "--summary", tmp_path / "s.json", *W1))
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["bytes_out"] == index.stat().st_size < 4000  # not the shards' 7 MB
    before = index.read_bytes()
    p = run("htextract", src, "--index", index, *W1)
    assert p.returncode == 1 and "already exist" in p.stderr and index.read_bytes() == before
    ok(run("htextract", src, "--index", index, "--overwrite", *W1))


# ------------------------------------------------------- fields nobody has --

def test_a_field_no_sample_has_is_one_line(tmp_path, src):
    p = run("htextract", src, "-f", "__key__,json", "-o", tmp_path / "m.parquet", *W1)
    assert p.returncode == 1 and not (tmp_path / "m.parquet").exists()
    assert errors(p) == ["Error: no sample has the field json (the samples' fields: cls, jpg, "
                         "txt); --allow-missing writes it as empty"]
    p = ok(run("htextract", src, "-f", "__key__,json", "--allow-missing", *W1))
    assert p.stdout.splitlines()[0] == "s0/k0000\t" and "--allow-missing" in p.stderr


def test_shuffle_and_sort_refuse_an_absent_dedup_or_key_field_in_one_line(tmp_path, src):
    p = run("htshuffle", src, tmp_path / "o" / "s-@2.tar", "--dedup", "jpeg", *W1)
    assert p.returncode == 1 and not (tmp_path / "o").exists()
    assert errors(p) == [f"Error: --dedup jpeg: no sample of the first input shard "
                         f"({tmp_path / 'src' / 'data-0.tar'}) has it (its fields: cls, "
                         "jpg, txt)"]
    p = run("htsort", src, tmp_path / "o" / "s-@2.tar", "--key", "score", *W1)
    assert p.returncode == 1 and len(errors(p)) == 1 and "--key score" in p.stderr
    ok(run("htsort", src, tmp_path / "o" / "s-@2.tar", "--key", "cls", "--dedup", "jpg", *W1))


# ------------------------------------------------- values as the user sees them --

def test_python_extract_types_values_as_parquet_does(src):
    rows = htools.extract(src, fields="__key__,cls,txt,jpg", workers=1, quiet=True,
                          frame=False)
    assert rows[0]["__key__"] == "s0/k0000" and rows[1]["cls"] == 1  # int, not "1"
    assert rows[0]["txt"] == "caption 0 0 ü" and isinstance(rows[0]["jpg"], bytes)
    pd = require_module("pandas")
    frame = htools.extract(src, fields="cls,jpg", workers=1, quiet=True)
    assert isinstance(frame, pd.DataFrame) and str(frame["cls"].dtype) == "int64"


def test_binary_is_marked_and_count_marks_a_missing_field(tmp_path):
    wds = require_module("webdataset")
    (tmp_path / "in").mkdir()
    with wds.TarWriter(str(tmp_path / "in" / "a.tar")) as w:
        w.write({"__key__": "a", "bin": b"\x00\x01", "tag": b""})
        w.write({"__key__": "b", "bin": b"2"})
        w.write({"__key__": "c", "bin": b"\xff\xfe", "tag": b""})
    rows = ok(run("htextract", tmp_path / "in" / "a.tar", "-f", "__key__,bin", *W1)).stdout
    assert rows.splitlines() == ["a\t<binary: 2 bytes>", "b\t2", "c\t<binary: 2 bytes>"]
    counts = ok(run("htextract", tmp_path / "in" / "a.tar", "-f", "tag", "--count", "5",
                    *W1)).stdout
    assert counts.splitlines() == ["2\t", "1\t<missing>"]


# ---------------------------------------------------------------- help, docs --

def test_help_and_version_of_every_tool():
    for tool in TOOLS:
        assert re.fullmatch(rf"{tool} \(htools\) {re.escape(htools.__version__)}\n",
                            ok(run(tool, "--version")).stdout)
        assert "slurm://" in ok(run(tool, "--help")).stdout
    assert "htsort" not in ok(run("htshuffle", "--help")).stdout.split("Options:")[1]
    assert re.search(r"--key-type \[str\|int\|float\]\s+Compare", ok(run("htsort", "-h")).stdout)
    assert "--no-index" not in ok(run("htextract", "--help")).stdout


def test_maxsize_takes_a_size_like_memory(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.txt").write_text("x")
    p = ok(run("htupload", tmp_path / "photos", tmp_path / "o" / "p-%03d.tar", "--maxsize",
               "1M", "--dry-run", *W1))
    assert "p-000.tar" in p.stdout
    p = run("htupload", tmp_path / "photos", tmp_path / "o" / "p-%03d.tar", "--maxsize", "1k2")
    assert p.returncode == 2 and "is not a size like 512M" in p.stderr


def test_readme_wordcount_runs_as_written(tmp_path):
    line = next(ln for ln in (ROOT / "README.md").read_text().splitlines()
                if "wordcount.py" in ln and ln.startswith("htsort"))
    assert "-p examples/wordcount.py" in line  # shipped where the README says
    wds = require_module("webdataset")
    (tmp_path / "w").mkdir()
    for s in range(4):
        with wds.TarWriter(str(tmp_path / "w" / f"words-{s}.tar")) as w:
            for i in range(5):
                w.write({"__key__": f"{s}-{i}", "txt": f"The cat sat; the {s}".encode()})
    ok(run("htsort", "w/words-@4.tar", "w/counts-@2.tar", "-p",
           ROOT / "examples" / "wordcount.py", *W1, cwd=str(tmp_path)))
    counts = {s["__key__"]: int(s["count"])
              for s in read_wds(sorted((tmp_path / "w").glob("counts-*.tar")))}
    assert counts == {"the": 40, "cat": 20, "sat": 20, "0": 5, "1": 5, "2": 5, "3": 5}


def test_readme_examples_name_their_arguments_and_needs():
    readme = (ROOT / "README.md").read_text()
    assert "scripts/nginx-stop --root" in readme and "ImageMagick" in readme
    assert "pip install 'htools[" not in readme and "htools-wds" in readme


def test_distribution_name_is_not_the_other_projects():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^name = "htools-wds"', text, re.M)
    for command in ("htmapper", "htextract", "htshuffle", "htsort", "htupload"):
        assert re.search(rf'^{command} = "htools\.cli\.', text, re.M)  # names, import unchanged
    dockerfile = (ROOT / "k8s" / "Dockerfile").read_text()
    assert "htools.egg-info" not in dockerfile


# -------------------------------------------------------- globs, long dry runs --

def test_glob_inputs_are_listed_sorted_and_counted(tmp_path):
    make_shards(tmp_path / "crawl", shards=24, per_shard=1)
    p = ok(run("htextract", "crawl/*.tar", "--dry-run", *W1, cwd=str(tmp_path)))
    lines = p.stdout.splitlines()
    assert len(lines) <= 21 and "24 in all" in p.stdout  # summarised, with the count
    names = [Path(ln.split(" ")[0]).name for ln in lines if ln.startswith("/")]
    assert names[:3] == ["data-0.tar", "data-1.tar", "data-10.tar"]  # sorted by name
    keys = ok(run("htextract", "crawl/data-1*.tar", *W1, cwd=str(tmp_path))).stdout.split()
    assert keys == ["s1/k0000", *(f"s{i}/k0000" for i in range(10, 20))]
    p = run("htextract", "crawl/nope-*.tar", *W1, cwd=str(tmp_path))
    assert p.returncode == 1 and "matches no file" in p.stderr

