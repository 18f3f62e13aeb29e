"""deploy/k8s/overlays/local (the one-node cluster of deploy/local/cluster.sh), rendered by kustomize
and checked offline against what that cluster needs: every pod on the host's network, function
workers without a declared port and with exec probes on a port of their own, the gateway on the
ConfigMap's port, no Strimzi or Ingress objects, and every ScaledObject on the host's Kafka and on
its function's real group and topic in the overlay's namespace (for any function the base gains).
tests/cluster runs the overlay on the real cluster (`make test-cluster`)."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from common import config as config_mod
from tests.deploy.conftest import K8S, objects, tool


@pytest.fixture(scope="module")
def local() -> list[dict]:
    out = subprocess.run([tool("kustomize"), "build", str(K8S / "overlays" / "local")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def _config(docs):
    data = objects(docs, "ConfigMap")["pingme-config"]["data"]
    return data, config_mod.load({**data, "APP_CONF": "/dev/null", "APP_ENV": "test"})


def _function(dep: dict) -> str | None:
    command = dep["spec"]["template"]["spec"]["containers"][0].get("command", [])
    return command[command.index("functions") + 1] if "functions" in command else None


def test_nothing_the_cluster_cannot_run(local):
    kinds = {doc["kind"] for doc in local}
    assert not kinds & {"Kafka", "KafkaNodePool", "KafkaTopic", "Ingress"}, kinds
    assert {"Deployment", "ScaledObject", "ConfigMap", "Job"} <= kinds


def test_every_pod_uses_the_hosts_network(local):
    for doc in local:
        if doc["kind"] in ("Deployment", "Job"):
            spec = doc["spec"]["template"]["spec"]
            assert spec.get("hostNetwork") is True and spec.get("dnsPolicy") == "Default", doc["metadata"]["name"]


def test_function_workers_pick_their_probe_port_and_are_probed_by_exec(local):
    functions = [d for d in objects(local, "Deployment").values() if _function(d)]
    assert len(functions) >= 6
    for dep in functions:
        container = dep["spec"]["template"]["spec"]["containers"][0]
        name = dep["metadata"]["name"]
        assert container["command"][:2] == ["sh", "/pingme-local/host-port.sh"], name
        assert container["command"][2:] == ["python", "-m", "functions", _function(dep)], name
        # A declared port is a host port on the host's network: two replicas could not share the node.
        assert not container.get("ports"), name
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            assert container[probe]["exec"]["command"] == ["bash", "/pingme-local/probe.sh", path], name
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts.get("pingme-local") == "/pingme-local", name
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        assert volumes["pingme-local"]["configMap"]["name"].startswith("pingme-local-scripts-"), name


def test_the_gateway_listens_on_the_configured_port_on_loopback(local):
    data, cfg = _config(local)
    gateway = objects(local, "Deployment")["pingme-gateway"]
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    assert gateway["spec"]["replicas"] == 1
    assert container["ports"][0]["containerPort"] == cfg.app.port and cfg.app.host == "127.0.0.1"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["host"] == "127.0.0.1"
    assert gateway["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_each_scaled_object_reads_the_hosts_kafka_and_its_functions_group(local):
    data, cfg = _config(local)
    by_name = {d["metadata"]["name"]: _function(d) for d in objects(local, "Deployment").values()}
    scaled = objects(local, "ScaledObject")
    assert len(scaled) == sum(1 for f in by_name.values() if f)
    for name, so in scaled.items():
        function = by_name[so["spec"]["scaleTargetRef"]["name"]]
        meta = so["spec"]["triggers"][0]["metadata"]
        assert meta["bootstrapServers"] == data["KAFKA_BROKERS"], name
        assert (meta["consumerGroup"], meta["topic"]) == (cfg.group(function), cfg.topic(function)), name
        assert so["spec"]["maxReplicaCount"] <= cfg.kafka.partitions, name
