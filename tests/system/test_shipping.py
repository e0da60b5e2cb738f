"""Shipping a script's modules once per job (htools.usercode.shipping): a job's tasks
carry the Script without its modules, whatever else runs; two jobs of the same script
at once in one client each keep their own plugin."""

from __future__ import annotations

import pickle
import threading

import pytest

from htools.errors import ScriptLoadError
from htools.usercode import script as script_module
from htools.usercode.script import Script
from htools.usercode.shipping import Shipment
from htools.usercode.workerplugin import ScriptModules

BIG = "X = 1\n" + "# padding\n" * 100_000  # a 1 MB sibling module


def padded() -> Script:
    return Script.from_source("import padded_mod\nV = padded_mod.X + 1\n", "p.py",
                              modules=(("padded_mod.py", BIG),))


class FakeClient:
    def __init__(self):
        self.plugins: dict[str, ScriptModules] = {}

    def register_plugin(self, plugin, name):
        self.plugins[name] = plugin
        plugin.setup(None)

    def unregister_worker_plugin(self, name):
        self.plugins.pop(name).teardown(None)


def test_a_jobs_tasks_carry_the_script_without_its_modules():
    s = padded()
    ship = Shipment(s)
    assert len(pickle.dumps(s)) > 1_000_000  # the Script itself keeps them, always
    light = pickle.dumps(ship.script)
    assert len(light) < 1_000
    copy = pickle.loads(light)
    assert copy.modules == () and copy.digest == s.digest and copy.shipped == ship.name
    with pytest.raises(ScriptLoadError, match="p.py: the modules shipped with it did not "
                                               "reach this worker"):
        copy.load()
    with ship.registered(FakeClient()):
        assert copy.load().V == 2
    assert ship.name not in script_module._received


def test_nothing_to_ship_without_modules():
    s = Script.from_source("def process_sample(x):\n    return x\n", "plain.py")
    ship = Shipment(s)
    assert ship.script is s and ship.name == ""
    client = FakeClient()
    with ship.registered(client):
        assert client.plugins == {}


def test_two_jobs_of_one_script_keep_their_own_plugins():
    s = padded()
    first, second = Shipment(s), Shipment(s)
    assert first.name != second.name
    client = FakeClient()
    with second.registered(client):
        with first.registered(client):
            assert set(client.plugins) == {first.name, second.name}
        assert set(client.plugins) == {second.name}  # the first job left the second's
        assert pickle.loads(pickle.dumps(second.script)).load().V == 2


def test_two_jobs_with_the_same_script_at_once_in_one_client(tmp_path):
    """Two htmapper jobs of one script (its sibling module 1 MB) run at the same time in
    one in-process client: both succeed through their plugins, and both plugins are gone
    after (the shorter job ending first does not take the longer job's modules away)."""
    from distributed import Client, LocalCluster
    from helpers import make_shards, read_wds

    import htools

    make_shards(tmp_path / "in", shards=8, per_shard=3)
    code = tmp_path / "code"
    code.mkdir()
    (code / "padded_mod.py").write_text("TAG = b'padded'\n" + "# padding\n" * 100_000)
    (code / "tag.py").write_text("import time\n\nimport padded_mod\n"
                                 "from htools.usercode import script\n\n"
                                 "def process_sample(s):\n"
                                 "    time.sleep(0.02)\n"
                                 "    via = b'plugin' if script._received else b'args'\n"
                                 "    return {**s, 'tag': padded_mod.TAG, 'via': via}\n")
    summaries: dict[str, object] = {}

    def job(name: str, pattern: str, n: int) -> None:
        summaries[name] = htools.map_shards(str(tmp_path / "in" / pattern),
                                            str(tmp_path / name / f"o-@{n}.tar"),
                                            str(code / "tag.py"), client=client, quiet=True)

    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False,
                      dashboard_address="127.0.0.1:0", silence_logs=40) as cluster, \
            Client(cluster) as client:
        threads = [threading.Thread(target=job, args=("long", "data-@8.tar", 8)),
                   threading.Thread(target=job, args=("short", "data-{0..1}.tar", 2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
    for name, shards in (("long", 8), ("short", 2)):
        assert summaries[name].ok, summaries[name].failures
        got = read_wds(sorted((tmp_path / name).glob("o-*.tar")))
        assert len(got) == 3 * shards and {x["tag"] for x in got} == {b"padded"}
        assert {x["via"] for x in got} == {b"plugin"}
    assert not any(n.startswith("htools-modules-") for names in plugins.values() for n in names)
