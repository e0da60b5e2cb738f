"""htools.usercode.script and htools.mapper's handling of what a script returns, on their own:
checking a script before any task runs, executing it (and its init()) once per process,
errors that name the file with tracebacks of the user's frames only, and how outputs
get their keys."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from htools.errors import ScriptError
from htools.usercode.apply import outputs_of
from htools.usercode.script import Script, user_traceback

FILE_HERE = Path(__file__).name


def unique(source: str) -> str:
    """A source no other test has loaded (scripts are cached per process by content);
    its one added line on top shifts the line numbers of ``source`` by one."""
    return f"# {uuid.uuid4().hex}\n{source}"


# ------------------------------------------------------------------ checking --

def test_from_source_checks_required_functions():
    src = "import numpy as np\nRATE = 3\n\ndef process_sample(s):\n    return s\n"
    s = Script.from_source(src, "ok.py", require=("process_sample",))
    assert s.source == src and s.filename == "ok.py" and len(s.digest) == 16
    assert s.defines("process_sample") and s.defines("RATE") and s.defines("np")
    assert not s.defines("init")
    with pytest.raises(ScriptError) as info:
        Script.from_source(src, "ok.py", require=("process_sample", "sort_key", "reduce_samples"))
    message = str(info.value)
    assert message == "script ok.py does not define sort_key(), reduce_samples()"
    assert "process_sample" not in message


def test_one_of():
    src = "def reduce_samples(key, samples):\n    return samples\n"
    assert Script.from_source(src, "r.py", one_of=("sort_key", "reduce_samples")).defines(
        "reduce_samples")
    with pytest.raises(ScriptError, match=r"script r\.py defines none of process_sample\(\), "
                                          r"sort_key\(\)"):
        Script.from_source(src, "r.py", one_of=("process_sample", "sort_key"))


def test_names_bound_by_assignment_and_classes_count():
    src = "process_sample = lambda s: s\nclass sort_key:\n    pass\n"
    s = Script.from_source(src, require=("process_sample", "sort_key"))
    assert s.filename == "<script>"


def test_syntax_error_names_file_and_line():
    src = "def process_sample(s):\n    return s\n\ndef broken(:\n    pass\n"
    with pytest.raises(ScriptError) as info:
        Script.from_source(src, "bad.py", require=("process_sample",))
    message = str(info.value)
    assert message.startswith("script bad.py has a syntax error at line 4")
    assert "\n" not in message


def test_digest_follows_the_source():
    a = Script.from_source("x = 1\n")
    assert a.digest == Script.from_source("x = 1\n").digest
    assert a.digest != Script.from_source("x = 2\n").digest


def test_from_path(tmp_path):
    path = tmp_path / "my_script.py"
    path.write_text("def process_sample(s):\n    return None\n", encoding="utf-8")
    s = Script.from_path(path, require=("process_sample",))
    assert s.filename == "my_script.py"  # no folder: workers may not share it
    assert s == Script.from_path(str(path))
    with pytest.raises(ScriptError, match="my_script.py does not define init"):
        Script.from_path(path, require=("init",))
    with pytest.raises(ScriptError, match=r"cannot read script .*nope\.py"):
        Script.from_path(tmp_path / "nope.py")


# ------------------------------------------------------------------- loading --

COUNTS = """
import os
with open({log!r}, "a") as f:
    f.write("module\\n")

def init():
    with open({log!r}, "a") as f:
        f.write("init\\n")

def process_sample(sample):
    return {{"out": sample["x"] * 2}}
"""


def test_load_executes_once_per_process_and_runs_init_once(tmp_path):
    log = tmp_path / "log"
    src = unique(COUNTS.format(log=str(log)))
    first = Script.from_source(src, "counts.py").load()
    again = Script.from_source(src, "counts.py").load()  # a fresh Script, same source
    assert again is first and Script.from_source(src, "counts.py").load() is first
    assert log.read_text().splitlines() == ["module", "init"]
    assert first.process_sample({"x": b"ab"}) == {"out": b"abab"}


def test_a_script_without_init_loads():
    mod = Script.from_source(unique("def process_sample(s):\n    return s\n"), "plain.py").load()
    assert mod.process_sample({"a": 1}) == {"a": 1}


RAISES_AT_IMPORT = """
def helper():
    return 1 / 0

VALUE = helper()
"""


def test_a_script_raising_at_import_names_the_file_and_its_own_lines():
    s = Script.from_source(unique(RAISES_AT_IMPORT), "divides.py")
    with pytest.raises(ScriptError) as info:
        s.load()
    message = str(info.value)
    assert message.startswith("script divides.py failed to load: "
                              "ZeroDivisionError: division by zero")
    assert 'File "<htools script divides.py>", line 6, in <module>' in message
    assert 'File "<htools script divides.py>", line 4, in helper' in message
    assert "return 1 / 0" in message  # the user's source line is shown
    assert "script.py" not in message.replace("divides.py", "")  # no htools frames
    with pytest.raises(ScriptError, match="failed to load"):
        s.load()  # not cached as loaded: every task that tries reports it


def test_init_raising_is_a_script_error():
    src = unique("def init():\n    raise RuntimeError('no model file')\n")
    with pytest.raises(ScriptError, match=r"script model\.py failed to load: "
                                          r"RuntimeError: no model file"):
        Script.from_source(src, "model.py").load()


USER_CODE = """
def process_sample(sample):
    return check(sample)

def check(sample):
    raise ValueError("bad sample " + sample["__key__"])
"""


def call_user(fn, sample):
    """A frame of ours between the caller and the user's code, as in a task."""
    return fn(sample)


def test_user_traceback_shows_only_the_users_frames():
    mod = Script.from_source(unique(USER_CODE), "user.py").load()
    with pytest.raises(ValueError) as info:
        call_user(mod.process_sample, {"__key__": "k7"})
    tb = user_traceback(info.value)
    lines = tb.splitlines()
    assert lines[0] == '  File "<htools script user.py>", line 4, in process_sample'
    assert '  File "<htools script user.py>", line 7, in check' in lines
    assert lines[-1] == "ValueError: bad sample k7"
    assert FILE_HERE not in tb and "call_user" not in tb


def test_user_traceback_of_an_error_outside_user_code_is_just_the_error():
    try:
        {}["missing"]
    except KeyError as e:
        assert user_traceback(e) == "KeyError: 'missing'"


# ------------------------------------------------------ what process_sample returns --

def test_none_drops_and_a_dict_keeps_the_input_key():
    assert outputs_of(None, "a/k1", True) == []
    assert outputs_of({"jpg": b"x"}, "a/k1", True) == [{"__key__": "a/k1", "jpg": b"x"}]
    # the script saw `key` (an alias of __key__) and handed it back unchanged
    assert outputs_of({"key": "a/k1", "jpg": b"x"}, "a/k1", True) == [
        {"__key__": "a/k1", "jpg": b"x"}]


def test_a_list_gives_suffixed_keys_unless_named():
    assert outputs_of([{"jpg": b"1"}, {"jpg": b"2"}], "k", True) == [
        {"__key__": "k-0", "jpg": b"1"}, {"__key__": "k-1", "jpg": b"2"}]
    assert outputs_of([{"jpg": b"1"}], "k", True) == [{"__key__": "k", "jpg": b"1"}]
    assert outputs_of([{"jpg": b"1"}, {"__key__": "other", "jpg": b"2"}], "k", True) == [
        {"__key__": "k-0", "jpg": b"1"}, {"__key__": "other", "jpg": b"2"}]
    assert outputs_of(({"jpg": bytes([i])} for i in range(3)), "k", True)[2]["__key__"] == "k-2"
    assert outputs_of([], "k", True) == []


def test_a_changed_key_renames_the_sample():
    assert outputs_of({"__key__": "new", "x": b"1"}, "old", True) == [{"__key__": "new", "x": b"1"}]
    assert outputs_of({"key": "new", "x": b"1"}, "old", True) == [{"__key__": "new", "x": b"1"}]
    assert outputs_of({"key": b"new", "x": b"1"}, "old", True) == [{"__key__": "new", "x": b"1"}]
    assert outputs_of({"__key__": b"n\xc3\xa9", "x": b"1"}, "old", True)[0]["__key__"] == "né"
    # both given, one of them unchanged (or both changed alike): the changed one wins
    for both in ({"__key__": "old", "key": "new"}, {"__key__": "new", "key": "old"},
                 {"__key__": "new", "key": "new"}):
        assert outputs_of({**both, "x": b"1"}, "old", True) == [{"__key__": "new", "x": b"1"}]


def test_both_keys_changed_differently_is_an_error():
    with pytest.raises(ScriptError, match=r"__key__ 'one' and key 'two'; give one of them"):
        outputs_of({"__key__": "one", "key": "two", "x": b"1"}, "old", True)


def test_a_real_key_field_is_data_not_the_key():
    """When the input had a field named `key`, the script did not see an alias."""
    assert outputs_of({"key": b"field value", "x": b"1"}, "k", False) == [
        {"__key__": "k", "key": b"field value", "x": b"1"}]


def test_outputs_drop_url_and_outputs_with_nothing_to_write():
    assert outputs_of({"__url__": "in.tar", "x": b"1"}, "k", True) == [{"__key__": "k", "x": b"1"}]
    assert outputs_of({"_note": b"internal"}, "k", True) == []
    assert outputs_of({"__key__": "k2"}, "k", True) == []
    got = outputs_of([{"_only": 1}, {"x": b"2"}], "k", True)
    assert got == [{"__key__": "k-1", "x": b"2"}]  # numbered by position in the list


def test_the_scripts_dict_is_not_changed():
    out = {"key": "new", "x": b"1"}
    outputs_of(out, "old", True)
    assert out == {"key": "new", "x": b"1"}


@pytest.mark.parametrize("value,what", [("text", "returned str"), (b"raw", "returned bytes"),
                                        (7, "returned int"), ([{"x": b"1"}, 3], "holding int")])
def test_other_return_types_are_script_errors(value, what):
    with pytest.raises(ScriptError, match=what):
        outputs_of(value, "k", True)
