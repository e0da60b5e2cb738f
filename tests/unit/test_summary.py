"""htools.summary on its own: a shard's counts and a job's add up (every sample read is
mapped, dropped or failed), skipped and failed shards are counted apart, the lists of
errors stay capped, and nothing a user sees (JSON, the summary line) shows credentials."""

from __future__ import annotations

import json

import pytest

from htools.errors import HtoolsError
from htools.summary import MAX_LISTED_ERRORS, MAX_LISTED_FAILURES, JobSummary, ShardResult

SECRET_URL = "s3://alice:s3cret@bucket/in-0.tar"


def adds_up(r) -> bool:
    """The invariant of a shard (a ShardResult) or of a job (its summary dict)."""
    d = r if isinstance(r, dict) else r.__dict__
    return d["samples_read"] == d["samples_mapped"] + d["samples_dropped"] + d["samples_failed"] \
        + d["samples_merged"] + d["samples_reduced"]


def shard(read: int, mapped: int, dropped: int, written: int | None = None, *,
          name: str = "in-0.tar", **kw) -> ShardResult:
    r = ShardResult(input=name, output="out-" + name, samples_read=read, samples_mapped=mapped,
                    samples_dropped=dropped, samples_written=mapped if written is None else written,
                    bytes_in=100 * read, bytes_out=90 * mapped, **kw)
    return r


def boom(n: int = 0) -> ValueError:
    return ValueError(f"bad value {n}")


# ------------------------------------------------------------------ one shard --

def test_sample_errors_within_the_budget_are_counted_and_listed():
    r = shard(read=10, mapped=6, dropped=2, max_errors=2)
    r.sample_error("in-0.tar", "k1", "process_sample raised", boom(1), "tb one")
    r.sample_error("in-0.tar", "k2", "process_sample raised", boom(2))
    assert (r.samples_failed, r.sample_errors, r.status) == (2, 2, "ok")
    assert adds_up(r)
    assert r.errors == [
        {"url": "in-0.tar", "key": "k1", "error": "ValueError: bad value 1", "traceback": "tb one"},
        {"url": "in-0.tar", "key": "k2", "error": "ValueError: bad value 2", "traceback": ""}]


def test_a_sample_error_past_the_budget_fails_the_shard_naming_url_and_key():
    r = shard(read=3, mapped=1, dropped=0, max_errors=1)
    r.sample_error(SECRET_URL, "k1", "process_sample raised", boom(1))
    with pytest.raises(HtoolsError) as info:
        r.sample_error(SECRET_URL, "k2", "process_sample raised", boom(2), "  File x, line 3")
    message = str(info.value)
    assert "s3://bucket/in-0.tar" in message and "s3cret" not in message
    assert "process_sample raised on key 'k2': ValueError: bad value 2" in message
    assert message.endswith("File x, line 3")
    assert r.sample_errors == 2 and r.samples_failed == 2  # the one over the budget counts too


def test_no_budget_means_the_first_sample_error_fails():
    r = shard(read=1, mapped=0, dropped=0)
    with pytest.raises(HtoolsError):
        r.sample_error("u.tar", "k", "reduce_samples raised", boom())


def test_a_reduce_group_counts_all_its_records():
    r = shard(read=9, mapped=4, dropped=0, max_errors=5)
    r.sample_error("o.tar", "grp", "reduce_samples raised", boom(), samples=5)
    assert (r.samples_failed, r.sample_errors) == (5, 1) and adds_up(r)


def test_listed_sample_errors_are_capped_but_all_counted():
    n = MAX_LISTED_ERRORS + 25
    r = shard(read=n, mapped=0, dropped=0, max_errors=n)
    for i in range(n):
        r.sample_error("in-0.tar", f"k{i}", "process_sample raised", boom(i))
    assert r.sample_errors == n and r.samples_failed == n and adds_up(r)
    assert len(r.errors) == MAX_LISTED_ERRORS
    assert r.errors[-1]["key"] == f"k{MAX_LISTED_ERRORS - 1}"  # the first ones are kept


def test_a_failed_shard_writes_nothing_and_every_sample_read_is_failed():
    r = shard(read=10, mapped=5, dropped=2, written=7, max_errors=3)
    r.sample_error("in-0.tar", "k9", "process_sample raised", boom())
    r.fail("in-0.tar: truncated tar", "Traceback ...")
    assert r.status == "failed" and r.error == "in-0.tar: truncated tar"
    assert r.traceback == "Traceback ..."
    assert (r.samples_mapped, r.samples_written, r.bytes_out) == (0, 0, 0)
    assert r.samples_dropped == 2 and r.samples_failed == 8 and adds_up(r)
    assert r.bytes_in == 1000  # what was read stays counted


def test_shard_as_dict_hides_credentials_everywhere():
    r = ShardResult(input=[SECRET_URL, "http://u:pw@host/b.tar"],
                    output="gs://bob:hunter2@b/out.tar", samples_read=2, max_errors=5)
    r.sample_error(SECRET_URL, "k", "process_sample raised",
                   ValueError("cannot open s3://alice:s3cret@bucket/x"))
    r.fail(f"{SECRET_URL}: gone")
    d = r.as_dict()
    text = json.dumps(d)
    for secret in ("s3cret", "alice", "pw@", "hunter2"):
        assert secret not in text, secret
    assert d["input"] == ["s3://bucket/in-0.tar", "http://host/b.tar"]
    assert d["output"] == "gs://b/out.tar"
    assert d["errors"][0]["url"] == "s3://bucket/in-0.tar"
    assert "max_errors" not in d  # a task's budget is not part of its result
    assert ShardResult(input=SECRET_URL).as_dict()["input"] == "s3://bucket/in-0.tar"


# ----------------------------------------------------------------------- a job --

def job_of(results: list[ShardResult], total: int | None = None) -> JobSummary:
    s = JobSummary("htmapper", shards_total=len(results) if total is None else total)
    for r in results:
        s.add(r.as_dict())
    return s.finish()


def test_job_counts_add_up_over_done_skipped_and_failed_shards():
    done = shard(read=10, mapped=7, dropped=3, written=12, name="a.tar")  # 7 mapped gave 12
    with_errors = shard(read=5, mapped=3, dropped=1, name="b.tar", max_errors=1)
    with_errors.sample_error("b.tar", "kb", "process_sample raised", boom())
    failed = shard(read=4, mapped=2, dropped=1, name="c.tar")
    failed.fail("c.tar: truncated")
    skipped = ShardResult(input="d.tar", output="out-d.tar", status="skipped")
    s = job_of([done, with_errors, failed, skipped])
    assert (s.shards_total, s.shards_done, s.shards_skipped, s.shards_failed) == (4, 2, 1, 1)
    assert s.samples_read == 19 and s.samples_written == 12 + 3
    assert s.samples_dropped == 3 + 1 + 1 and s.samples_failed == 1 + 3
    assert s.samples_mapped == 7 + 3 and s.sample_errors == 1
    assert s.samples_read == s.samples_mapped + s.samples_dropped + s.samples_failed
    assert s.bytes_in == 1900 and s.bytes_out == 90 * (7 + 3)
    assert not s.ok
    assert s.failures == [{"input": "c.tar", "output": "out-c.tar", "error": "c.tar: truncated",
                           "traceback": ""}]
    assert [e["key"] for e in s.errors] == ["kb"]


def test_skipped_shards_count_no_samples():
    skipped = ShardResult(input="a.tar", output="o.tar", status="skipped", samples_read=99)
    s = job_of([skipped, shard(read=2, mapped=2, dropped=0)])
    assert s.ok and (s.shards_done, s.shards_skipped) == (1, 1) and s.samples_read == 2


def test_ok_needs_every_shard_accounted_for():
    assert job_of([shard(read=1, mapped=1, dropped=0)]).ok
    assert not job_of([shard(read=1, mapped=1, dropped=0)], total=2).ok  # a result is missing
    assert job_of([], total=0).ok


def test_listed_sample_errors_are_capped_across_shards():
    results = []
    for i in range(3):
        r = shard(read=MAX_LISTED_ERRORS // 2 + 1, mapped=0, dropped=0, name=f"s{i}.tar",
                  max_errors=MAX_LISTED_ERRORS)
        for j in range(r.samples_read):
            r.sample_error(r.input, f"{i}/{j}", "process_sample raised", boom())
        results.append(r)
    s = job_of(results)
    assert len(s.errors) == MAX_LISTED_ERRORS  # the first ones, in order
    assert s.errors[0]["key"] == "0/0" and s.errors[-1]["key"].startswith("1/")
    assert s.sample_errors == s.samples_failed == 3 * (MAX_LISTED_ERRORS // 2 + 1)


def test_listed_failed_shards_are_capped_but_all_counted():
    results = []
    for i in range(MAX_LISTED_FAILURES + 3):
        r = shard(read=2, mapped=1, dropped=1, name=f"s{i}.tar")
        r.fail(f"s{i}.tar: broken")
        results.append(r)
    s = job_of(results + [shard(read=1, mapped=1, dropped=0)])
    assert s.shards_failed == MAX_LISTED_FAILURES + 3 and s.shards_done == 1
    assert len(s.failures) == MAX_LISTED_FAILURES
    assert s.failures[0]["error"] == "s0.tar: broken"
    assert s.samples_failed == MAX_LISTED_FAILURES + 3
    assert s.samples_read == s.samples_mapped + s.samples_dropped + s.samples_failed


def test_summary_line():
    ok = job_of([shard(read=1000, mapped=900, dropped=100, written=1800)])
    ok.seconds, ok.bytes_in, ok.bytes_out = 2.0, 3_500_000, 12_000_000
    assert ok.line() == ("htmapper: ok; shards 1 done, 0 skipped, 0 failed of 1; "
                         "samples 1000 read, 1800 written, 100 dropped, 0 failed; "
                         "3.5 MB in, 12.0 MB out; 2.0s")
    failed = shard(read=3, mapped=3, dropped=0)
    failed.fail("x")
    line = job_of([failed, ShardResult(status="skipped")], total=3).line()
    assert line.startswith("htmapper: FAILED; shards 0 done, 1 skipped, 1 failed of 3; "
                           "samples 3 read, 0 written, 0 dropped, 3 failed")


def test_as_dict_and_write_json(tmp_path):
    failed = ShardResult(input=SECRET_URL, output="s3://alice:s3cret@bucket/o.tar", samples_read=1)
    failed.fail(f"{SECRET_URL}: no such key")
    s = job_of([failed, shard(read=2, mapped=1, dropped=1)])
    s.extra["peak_rss"] = 123
    d = s.as_dict()
    assert d["ok"] is False and "started" not in d and d["extra"] == {"peak_rss": 123}
    assert d["failures"][0]["input"] == "s3://bucket/in-0.tar"
    path = tmp_path / "summary.json"
    s.write_json(str(path))
    text = path.read_text()
    assert text.endswith("}\n") and "s3cret" not in text
    assert json.loads(text) == d
    assert d["samples_read"] == d["samples_mapped"] + d["samples_dropped"] + d["samples_failed"]


def test_finish_records_the_elapsed_time():
    s = JobSummary("htsort")
    s.started -= 1.5
    assert s.finish() is s and 1.5 <= s.seconds < 60


def test_written_entries_are_kept_compact_and_come_back_equal():
    from htools.summary import JobSummary, Written

    entries = [{"output": f"/d/o-{i}.tar", "nsamples": i, "filesize": 10240 * i,
                "sha256": f"{i:064x}", "fields": {"jpg": i, "cls": i}} for i in range(5)]
    entries.append({"output": "/d/odd.tar", "nsamples": 0, "filesize": 0, "sha256": "not-hex",
                    "fields": {}})
    w = Written(entries)
    assert list(w) == entries and len(w) == 6 and w == entries
    assert list(w)[0]["fields"] == {"jpg": 0, "cls": 0}  # order kept
    assert len(w._names) == 2  # one shared tuple per set of field names
    s = JobSummary(tool="t")
    for e in entries[:2]:
        s.add({"status": "ok", "output": e["output"], "samples_written": e["nsamples"],
               "bytes_out": e["filesize"], "sha256": e["sha256"], "fields": e["fields"],
               "errors": [], **{c: 0 for c in ("samples_read", "samples_mapped",
                                              "samples_dropped", "samples_failed",
                                              "sample_errors", "bytes_in")}})
    assert list(s.written) == entries[:2] and "written" not in s.as_dict()


# ------------------------------------------- one job's summary from its stages --

def stage(tool: str, *results: ShardResult) -> JobSummary:
    s = JobSummary(tool, shards_total=len(results))
    for r in results:
        s.add(r.as_dict())
    return s


def failed_shard(name: str, read: int = 0) -> ShardResult:
    r = shard(read=read, mapped=read, dropped=0, name=name)
    r.fail(f"cannot read {name}")
    return r


def test_a_job_summary_from_its_reading_dedup_and_writing_stages():
    """Stage 1 reads 10 (1 failed sample), the dedup pass drops 2, the writes drop 1
    (reduce -> None) and lose 3 (a failed output): read = mapped + dropped + failed."""
    r1 = shard(read=10, mapped=9, dropped=0, written=0, max_errors=5)
    r1.sample_error("in-0.tar", "k", "process_sample raised", boom())
    read = stage("htsort-stage1", r1)
    read.retried({"input": "in-0.tar", "output": "", "attempts": 1, "error": "reset"})
    dedup = stage("htsort-dedup", shard(read=9, mapped=7, dropped=2, written=0, name="b0"))
    writes = stage("htsort", shard(read=4, mapped=3, dropped=1, name="o-0"),
                   failed_shard("o-1", read=3))
    job = JobSummary.of_reads("htsort", read)
    assert (job.samples_read, job.samples_mapped, job.sample_errors, job.bytes_in) == \
        (10, 9, 1, 1000)
    assert (job.shards_total, job.samples_written, job.shards_retried) == (0, 0, 1)
    for later in (dedup, writes):
        job.add_failures(later)
    job.dropped_later(dedup.samples_dropped)
    job.wrote(writes)
    assert (job.shards_total, job.shards_done, job.shards_failed) == (2, 1, 1)
    assert (job.samples_read, job.samples_written, job.samples_dropped) == (10, 3, 3)
    assert (job.samples_mapped, job.samples_failed) == (3, 4) and adds_up(job.as_dict())
    assert job.failures[0]["error"] == "cannot read o-1" and job.written == writes.written
    assert job.failure_kinds == {"cannot read {shard}": 1}


def test_nothing_written_fails_every_output_and_loses_what_was_read():
    job = JobSummary.of_reads("htshuffle", stage("s1", shard(read=6, mapped=5, dropped=1),
                                                 failed_shard("in-1.tar", read=4)))
    assert job.failures and job.shards_total == 0
    job.nothing_written(3, "stage 1 failed (1 of 2 tasks): nothing was written")
    assert (job.shards_total, job.shards_failed, job.samples_mapped) == (3, 3, 0)
    assert (job.samples_failed, job.samples_dropped) == (9, 1) and adds_up(job.as_dict())
    assert job.notes == ["stage 1 failed (1 of 2 tasks): nothing was written"]
    assert not job.ok


def test_merge_levels_add_up_as_one_stage():
    first = stage("merge1", shard(read=0, mapped=0, dropped=0, name="r0"))
    second = stage("merge2", shard(read=0, mapped=0, dropped=0, name="r1"), failed_shard("r2"))
    second.retried({"input": "r1", "output": "", "attempts": 1, "error": "reset"})
    first.add_tasks(second)
    assert (first.shards_total, first.shards_done, first.shards_failed) == (3, 2, 1)
    assert (first.shards_retried, len(first.retries), len(first.failures)) == (1, 1, 1)
    assert first.failure_kinds == {"cannot read {shard}": 1} and not first.ok


def test_merged_and_reduced_move_out_of_mapped_and_show_when_any():
    """Stage 1 reads 30 (10 dropped); the writes join 4 into others (--merge) and fold 3
    (a reduce), and one output that had joined 2 fails: read = written + dropped +
    failed + merged + reduced, and the line names the merged and the reduced."""
    lost = shard(read=5, mapped=3, dropped=0, name="o-1", samples_merged=2)
    lost.fail("x")
    assert (lost.samples_failed, lost.samples_merged) == (5, 0) and adds_up(lost)
    writes = stage("htsort", shard(read=15, mapped=8, dropped=0, name="o-0", samples_merged=4,
                                   samples_reduced=3), lost)
    job = JobSummary.of_reads("htsort", stage("s1", shard(read=30, mapped=20, dropped=10)))
    job.wrote(writes)
    got = (job.samples_read, job.samples_written, job.samples_dropped, job.samples_failed,
           job.samples_merged, job.samples_reduced)
    assert got == (30, 8, 10, 5, 4, 3) and adds_up(job.as_dict())
    assert job.samples_mapped == job.samples_written
    assert "10 dropped, 5 failed, 4 merged, 3 reduced;" in job.line()
    assert "4 merged, 3 reduced" in job._repr_html_()
    assert "merged" not in job_of([shard(read=3, mapped=3, dropped=0)]).line()


def test_a_result_travels_compact_and_comes_back_whole():
    import pickle

    from htools.summary import compact, expand

    r = ShardResult(input="/d/in-1.tar", output="/d/out-1.tar", samples_read=3,
                    samples_mapped=3, samples_written=3, bytes_in=900, bytes_out=1024,
                    sha256="ab" * 32, fields={"jpg": 3}).as_dict()
    c = compact(r)
    assert c["status"] == "ok" and "errors" not in c and "samples_failed" not in c
    assert len(pickle.dumps(c)) < 0.75 * len(pickle.dumps(r))
    back = expand(c)
    assert back == r and list(back) == list(r)  # the same keys, in as_dict's order
    a, b = expand({"status": "ok"}), expand({"status": "ok"})
    a["extra"]["x"] = 1
    a["errors"].append({})
    assert b["extra"] == {} and b["errors"] == [] == ShardResult().as_dict()["errors"]
