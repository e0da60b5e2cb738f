"""The client's index entries of a job's outputs (htools.written): spooled a chunk at a
time, given back equal and in order, found by output."""

from __future__ import annotations

import copy
import sys

from htools.written import CHUNK, Written


def entries(n: int) -> list[dict]:
    return [{"output": f"/d/out/o-{i:07d}.tar", "nsamples": i % 5, "filesize": 1536 + i,
             "sha256": f"{i:064x}", "fields": {"bin": i % 5, "score": i % 5}}
            for i in range(n)]


def test_full_chunks_go_to_the_spool_and_come_back_equal_in_order():
    es = entries(3 * CHUNK + 7)
    w = Written(es)
    assert len(w) == len(es) and w._spooled == 3 * CHUNK and len(w._rows) == 7
    assert list(w) == es and w == es
    assert w.entry(5) == es[5] and w.entry(2 * CHUNK + 1) == es[2 * CHUNK + 1]
    assert w.entry(len(es) - 1) == es[-1]
    held = sys.getsizeof(w._rows) + sum(sys.getsizeof(r) for r in w._rows)
    assert held < 100 * CHUNK  # only the last, partial chunk is held as rows
    assert copy.deepcopy(w) == es and repr(w) == f"Written({len(es)} entries)"


def test_each_output_is_found_in_any_order_and_missing_ones_are_marked():
    es = entries(2 * CHUNK + 3)
    w = Written(reversed(es))  # appended last to first, as results may arrive
    w.append({**es[10], "nsamples": 99})  # written again (a retry): its last entry counts
    outputs = [e["output"] for e in es] + ["/d/out/absent.tar", es[0]["output"]]
    at = w.order(outputs)
    assert [w.entry(i) for i in at[:len(es)] if i >= 0][:3] == es[:3]
    assert w.entry(at[10])["nsamples"] == 99
    assert at[len(es)] == -1 and at[-1] == at[0] >= 0  # absent; named twice: same entry
    assert all(w.entry(at[j]) == es[j] for j in range(len(es)) if j != 10)
