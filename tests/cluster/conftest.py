"""The local one-node cluster (deploy/local/cluster.sh) for the autoscaling tests: started if it is
not running (and then stopped at the end), a small JSON client for its API server, and a private
PingMe deployment per test module on the host's real servers.

Nothing here is a fake: the functions run as pods of the project's image, KEDA's operator reads the
real consumer group's lag from the host's Kafka, the controller manager's HPA scales the Deployment.
"""
from __future__ import annotations

import json
import logging
import os
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import REPO, _server_sql, _services_env, free_port, wait_for

CLUSTER = REPO / "deploy" / "local" / "cluster.sh"
TOOLS = REPO / "deploy" / "local" / "tools.sh"
OVERLAY = REPO / "deploy" / "k8s" / "overlays" / "local"
STATE = Path(os.environ.get("PINGME_STATE_DIR", REPO / ".state")) / "cluster"
LOGS = REPO / ".state" / "test-logs"
# The functions a chat message needs (and its failure paths); any other the base gains is left out.
DEPLOYED = ("register", "login", "send", "deliver", "retry", "dlq")
# Partitions of the test's topics: the most replicas of one function that get work.
PARTITIONS = 4

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
logger = logging.getLogger(__name__)


def pytest_collection_modifyitems(config, items):
    """Only when asked for (`pytest -m cluster`, `make test-cluster`): the cluster costs minutes of
    builds the first time and ~4 min per run, beyond `make test`'s budget (docs/DEPLOY.md)."""
    if "cluster" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="needs the local cluster: make test-cluster (pytest -m cluster)")
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)


def cluster_sh(*args: str, timeout: float = 600) -> str:
    done = subprocess.run(["bash", str(CLUSTER), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"cluster.sh {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


class Kube:
    """A tiny client for the cluster's API server: the admin token and the server's certificate from
    the kubeconfig cluster.sh writes. kubectl (built by tools.sh) only for server-side apply."""

    def __init__(self, kubeconfig: Path):
        cfg = yaml.safe_load(kubeconfig.read_text())
        self.kubeconfig = kubeconfig
        self.base = cfg["clusters"][0]["cluster"]["server"]
        self.token = cfg["users"][0]["user"]["token"]
        self.context = ssl.create_default_context(cafile=cfg["clusters"][0]["cluster"]["certificate-authority"])
        self.kubectl_bin = subprocess.run(["bash", str(TOOLS), "path", "kubectl"], capture_output=True, text=True,
                                          check=True).stdout.strip()

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 30):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Content-Type", "application/json")
        return urllib.request.urlopen(req, timeout=timeout, context=self.context)

    def get(self, path: str) -> dict | None:
        """The object at ``path``, or None if there is none."""
        try:
            with self.request("GET", path) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise AssertionError(f"GET {path}: {err.code} {err.read()[:500]!r}") from err

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 180) -> str:
        done = subprocess.run([self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *args], input=stdin,
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"kubectl {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        return done.stdout

    def apply(self, docs: list[dict]) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                     stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))


class PodWatch:
    """Every state the pods matching a label selector went through, from a watch on the API server:
    how each worker container ended (exit code, reason) even for pods deleted right after."""

    def __init__(self, kube: Kube, namespace: str, selector: str):
        self.finished: dict[str, dict] = {}   # pod name -> the container's `terminated` state
        self.seen: set[str] = set()
        self.errors: list[str] = []
        self._kube, self._path = kube, f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}"
        self._stopped = threading.Event()
        self._resp = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        wait_for(lambda: self._resp is not None or self.errors, timeout=10, what="the pod watch to open")
        assert not self.errors, self.errors

    def _note(self, pod: dict) -> None:
        name = pod["metadata"]["name"]
        self.seen.add(name)
        for status in pod.get("status", {}).get("containerStatuses", []):
            if "terminated" in status.get("state", {}):
                self.finished[name] = status["state"]["terminated"]

    def _run(self) -> None:
        while not self._stopped.is_set():  # list, then watch from there; again if the watch ends
            try:
                listed = self._kube.get(self._path)
                for pod in listed["items"]:
                    self._note(pod)
                rv = listed["metadata"]["resourceVersion"]
                # Short watches (then a new list and watch): stop() does not wait for one to end.
                self._resp = self._kube.request("GET", f"{self._path}&watch=true&resourceVersion={rv}"
                                                       "&timeoutSeconds=30", timeout=60)
                for line in self._resp:
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        self.errors.append(event["object"].get("message", ""))
                        break
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        self._note(event["object"])
            except (OSError, ValueError, AssertionError) as exc:
                if not self._stopped.is_set():
                    self.errors.append(repr(exc))
                    time.sleep(0.5)

    def stop(self) -> None:
        """Stops recording; the reading thread (a daemon) ends with its current watch (<= 30 s):
        closing the response from here would block until the server ends it."""
        self._stopped.set()


def consumer_lag(brokers: list[str], group: str, topic: str):
    """A callable giving the group's total lag on ``topic`` (log end minus committed offset, summed
    over partitions; a partition without a commit counts from its start): what KEDA's Kafka scaler
    computes. Kafka clients are made once."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    admin = KafkaAdminClient(bootstrap_servers=brokers)
    consumer = KafkaConsumer(bootstrap_servers=brokers, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    assert parts, f"topic {topic} has no partitions"

    def lag() -> int:
        return offsets()["lag"]

    def offsets() -> dict:
        """The total lag, and per partition the log end and the committed offset."""
        committed = admin.list_group_offsets(group).get(group, {})
        ends = consumer.end_offsets(parts)
        begins = consumer.beginning_offsets(parts)
        done = {}
        for tp in parts:
            meta = committed.get(tp)
            done[tp.partition] = meta.offset if meta is not None and meta.offset >= 0 else begins[tp]
        return {"lag": sum(max(ends[tp] - done[tp.partition], 0) for tp in parts),
                "end": [ends[tp] for tp in parts], "committed": [done[tp.partition] for tp in parts]}

    def close() -> None:
        admin.close()
        consumer.close()

    lag.close, lag.offsets = close, offsets
    return lag


def topic_size(brokers: list[str], topic: str):
    """A callable giving how many records ``topic`` holds (its partitions' end offsets, summed)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=brokers, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    return lambda: sum(consumer.end_offsets(parts).values())


@pytest.fixture(scope="session")
def cluster():
    """The running cluster: started by this fixture if it was not (the first start builds the
    Kubernetes and KEDA programs, minutes; cached in ~/.cache/pingme), and then stopped again."""
    was_running = "node pingme-node: Ready" in cluster_sh("status")
    started = time.monotonic()
    if not was_running:
        try:
            out = cluster_sh("start", timeout=3600)
        except BaseException:  # what a failed start left running goes too
            subprocess.run(["bash", str(CLUSTER), "stop"], cwd=REPO, capture_output=True, timeout=300)
            raise
        logger.info("cluster started in %.1f s:\n%s", time.monotonic() - started, out)
    else:  # the image may be older than the tree: start rebuilds and re-imports it (quick when unchanged)
        cluster_sh("start", timeout=1800)
    kube = Kube(STATE / "pki" / "admin.kubeconfig")
    yield kube
    if not was_running:
        cluster_sh("stop", timeout=300)


def render_overlay() -> list[dict]:
    kustomize = subprocess.run(["bash", str(TOOLS), "path", "kustomize"], capture_output=True, text=True,
                               check=True).stdout.strip()
    out = subprocess.run([kustomize, "build", str(OVERLAY)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


class Deployment:
    """The PingMe of one test module on the cluster: its own Kubernetes namespace and PingMe namespace
    (topics, groups, Redis keys), its own database on the host's MariaDB, its gateway's port."""

    def __init__(self, kube: Kube, namespace: str, env: dict[str, str], gateway_port: int):
        self.kube, self.namespace, self.env, self.gateway_port = kube, namespace, env, gateway_port
        self.url = f"http://127.0.0.1:{gateway_port}"

    def path(self, kind: str, name: str = "") -> str:
        group = {"deployments": "/apis/apps/v1", "pods": "/api/v1", "configmaps": "/api/v1",
                 "horizontalpodautoscalers": "/apis/autoscaling/v2",
                 "scaledobjects": "/apis/keda.sh/v1alpha1"}[kind]
        return f"{group}/namespaces/{self.namespace}/{kind}" + (f"/{name}" if name else "")

    def replicas(self, function: str) -> tuple[int, int]:
        """(wanted, ready) replicas of the function's Deployment."""
        dep = self.kube.get(self.path("deployments", f"pingme-{function}"))
        return dep["spec"].get("replicas", 0), dep["status"].get("readyReplicas", 0)

    def pods(self, function: str) -> list[dict]:
        found = self.kube.get(self.path("pods") + f"?labelSelector=app.kubernetes.io/name%3Dpingme-{function}")
        return found["items"]

    def pod_log(self, pod: dict) -> str:
        """A pod's container logs, read from the kubelet's files (no kubelet API on this cluster)."""
        folder = STATE / "pod-logs" / f"{self.namespace}_{pod['metadata']['name']}_{pod['metadata']['uid']}"
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(folder.glob("*/*.log")))

    def describe_failure(self) -> str:
        events = self.kube.get(f"/api/v1/namespaces/{self.namespace}/events")["items"]
        lines = [f"event {e['involvedObject']['name']}: {e.get('reason')} {e.get('message', '')[:300]}"
                 for e in events if e.get("type") == "Warning"][-30:]
        for pod in self.kube.get(self.path("pods"))["items"]:
            lines.append(f"--- {pod['metadata']['name']}: {pod['status'].get('phase')} "
                         f"{json.dumps(pod['status'].get('containerStatuses', []))[:600]}\n{self.pod_log(pod)[-1500:]}")
        return "\n".join(lines)


def customize(docs: list[dict], namespace: str, env: dict[str, str], gateway_port: int,
              scaled: dict[str, dict]) -> list[dict]:
    """The overlay's objects for one test's deployment: its namespaces, servers and gateway port;
    ``scaled`` maps a function to what its Deployment and ScaledObject change (cpu limit, polling,
    scale-down behaviour)."""
    out = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in ("Namespace", "Job"):
            continue  # the namespace is made first; the schema is migrated from the host
        component = doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        if name.removeprefix("pingme-") not in DEPLOYED and (kind == "ScaledObject" or component == "function") \
                and kind != "Service":
            logger.warning("%s %s: not deployed by this test (only %s)", kind, name, DEPLOYED)
            continue
        doc["metadata"]["namespace"] = namespace
        if kind == "ConfigMap" and name == "pingme-config":
            doc["data"].update({k: env[k] for k in ("PINGME_NAMESPACE", "DB_HOST", "DB_PORT", "DB_NAME",
                                                    "REDIS_HOST", "REDIS_PORT", "KAFKA_BROKERS",
                                                    "KAFKA_PARTITIONS", "PASSWORD_ITERATIONS")})
            # The load registers and sends from one address far beyond a person's limits.
            doc["data"].update(APP_PORT=str(gateway_port), RATE_LIMIT_ENABLED="false")
        if kind == "Deployment" and name == "pingme-gateway":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            container["ports"][0]["containerPort"] = gateway_port
            # A minute without an answer before a restart, not 3 s three times: on this 2-core box
            # shared with other work (load 14-20), the gateway under a login burst missed the base's
            # liveness timeout and was restarted mid-test (exit 0 after SIGTERM, clients refused).
            container["livenessProbe"].update(timeoutSeconds=10, failureThreshold=6)
        function = name.removeprefix("pingme-")
        if kind == "Deployment" and function in scaled and "cpu" in scaled[function]:
            container = doc["spec"]["template"]["spec"]["containers"][0]
            # The request too: the overlay's 50m must not exceed the limit.
            for bound in ("limits", "requests"):
                container["resources"][bound]["cpu"] = scaled[function]["cpu"]
            # Python's start (~1.2 s of CPU) takes half a minute under a 50m limit, a minute under
            # 25m: the liveness probe's first look (15 s) would restart the worker before it serves.
            millicores = int(scaled[function]["cpu"].removesuffix("m"))
            container["livenessProbe"]["initialDelaySeconds"] = max(60, 3000 // millicores)
        if kind == "ScaledObject":
            meta = doc["spec"]["triggers"][0]["metadata"]
            meta.update(bootstrapServers=env["KAFKA_BROKERS"], consumerGroup=f"{env['PINGME_NAMESPACE']}.{function}",
                        topic=f"{env['PINGME_NAMESPACE']}.{function}")
            doc["spec"]["maxReplicaCount"] = min(doc["spec"]["maxReplicaCount"], PARTITIONS)
            for key, value in scaled.get(function, {}).get("scaledobject", {}).items():
                doc["spec"][key] = value
        out.append(doc)
    return out


@pytest.fixture(scope="module")
def deployment(cluster, request):
    """PingMe deployed from deploy/k8s/overlays/local into a namespace of this module, every pod
    Ready and every ScaledObject Ready; torn down (namespace and database) at the end. A module
    sets ``SCALED`` (see :func:`customize`)."""
    from common import bus, config as config_mod
    from common.migrations import migrate
    from common.models import db, init_db

    namespace = f"c{uuid.uuid4().hex[:8]}"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("APP_", "DB_", "REDIS_", "KAFKA_", "RETRY_", "JWT_", "PINGME_"))}
    env.update(_services_env())
    env.update({"APP_CONF": os.devnull, "APP_ENV": "test", "DB_ENGINE": "mysql", "DB_NAME": f"pingme_test_{namespace}",
                "PINGME_NAMESPACE": namespace, "PASSWORD_ITERATIONS": "1000", "KAFKA_PARTITIONS": str(PARTITIONS),
                "JWT_SECRET": "cluster-test-secret-" + uuid.uuid4().hex})
    cfg = config_mod.load(env)
    _server_sql(cfg, f"CREATE DATABASE IF NOT EXISTS `{cfg.db.name}` CHARACTER SET utf8mb4")
    init_db(cfg.db)
    migrate()
    db.close()
    bus.ensure_topics(cfg)

    kube: Kube = cluster
    gateway_port = free_port()
    kube.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pingme-secrets", "namespace": namespace},
                 "stringData": {"JWT_SECRET": env["JWT_SECRET"], "DB_PASSWORD": env["DB_PASSWORD"]}}])
    dep = Deployment(kube, namespace, env, gateway_port)
    try:
        started = time.monotonic()
        kube.apply(customize(render_overlay(), namespace, env, gateway_port, getattr(request.module, "SCALED", {})))
        try:
            kube.kubectl("-n", namespace, "rollout", "status", "deployment", "--timeout=240s", timeout=300)
            for so in kube.get(dep.path("scaledobjects"))["items"]:
                wait_for(lambda so=so: any(c["type"] == "Ready" and c["status"] == "True" for c in
                                           (kube.get(dep.path("scaledobjects", so["metadata"]["name"])) or {})
                                           .get("status", {}).get("conditions", [])),
                         timeout=90, interval=1, what=f"ScaledObject {so['metadata']['name']} Ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{dep.describe_failure()}") from exc
        logger.info("namespace %s: every pod ready and ScaledObject active in %.1f s", namespace,
                    time.monotonic() - started)
        dep.ready_seconds = time.monotonic() - started
        yield dep
    finally:
        try:
            kube.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=120s", timeout=180)
        finally:
            _server_sql(cfg, f"DROP DATABASE IF EXISTS `{cfg.db.name}`")
