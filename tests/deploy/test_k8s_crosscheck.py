"""deploy/k8s, rendered by kustomize, against the code it deploys. Schemas cannot see these: a
ScaledObject watching a consumer group no function uses scales nothing; a probe on a path the
process does not serve restarts it forever; a misspelt variable is silently ignored.

Every expected value is computed from the code (common.config, common.bus, functions.FUNCTIONS, the
gateway's Flask routes), with the configuration the manifests give the containers.
"""
from __future__ import annotations

import base64
import re
import threading
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

from common import bus, config as config_mod
from functions import FUNCTIONS
from tests.deploy.conftest import REPO, env_names_read_by_code, objects

GATEWAY_COMMAND = ["gunicorn", "-c", "gateway/gunicorn.conf.py", "gateway.wsgi:app"]


def _containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def _workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "Job")]


def _config_env(docs: list[dict], container: dict) -> dict[str, str]:
    """The environment a container starts with (envFrom ConfigMaps and Secrets, then env)."""
    configmaps, secrets = objects(docs, "ConfigMap"), objects(docs, "Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]]["data"])
        else:
            data = secrets[source["secretRef"]["name"]]["data"]
            env.update({k: base64.b64decode(v).decode() for k, v in data.items()})
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", f"<from {sorted(var.get('valueFrom', {}))}>")
    return env


def _load(env: dict[str, str]) -> config_mod.Config:
    """The configuration the container gets, with a valid stand-in for the example's placeholder
    secret (test_the_example_secret_is_refused_in_production covers the placeholder itself)."""
    return config_mod.load({**env, "JWT_SECRET": "a-real-secret-of-more-than-32-characters"})


def _function_of(container: dict) -> str | None:
    command = container.get("command", [])
    return command[3] if command[:3] == ["python", "-m", "functions"] and len(command) == 4 else None


def _deployments_by_function(docs: list[dict]) -> dict[str, dict]:
    found = {}
    for name, dep in objects(docs, "Deployment").items():
        for container in _containers(dep):
            if (fn := _function_of(container)) is not None:
                assert fn not in found, f"{fn} runs in both {found[fn]['metadata']['name']} and {name}"
                found[fn] = dep
    return found


def _cfg(docs: list[dict]) -> config_mod.Config:
    return _load(objects(docs, "ConfigMap")["pingme-config"]["data"])


@pytest.fixture(scope="module")
def gateway_routes() -> set[str]:
    """The paths the gateway's Flask app serves (its connections replaced: only routes are read)."""
    from gateway.app import create_app

    cfg = config_mod.load({"DB_ENGINE": "mysql", "JWT_SECRET": "x" * 40})
    return {rule.rule for rule in create_app(cfg, gateway=SimpleNamespace()).url_map.iter_rules()}


@pytest.fixture(scope="module")
def function_probe_status():
    """GET a path of a function worker's real probe server (functions/probes.py) on a free port,
    with no dependency to check: its HTTP status (404 for a path it does not serve)."""
    from functions import probes

    state = probes.WorkerState()
    server = probes.start_server(probes.Probes(state, {}, threading.Event(), stale_after_s=60),
                                 lambda: b"", "text/plain", "127.0.0.1", 0)

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}{path}", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
    yield status
    server.shutdown()
    server.server_close()


# ---- what runs --------------------------------------------------------------------------------

def test_every_container_runs_a_function_the_gateway_or_a_cli_command(rendered):
    from common import cli

    problems = []
    for doc in _workloads(rendered):
        for container in _containers(doc):
            command = container.get("command", [])
            fn = _function_of(container)
            if command[:3] == ["python", "-m", "functions"]:
                if fn not in FUNCTIONS:
                    problems.append(f"{doc['metadata']['name']}: {command} runs no function of {FUNCTIONS}")
            elif command[:3] == ["python", "-m", "common.cli"]:
                cli.parse(command[3:])  # argparse exits (SystemExit) on a command the CLI lacks
            elif command != GATEWAY_COMMAND:
                problems.append(f"{doc['metadata']['name']}: unknown command {command}")
    assert not problems, "\n".join(problems)
    assert sorted(_deployments_by_function(rendered)) == sorted(FUNCTIONS)


def test_containers_get_only_variables_the_code_reads_and_a_valid_configuration(rendered):
    known = env_names_read_by_code()
    for doc in _workloads(rendered):
        for container in _containers(doc):
            env = _config_env(rendered, container)
            unknown = sorted(set(env) - known)
            assert not unknown, f"{doc['metadata']['name']}: variables no code reads (misspelt?): {unknown}"
            cfg = _load(env)  # raises ConfigError naming a bad value
            assert cfg.production and cfg.db.engine == "mysql"


def test_the_example_secret_is_refused_in_production(rendered):
    """An overlay applied with secrets.env copied from the example must not start."""
    gateway = next(c for c in _containers(objects(rendered, "Deployment")["pingme-gateway"]))
    with pytest.raises(config_mod.ConfigError, match="JWT_SECRET"):
        config_mod.load(_config_env(rendered, gateway))


def test_containers_run_as_the_images_non_root_user(rendered):
    user = re.search(r"^USER (\d+)", (REPO / "deploy" / "Dockerfile").read_text(), re.M)
    assert user, "deploy/Dockerfile sets no numeric USER"
    for doc in _workloads(rendered):
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == int(user[1]), doc["metadata"]["name"]
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert container["resources"]["requests"] and container["resources"]["limits"]


# ---- probes -----------------------------------------------------------------------------------

def _probes(container: dict):
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        if kind in container:
            yield kind, container[kind]["httpGet"]


def _port_number(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"probe port {port!r} is not a port of container {container['name']}"
    return named[port]


def test_gateway_probes_call_paths_the_gateway_serves_on_its_port(rendered, gateway_routes):
    gateways = [(d, c) for d in objects(rendered, "Deployment").values() for c in _containers(d)
                if c.get("command") == GATEWAY_COMMAND]
    assert gateways, "no gateway Deployment"
    for doc, container in gateways:
        cfg = _load(_config_env(rendered, container))
        probes = dict(_probes(container))
        assert {"readinessProbe", "livenessProbe"} <= set(probes), doc["metadata"]["name"]
        assert probes["readinessProbe"]["path"] == "/readyz" and probes["livenessProbe"]["path"] == "/healthz"
        for kind, probe in probes.items():
            assert probe["path"] in gateway_routes, f"{kind}: the gateway serves no {probe['path']}"
            assert _port_number(container, probe["port"]) == cfg.app.port, f"{kind}: not the gateway's port"


def test_function_probes_call_the_probe_server_on_function_port(rendered, function_probe_status):
    for fn, doc in _deployments_by_function(rendered).items():
        container = next(c for c in _containers(doc) if _function_of(c) == fn)
        cfg = _load(_config_env(rendered, container))
        assert cfg.app.function_port, f"{fn}: FUNCTION_PORT is 0: the worker serves no probes"
        probes = dict(_probes(container))
        assert probes["readinessProbe"]["path"] == "/readyz" and probes["livenessProbe"]["path"] == "/healthz"
        for kind, probe in probes.items():
            assert function_probe_status(probe["path"]) != 404, f"{fn} {kind}: no probe {probe['path']}"
            assert _port_number(container, probe["port"]) == cfg.app.function_port, \
                f"{fn} {kind}: port is not FUNCTION_PORT ({cfg.app.function_port})"


# ---- Kafka: topics, groups, scaling -------------------------------------------------------------

def test_kafka_topics_are_the_ones_the_code_creates_with_its_partitions(rendered):
    cfg = _cfg(rendered)
    topics = {t["spec"]["topicName"]: t for t in objects(rendered, "KafkaTopic").values()}
    assert sorted(topics) == sorted(cfg.topic(name) for name in bus.TOPICS)
    kafka = list(objects(rendered, "Kafka"))
    for name, topic in topics.items():
        assert topic["spec"]["partitions"] == cfg.kafka.partitions, f"{name}: partitions != KAFKA_PARTITIONS"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] in kafka, f"{name}: not on a declared cluster"
        short = name.removeprefix(f"{cfg.app.namespace}.")
        for key, value in bus._TOPIC_CONFIGS.get(short, {}).items():
            assert str(topic["spec"].get("config", {}).get(key)) == value, f"{name}: {key} differs from the code's"


def test_brokers_address_the_strimzi_clusters_bootstrap_service(rendered):
    cfg = _cfg(rendered)
    (kafka,) = objects(rendered, "Kafka").values()
    service = f"{kafka['metadata']['name']}-kafka-bootstrap"
    ports = {str(listener["port"]) for listener in kafka["spec"]["kafka"]["listeners"] if not listener.get("tls")}
    for broker in cfg.kafka.brokers:
        host, _, port = broker.rpartition(":")
        assert host == service and port in ports, f"KAFKA_BROKERS {broker}: not {service}:{ports}"
    # KEDA's operator runs in another namespace: it needs the namespaced name.
    for name, so in objects(rendered, "ScaledObject").items():
        for trigger in so["spec"]["triggers"]:
            host, _, port = trigger["metadata"]["bootstrapServers"].rpartition(":")
            assert host in (f"{service}.{kafka['metadata']['namespace']}.svc",
                            f"{service}.{kafka['metadata']['namespace']}.svc.cluster.local"), f"{name}: {host}"
            assert port in ports, f"{name}: port {port}"


def test_each_function_scales_on_its_own_consumer_group_and_topic(rendered):
    cfg = _cfg(rendered)
    by_function = _deployments_by_function(rendered)
    scaled = {}
    for name, so in objects(rendered, "ScaledObject").items():
        target = so["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment"
        fn = next((f for f, d in by_function.items() if d["metadata"]["name"] == target["name"]), None)
        assert fn is not None, f"{name} scales {target['name']}, which runs no function"
        assert so["metadata"]["namespace"] == by_function[fn]["metadata"]["namespace"]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == cfg.group(fn), f"{name}: not {fn}'s consumer group"
        assert trigger["metadata"]["topic"] == cfg.topic(fn), f"{name}: not the topic {fn} consumes"
        scaled[fn] = so
    assert sorted(scaled) == sorted(FUNCTIONS)


def _deployment(docs: list[dict], name: str) -> dict:
    return objects(docs, "Deployment")[name]


def test_no_function_scales_beyond_its_topics_partitions(rendered):
    topics = {t["spec"]["topicName"]: t["spec"]["partitions"] for t in objects(rendered, "KafkaTopic").values()}
    for name, so in objects(rendered, "ScaledObject").items():
        spec, topic = so["spec"], so["spec"]["triggers"][0]["metadata"]["topic"]
        assert topic in topics, f"{name}: no KafkaTopic {topic}"
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= topics[topic], \
            f"{name}: replicas {spec['minReplicaCount']}..{spec['maxReplicaCount']}, {topics[topic]} partitions"
        assert "replicas" not in _deployment(rendered, spec["scaleTargetRef"]["name"])["spec"], \
            f"{name}: the Deployment sets replicas, which every apply would reset under KEDA"


# ---- selectors and references -------------------------------------------------------------------

def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_selectors_match_their_pods_and_references_resolve(rendered):
    deployments = objects(rendered, "Deployment")
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments.items()}
    for name, dep in deployments.items():
        assert _selects(dep["spec"]["selector"]["matchLabels"], pods[name]), f"Deployment {name}: selector"
        others = [o for o in deployments if o != name and _selects(dep["spec"]["selector"]["matchLabels"], pods[o])]
        assert not others, f"Deployment {name}'s selector also matches the pods of {others}"
    for name, pdb in objects(rendered, "PodDisruptionBudget").items():
        matched = [d for d, labels in pods.items() if _selects(pdb["spec"]["selector"]["matchLabels"], labels)]
        assert len(matched) == 1, f"PodDisruptionBudget {name} covers {matched}"
    services = objects(rendered, "Service")
    for name, svc in services.items():
        matched = [d for d, labels in pods.items() if _selects(svc["spec"]["selector"], labels)]
        assert matched, f"Service {name} selects no pods"
        for port in svc["spec"]["ports"]:
            for d in matched:
                names = {p.get("name") for c in _containers(deployments[d]) for p in c.get("ports", [])}
                numbers = {p["containerPort"] for c in _containers(deployments[d]) for p in c.get("ports", [])}
                assert port["targetPort"] in names | numbers, f"Service {name}: {d} has no port {port['targetPort']}"
    for name, ingress in objects(rendered, "Ingress").items():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] in services, f"Ingress {name}: no Service {backend['name']}"
                ports = {p.get("name") for p in services[backend["name"]]["spec"]["ports"]}
                assert backend["port"].get("name") in ports or backend["port"].get("number"), f"Ingress {name}"
    configmaps, secrets = objects(rendered, "ConfigMap"), objects(rendered, "Secret")
    for doc in _workloads(rendered):
        for container in _containers(doc):
            for source in container.get("envFrom", []):
                ref, pool = ((source["configMapRef"], configmaps) if "configMapRef" in source
                             else (source["secretRef"], secrets))
                assert ref["name"] in pool, f"{doc['metadata']['name']}: no {ref['name']}"
