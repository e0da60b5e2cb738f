"""Kubernetes and containers, offline (no Kubernetes cluster and no Docker run here):
every manifest in k8s/ passes kubernetes-validate; the DaskCluster manifest and the
spec htools builds validate against the DaskCluster CRD shipped in the dask-kubernetes
wheel; `kubectl kustomize k8s/` renders; ``k8s://`` addresses parse; a missing kube
config, an unreachable API server and a missing dask-kubernetes are one-line errors;
nginx's Dockerfile, compose file and entrypoint (run here, without Docker) hang together."""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from fixtures.servers import free_port
from helpers import ENV, child_env, require_tool, run

from htools import storage
from htools.clusters import kube

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
K8S_VERSION = "1.32.0"  # matches the kubectl here; kubernetes-validate ships its schemas
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml")
                   if p.name not in ("kustomization.yaml", "kustomizeconfig.yaml"))
NGINX_K8S = {"PORT": "8080", "LISTEN": "0.0.0.0", "ROOT": "/data",
             "PREFIX": "/var/lib/htools-nginx", "BODYTMP": "/data/.nginx-body-temp",
             "USER": "user www-data www-data;", "AUTH": ""}


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in MANIFESTS for d in docs(p)]


# --------------------------------------------------------------------------- the CRD

def crd_schema() -> dict:
    import dask_kubernetes

    crds = (Path(dask_kubernetes.__file__).parent / "operator" / "deployment" / "helm" /
            "dask-kubernetes-operator" / "crds")
    crd = yaml.safe_load((crds / "daskcluster.yaml").read_text())
    assert crd["spec"]["names"]["kind"] == "DaskCluster"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    schema.setdefault("properties", {}).update({
        "apiVersion": {"type": "string", "enum": [f"{crd['spec']['group']}/v1"]},
        "kind": {"type": "string", "enum": ["DaskCluster"]},
        "metadata": {"type": "object"}})
    return structural(schema)


def structural(schema: Any) -> Any:
    """Kubernetes prunes fields a structural schema does not name: make that an error
    (additionalProperties: false), so a typo in a manifest fails here too."""
    if isinstance(schema, list):
        return [structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: structural(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if out.get("nullable"):
        t = out.get("type")
        if isinstance(t, str):
            out["type"] = [t, "null"]
    return out


@pytest.fixture(scope="module")
def daskcluster_validator() -> jsonschema.protocols.Validator:
    schema = crd_schema()
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def daskcluster_manifest() -> dict:
    (doc,) = [d for _, d in all_docs() if d["kind"] == "DaskCluster"]
    return doc


def containers(spec: dict) -> dict[str, dict]:
    s = spec["spec"]
    return {"scheduler": s["scheduler"]["spec"]["containers"][0],
            "worker": s["worker"]["spec"]["containers"][0]}


# --------------------------------------------------------------------------- manifests

@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_manifests_validate(path, daskcluster_validator):
    for doc in docs(path):
        if doc.get("kind") == "DaskCluster":
            daskcluster_validator.validate(doc)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_crd_validation_catches_mistakes(daskcluster_validator):
    good = daskcluster_manifest()
    daskcluster_validator.validate(good)
    typo = copy.deepcopy(good)
    typo["spec"]["worker"]["replica"] = typo["spec"]["worker"].pop("replicas")
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["worker"]["replicas"] = "two"
    no_scheduler = copy.deepcopy(good)
    del no_scheduler["spec"]["scheduler"]
    for bad in (typo, wrong_type, no_scheduler):
        with pytest.raises(jsonschema.ValidationError):
            daskcluster_validator.validate(bad)


def test_cluster_spec_validates_and_uses_dask_commands(daskcluster_validator):
    spec = kube.cluster_spec("demo", "registry.example/htools:1", 5, threads=2,
                             env={"EXTRA": "1"})
    daskcluster_validator.validate(spec)
    assert spec["metadata"]["name"] == "demo"
    assert spec["spec"]["worker"]["replicas"] == 5
    c = containers(spec)
    assert c["scheduler"]["args"][:2] == ["dask", "scheduler"]
    assert c["worker"]["args"][:2] == ["dask", "worker"]
    assert c["worker"]["args"][-2:] == ["--nthreads", "2"]
    for container in c.values():
        assert container["image"] == "registry.example/htools:1"
        assert not any(a.startswith("dask-") for a in container["args"])
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env == {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "EXTRA": "1"}


def test_manifest_matches_what_htools_creates():
    manifest = containers(daskcluster_manifest())
    built = containers(kube.cluster_spec("htools", "htools", 2))
    for role in ("scheduler", "worker"):
        assert manifest[role]["args"] == built[role]["args"]
        assert manifest[role]["env"] == built[role]["env"]
        assert manifest[role]["ports"] == built[role]["ports"]
    assert manifest["scheduler"]["args"][:2] == ["dask", "scheduler"]
    assert manifest["worker"]["args"][:2] == ["dask", "worker"]


def test_cluster_spec_default_image(monkeypatch):
    monkeypatch.delenv(kube.IMAGE_ENV, raising=False)
    assert containers(kube.cluster_spec("a"))["worker"]["image"] == kube.DEFAULT_IMAGE
    monkeypatch.setenv(kube.IMAGE_ENV, "mine:2")
    assert containers(kube.cluster_spec("a"))["worker"]["image"] == "mine:2"


def test_job_talks_to_the_scheduler_service_and_nginx():
    (job,) = [d for _, d in all_docs() if d["kind"] == "Job"]
    (svc,) = [d for _, d in all_docs() if d["kind"] == "Service"]
    cluster = daskcluster_manifest()["metadata"]["name"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    port = svc["spec"]["ports"][0]["port"]
    assert env["SCHEDULER"] == f"{cluster}-scheduler:8786"  # the operator's Service name
    assert env["STORE"].startswith(f"http://{svc['metadata']['name']}:{port}/")
    script = container["args"][0]
    assert re.search(r'htmapper -c "\$SCHEDULER"', script)
    assert "/opt/htools/examples/thumbnails.py" in script


# --------------------------------------------------------------------------- kustomize

@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    out = subprocess.run([require_tool("kubectl"), "kustomize", str(K8S)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_kustomize_renders(rendered, daskcluster_validator):
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == ["ConfigMap", "DaskCluster", "Deployment", "Job", "PersistentVolumeClaim",
                     "Service"]
    for doc in rendered:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "htools"
        if doc["kind"] == "DaskCluster":
            daskcluster_validator.validate(doc)
            for c in containers(doc).values():
                assert c["image"] == "htools:latest"  # kustomize images: reach the CR
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    (cm,) = [d for d in rendered if d["kind"] == "ConfigMap"]
    (deploy,) = [d for d in rendered if d["kind"] == "Deployment"]
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]  # hashed name
    assert cm["data"]["nginx.conf"] == (K8S / "nginx" / "nginx.conf").read_text()


# --------------------------------------------------------------------------- nginx config

def render_template(values: dict[str, str]) -> str:
    """nginx/nginx.conf rendered as scripts/nginx-start does (its awk, in Python)."""
    out = []
    for line in (REPO / "nginx" / "nginx.conf").read_text().splitlines(keepends=True):
        if line.rstrip("\n") in ("@USER@", "@AUTH@"):
            out.append(values[line.strip()[1:-1]] + "\n")
            continue
        for key in ("PORT", "ROOT", "PREFIX", "BODYTMP", "LISTEN"):
            line = line.replace(f"@{key}@", values[key])
        out.append(line)
    return "".join(out)


def without_header(text: str) -> str:
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines) and (lines[i].startswith("#") or not lines[i].strip()):
        i += 1
    return "".join(lines[i:])


def test_k8s_nginx_conf_is_the_rendered_template():
    ours = (K8S / "nginx" / "nginx.conf").read_text()
    assert without_header(ours) == without_header(render_template(NGINX_K8S))
    assert "@" not in without_header(ours).replace("user www-data", "")


def test_k8s_nginx_conf_passes_nginx_t(tmp_path):
    nginx = require_tool("nginx")
    conf = (K8S / "nginx" / "nginx.conf").read_text()
    conf = conf.replace("/var/lib/htools-nginx", str(tmp_path / "state"))
    conf = conf.replace("/data", str(tmp_path / "data"))
    conf = conf.replace("0.0.0.0:8080", f"127.0.0.1:{free_port()}")
    if os.getuid() != 0:
        conf = conf.replace("user www-data www-data;", "")
    (tmp_path / "state").mkdir()
    (tmp_path / "data").mkdir()  # the volume mount exists in the pod
    (tmp_path / "nginx.conf").write_text(conf)
    out = subprocess.run([nginx, "-t", "-p", str(tmp_path / "state"), "-c",
                          str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "state" / "err.log")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------- images

def dockerfile_sources(path: Path) -> list[str]:
    sources = []
    for line in path.read_text().splitlines():
        m = re.match(r"\s*(COPY|ADD)\s+(?!--from)(.+)", line)
        if m:
            parts = [p for p in m.group(2).split() if not p.startswith("--")]
            sources += parts[:-1]
    return sources


@pytest.mark.parametrize("dockerfile", ["k8s/Dockerfile", "nginx/Dockerfile"])
def test_dockerfiles_copy_files_that_exist(dockerfile):
    text = (REPO / dockerfile).read_text()
    assert re.search(r"^FROM \S+", text, re.M)
    sources = dockerfile_sources(REPO / dockerfile)
    assert sources
    for src in sources:  # build context: the repository root
        assert (REPO / src).exists(), f"{dockerfile} copies missing {src}"
    ignored = (REPO / ".dockerignore").read_text().split()
    for src in sources:
        assert src.split("/")[0] not in ignored, f"{src} is excluded by .dockerignore"
    if dockerfile == "nginx/Dockerfile":
        assert "libnginx-mod-http-dav-ext" in text and re.search(r"^FROM debian", text, re.M)
        assert os.access(REPO / "nginx" / "docker-entrypoint", os.X_OK)
    else:
        assert '".[k8s]"' in text and "COPY examples" in text


def test_compose_file():
    compose = yaml.safe_load((REPO / "nginx" / "compose.yaml").read_text())
    (name,) = compose["services"]
    service = compose["services"][name]
    build = service["build"]
    context = (REPO / "nginx" / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).is_file()
    assert "shards" in compose["volumes"]
    mounts = [v.split(":") for v in service["volumes"]]
    assert ["shards", "/data"] in mounts
    assert any(p.endswith(":8080") for p in service["ports"])


def test_nginx_entrypoint_runs_the_template(tmp_path):
    """The container's entrypoint, run here without Docker (paths from the environment):
    it renders the template through scripts/nginx-start and serves PUT/GET."""
    require_tool("nginx")  # scripts/nginx-start runs it
    base = Path(tempfile.mkdtemp(prefix="htools-entrypoint-"))
    base.chmod(0o755)  # as root the workers run as www-data: they must reach the data dir
    port = free_port()
    env = child_env(HTOOLS_HOME=str(REPO), DATA=str(base / "data"),
                    STATE=str(base / "state"), PORT=str(port), LISTEN="127.0.0.1")
    if os.getuid() == 0:
        try:
            import pwd

            pwd.getpwnam("www-data")
        except KeyError:
            env["NGINX_USER"] = "root"
    log = open(tmp_path / "entrypoint.log", "wb")
    proc = subprocess.Popen([str(REPO / "nginx" / "docker-entrypoint")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                storage.listdir(url + "/")
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert proc.poll() is None, (tmp_path / "entrypoint.log").read_text()
                assert time.monotonic() < deadline, "entrypoint nginx did not answer"
                time.sleep(0.1)
        with storage.open_write(url + "/x/y.bin") as f:
            f.write(b"through the container entrypoint")
        assert (base / "data" / "x" / "y.bin").read_bytes() == b"through the container entrypoint"
        with storage.open_read(url + "/x/y.bin") as f:
            assert f.read() == b"through the container entrypoint"
        assert "daemon off" in " ".join(Path(f"/proc/{proc.pid}/cmdline").read_text().split("\0"))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGQUIT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- k8s:// addresses

def test_parse_address():
    a = kube.parse_address("k8s://demo?workers=3&image=x")
    assert (a.name, a.workers, a.image, a.namespace, a.threads) == ("demo", 3, "x", None, 1)
    a = kube.parse_address("k8s://my-cluster-2?namespace=data&threads=4&image=reg.example/h:1")
    assert (a.name, a.workers, a.image, a.namespace, a.threads) == \
        ("my-cluster-2", None, "reg.example/h:1", "data", 4)
    assert kube.parse_address("k8s://demo/").name == "demo"


@pytest.mark.parametrize("address", [
    "k8s://", "k8s://Demo", "k8s://demo_1", "k8s://-demo", "k8s://" + "a" * 60,
    "k8s://demo?workers=0", "k8s://demo?workers=two", "k8s://demo?worker=3",
    "k8s://demo?workers=3&workers=4", "k8s://demo?image=", "tcp://demo:8786",
])
def test_parse_address_rejects(address):
    with pytest.raises(kube.KubeError) as info:
        kube.parse_address(address)
    assert "\n" not in str(info.value)


def test_no_kube_config_is_one_line(tmp_path, monkeypatch):
    empty = tmp_path / "kubeconfig"
    empty.write_text("")
    monkeypatch.setenv("KUBECONFIG", str(empty))
    with pytest.raises(kube.KubeError, match="no Kubernetes configuration"):
        with kube.cluster("k8s://demo?workers=3&image=x", quiet=True):
            pass
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(kube.KubeError, match="~/.kube/config"):
        kube.check_kube_config()


def test_no_kube_config_cli(tmp_path):
    empty = tmp_path / "kubeconfig"
    empty.write_text("")
    shard = tmp_path / "x.tar"
    shard.write_bytes(b"\0" * 1024)
    proc = run("htextract", "-c", "k8s://demo?workers=3", str(shard), "-f", "cls",
               env=dict(ENV, KUBECONFIG=str(empty)), timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Kubernetes configuration" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_api_server_is_one_line(tmp_path, monkeypatch):
    """A kube config whose API server (127.0.0.1, a closed port) does not answer."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "here",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "here", "context": {"cluster": "c", "user": "u",
                                                  "namespace": "default"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    start = time.monotonic()
    with pytest.raises(kube.KubeError) as info:
        with kube.cluster("k8s://demo", quiet=True):
            pass
    assert time.monotonic() - start < 60
    message = str(info.value)
    assert "'demo'" in message and "\n" not in message
    assert "not-a-real-token" not in message


def test_missing_dask_kubernetes(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_kubernetes", None)
    monkeypatch.setitem(sys.modules, "dask_kubernetes.operator", None)
    with pytest.raises(kube.KubeError, match=r"pip install 'htools-wds\[k8s\]'"):
        with kube.cluster("k8s://demo", quiet=True):
            pass
    with pytest.raises(kube.KubeError, match="dask-kubernetes"):
        kube.cluster_spec("demo")
