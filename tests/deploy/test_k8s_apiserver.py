"""deploy/k8s, rendered by kustomize, dry-run against a real kube-apiserver: every object is POSTed
with `?dryRun=All&fieldValidation=Strict`, so it goes through the server's own decoding (an unknown
field is an error), defaulting, validation and admission, including the rules no JSON schema holds:
a Deployment's selector must match its template's labels, a request may not exceed its limit, and
the CEL rules of the KEDA and Strimzi CRDs (KEDA's minReplicaCount <= maxReplicaCount). Nothing is
stored.

The server: kube-apiserver v1.37.2 built from the k8s.io/kubernetes Go module (deploy/local/kube,
deploy/local/tools.sh: 10-13 min and ~3 GB of Go cache the first time, cached in ~/.cache/pingme) on
Debian's etcd, both on loopback with free ports and their own temporary folder, a throw-away admin
token (group system:masters under RBAC) and service-account key made here; the CRDs of
../shared/vendor/crds are installed and Established first. Both processes are stopped at the end.
Ready in ~3 s; ~450 MB resident with the CRDs, etcd ~60 MB. Marked slow and apiserver:
`pytest -m apiserver` runs it alone.
"""
from __future__ import annotations

import copy
import json
import logging
import time
import secrets
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.deploy.conftest import objects, tool
from tests.integration.conftest import Proc, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.apiserver]
logger = logging.getLogger(__name__)

KUBE_VERSION = "v1.37.2"  # deploy/local/tools.sh KUBE_VERSION
DRY_RUN = "?dryRun=All&fieldValidation=Strict"


class Kube:
    """A tiny JSON client for the test's API server: the bearer token, and the server's own
    self-signed certificate as the only trusted one."""

    def __init__(self, base: str, token: str, ca_file: Path):
        self.base, self.token, self.ca_file = base, token, ca_file
        self._context: ssl.SSLContext | None = None  # once the server has written its certificate

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | str]:
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Content-Type", "application/json")
        if self._context is None:
            self._context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(req, timeout=30, context=self._context) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def ready(self) -> bool:
        try:
            return self.call("GET", "/readyz") == (200, "ok")
        except OSError:  # not listening yet, or its certificate not written yet
            self._context = None
            return False

    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural name, namespaced) of a kind, from the server's discovery."""
        path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        status, found = self.call("GET", path)
        assert status == 200, f"GET {path}: {status} {found}"
        for res in found["resources"]:
            if res["kind"] == kind and "/" not in res["name"]:
                return res["name"], res["namespaced"]
        raise AssertionError(f"the server serves no {kind} in {api_version}")

    def collection(self, doc: dict) -> str:
        plural, namespaced = self.resource(doc["apiVersion"], doc["kind"])
        group = "/api/" if "/" not in doc["apiVersion"] else "/apis/"
        ns = f"namespaces/{doc['metadata'].get('namespace', 'default')}/" if namespaced else ""
        return f"{group}{doc['apiVersion']}/{ns}{plural}"

    def create(self, doc: dict, dry_run: bool = True) -> tuple[int, dict | str]:
        query = DRY_RUN if dry_run else "?fieldValidation=Strict"
        return self.call("POST", self.collection(doc) + query, doc)


def _message(body) -> str:
    return body.get("message", json.dumps(body)) if isinstance(body, dict) else body


@pytest.fixture(scope="module")
def kube(tmp_path_factory, crd_dir) -> Kube:
    """etcd and kube-apiserver of this module, with the vendor CRDs installed and Established."""
    apiserver_bin = tool("kube_apiserver", timeout=3600)  # its first build: 10-13 min
    etcd_bin = tool("etcd")
    tmp = tmp_path_factory.mktemp("apiserver")
    token = secrets.token_hex(24)
    (tmp / "tokens.csv").write_text(f'{token},pingme-test-admin,pingme-test-admin,"system:masters"\n')
    (tmp / "tokens.csv").chmod(0o600)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp / "sa.key").write_bytes(sa_key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                                      serialization.NoEncryption()))
    (tmp / "sa.key").chmod(0o600)

    procs: list[Proc] = []
    try:
        client_port, peer_port, secure_port = free_port(), free_port(), free_port()
        etcd_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        procs.append(Proc([etcd_bin, "--name", "pingme-test", "--data-dir", str(tmp / "etcd"),
                           "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                           "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                           "--initial-cluster", f"pingme-test={peer_url}"], {}, "etcd"))
        apiserver = Proc([
            apiserver_bin, f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={secure_port}",
            f"--cert-dir={tmp / 'certs'}",
            # No Endpoints of its own for the `kubernetes` Service: a loopback address is refused there.
            "--endpoint-reconciler-type=none",
            f"--token-auth-file={tmp / 'tokens.csv'}", "--anonymous-auth=false", "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={tmp / 'sa.key'}", f"--service-account-signing-key-file={tmp / 'sa.key'}",
            # The range Service IPs are allocated from (for a dry run, not even stored): never routed.
            "--service-cluster-ip-range=10.0.0.0/24", "--profiling=false",
        ], {}, "kube-apiserver")
        procs.append(apiserver)
        started = time.monotonic()
        kube = Kube(f"https://127.0.0.1:{secure_port}", token, tmp / "certs" / "apiserver.crt")

        def ready() -> bool:
            for proc in procs:
                assert proc.popen.poll() is None, f"{proc.name} exited:\n{proc.log()[-4000:]}"
            return kube.ready()
        wait_for(ready, timeout=90, interval=0.5, what=f"kube-apiserver's /readyz (log: {apiserver.log_path})")
        logger.info("kube-apiserver ready in %.1f s", time.monotonic() - started)

        crds = [doc for path in sorted(crd_dir.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
                if doc and doc.get("kind") == "CustomResourceDefinition"]
        for crd in crds:
            status, body = kube.create(crd, dry_run=False)
            assert status == 201, f"CRD {crd['metadata']['name']}: {status} {_message(body)}"

        def established(name: str) -> bool:
            status, body = kube.call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            return status == 200 and any(c["type"] == "Established" and c["status"] == "True"
                                         for c in body.get("status", {}).get("conditions", []))
        for crd in crds:
            wait_for(lambda name=crd["metadata"]["name"]: established(name), timeout=60, interval=0.2,
                     what=f"CRD {crd['metadata']['name']} Established")
        yield kube
    finally:
        for proc in reversed(procs):  # the API server first, then its etcd
            proc.stop()


@pytest.fixture(scope="module")
def namespaced(kube, rendered) -> list[dict]:
    """The rendered objects to dry-run: its Namespaces are created for real first (a namespaced
    object is refused in a namespace that does not exist)."""
    for ns in objects(rendered, "Namespace").values():
        status, body = kube.create(ns, dry_run=False)
        assert status == 201, f"Namespace {ns['metadata']['name']}: {status} {_message(body)}"
    return [doc for doc in rendered if doc["kind"] != "Namespace"]


def test_the_server_is_the_built_release(kube):
    status, body = kube.call("GET", "/version")
    assert status == 200 and body["gitVersion"] == KUBE_VERSION, body


def test_every_rendered_object_is_accepted_by_the_api_server(kube, namespaced):
    refused = []
    for doc in namespaced:
        status, body = kube.create(doc)
        if status not in (200, 201):
            refused.append(f"{doc['kind']}/{doc['metadata']['name']}: {status} {_message(body)}")
    assert not refused, "refused by kube-apiserver:\n" + "\n".join(refused)
    assert {doc["kind"] for doc in namespaced} >= {"Deployment", "ScaledObject", "Kafka", "KafkaTopic"}
    # A dry run stores nothing.
    for doc in (d for d in namespaced if d["kind"] == "Deployment"):
        status, _ = kube.call("GET", f"{kube.collection(doc)}/{doc['metadata']['name']}")
        assert status == 404, f"{doc['metadata']['name']} was stored by a dry run"


def _selector_mismatch(docs):
    dep = copy.deepcopy(next(iter(objects(docs, "Deployment").values())))
    dep["spec"]["selector"]["matchLabels"] = {"app.kubernetes.io/name": "matches-no-pod"}
    return dep


def _min_above_max(docs):
    so = copy.deepcopy(next(iter(objects(docs, "ScaledObject").values())))
    so["spec"]["minReplicaCount"] = so["spec"]["maxReplicaCount"] + 1
    return so


def _request_above_limit(docs):
    dep = copy.deepcopy(next(iter(objects(docs, "Deployment").values())))
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}
    return dep


def _unknown_field(docs):
    dep = copy.deepcopy(next(iter(objects(docs, "Deployment").values())))
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = {"httpGet": {"path": "/healthz", "port": 80}}
    return dep


@pytest.mark.parametrize("break_it, refusal", [
    (_selector_mismatch, "selector` does not match template `labels`"),
    (_min_above_max, "minReplicaCount must be less than or equal to maxReplicaCount"),
    (_request_above_limit, "must be less than or equal to cpu limit"),
    (_unknown_field, 'unknown field "spec.template.spec.containers[0].livenesProbe"'),
], ids=["deployment-selector-mismatch", "keda-min-above-max", "cpu-request-above-limit", "misspelt-field"])
def test_the_dry_run_refuses_what_schemas_let_through(kube, namespaced, break_it, refusal):
    """The check above is only worth something if the server really validates: a broken copy of a
    rendered object must be refused, with the rule it breaks."""
    status, body = kube.create(break_it(namespaced))
    assert status in (400, 422), f"accepted: {status} {body}"
    assert refusal in _message(body), _message(body)
