"""The batch pipeline alone (no cluster, no shard): how its threads hand samples to each
other -- in chunks, a batch split among the prepare threads -- with order, counts and
the look-ahead bound kept; and the common-case output that process_batch shares with
process_sample."""

from __future__ import annotations

import threading
import time

import pytest

from htools.errors import TooManyErrors
from htools.summary import ShardResult
from htools.usercode.apply import outputs_of, same_key_output
from htools.usercode.batches import AHEAD_BATCHES, BatchSpec, run_batches


class Namespace:
    def __init__(self, **fns):
        self.__dict__.update(fns)


def _samples(n: int, read: list[int] | None = None):
    for i in range(n):
        if read is not None:
            read[0] += 1
        yield {"__key__": f"k{i:04d}", "x": str(i).encode()}


def test_prepare_threads_take_a_chunk_of_a_batch_each():
    """Each prepare thread gets a run of consecutive samples (half a batch with two
    threads), not one sample at a time."""
    ran: list[tuple[int, str]] = []

    def prepare(sample):
        time.sleep(0.002)  # long enough that per-sample hand-offs would alternate threads
        ran.append((int(sample["__key__"][1:]), threading.current_thread().name))
        return sample

    out: list[str] = []
    run_batches(_samples(64), Namespace(process_batch=lambda s: s, prepare_sample=prepare),
                ShardResult(input="mem"), "mem", lambda s: out.append(s["__key__"]),
                BatchSpec(16, 2))
    assert out == [f"k{i:04d}" for i in range(64)]
    by_key = dict(ran)
    for start in range(0, 64, 8):  # chunks of 16 / 2 samples
        assert len({by_key[i] for i in range(start, start + 8)}) == 1, (start, ran)
    assert len(set(by_key.values())) == 2  # both threads worked


@pytest.mark.parametrize("size,threads", [(10, 1), (10, 2), (8, 3), (4, 8)])
def test_look_ahead_stays_about_two_batches_with_prepare_threads(size, threads):
    read = [0]
    ahead: list[int] = []

    def model(samples):
        time.sleep(0.01)
        ahead.append(read[0] - int(samples[-1]["__key__"][1:]) - 1)
        return samples

    run_batches(_samples(20 * size, read),
                Namespace(process_batch=model, prepare_sample=lambda s: s),
                ShardResult(input="mem"), "mem", lambda s: None, BatchSpec(size, threads))
    chunk, chunks = BatchSpec(size, threads).chunks(True)
    assert (chunks + 1) * chunk <= AHEAD_BATCHES * size + chunk
    assert max(ahead) <= AHEAD_BATCHES * size + chunk + 1, ahead


def test_errors_and_drops_inside_a_chunk_keep_order_and_counts():
    def prepare(sample):
        i = int(sample["__key__"][1:])
        if i % 7 == 3:
            raise ValueError(f"bad {i}")
        return None if i % 5 == 1 else sample

    out: list[str] = []
    result = ShardResult(input="mem", max_errors=100)
    run_batches(_samples(50), Namespace(process_batch=lambda s: s, prepare_sample=prepare),
                result, "mem", lambda s: out.append(s["__key__"]), BatchSpec(6, 2))
    failed = [i for i in range(50) if i % 7 == 3]
    dropped = [i for i in range(50) if i % 5 == 1 and i not in failed]
    assert out == [f"k{i:04d}" for i in range(50) if i not in failed and i not in dropped]
    assert result.samples_read == 50
    assert result.samples_failed == len(failed)
    assert result.samples_dropped == len(dropped)
    assert [e["key"] for e in result.errors] == [f"k{i:04d}" for i in failed]


def test_the_error_budget_stops_at_the_sample_that_spends_it():
    def prepare(sample):
        raise ValueError("no")

    result = ShardResult(input="mem", max_errors=2)
    with pytest.raises(TooManyErrors, match="k0002"):
        run_batches(_samples(40), Namespace(process_batch=lambda s: s, prepare_sample=prepare),
                    result, "mem", lambda s: None, BatchSpec(8, 2))
    assert result.samples_read == 3


@pytest.mark.parametrize("out,aliased", [
    ({"__key__": "a", "key": "a", "x": b"1", "__url__": "u"}, True),
    ({"x": b"1"}, True),
    ({"__key__": "a", "x": b"1", "key": b"k"}, False),  # a real field named key
    ({"__key__": "b", "x": b"1"}, True),  # renamed
    ({"key": "b", "x": b"1"}, True),  # renamed through the alias
    ({"__key__": "a", "_private": b"1"}, True),  # nothing to write
    ([{"x": b"1"}, {"x": b"2"}], True),  # several outputs
    (None, True),
])
def test_same_key_output_is_outputs_of_or_none(out, aliased):
    fast = same_key_output(dict(out) if isinstance(out, dict) else out, "a", aliased)
    general = outputs_of(out, "a", aliased)
    if fast is not None:
        assert [fast] == general
    else:
        assert len(general) != 1 or general[0]["__key__"] != "a"
