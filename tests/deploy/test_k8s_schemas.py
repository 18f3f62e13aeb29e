"""deploy/k8s, rendered by kustomize, against the real schemas: every object validated by kubeconform
(Kubernetes' own schemas for the core kinds, the CRDs of KEDA v2.20.2 and Strimzi 1.2.0 for the
rest), and every ScaledObject's Kafka trigger against KEDA's own list of that scaler's metadata.

The schemas kubeconform reads are generated here, into the cache (never committed):
- core kinds: kubernetes-validate's bundled schemas (requirements-test.txt), with their `$id`
  dropped and `/api/_definitions.json#` references made local, without which kubeconform silently
  answers "could not find schema" (../shared/FACTS.md);
- custom resources: each CRD version's `openAPIV3Schema`, made strict (an unknown field is an error,
  as with the API server's `fieldValidation=Strict`) except where the CRD preserves unknown fields.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.version import __version__ as kv_version

from tests.deploy.conftest import CACHE, objects, tool

K8S_VERSION = "1.37.0"  # the newest schemas kubernetes-validate 1.37 bundles
CONVERTER = "1"        # bump when the conversion below changes: a new cache folder
KAFKA_4_OLDEST_PROTOCOL = (2, 1)  # Kafka 4 removed every request version older than 2.1 (KIP-896)


def _kind_file(kind: str, api_version: str) -> str:
    """kubeconform's file name for a kind: `{{ .ResourceKind }}{{ .KindSuffix }}.json`."""
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0].lower()}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def _strict(node):
    """A CRD schema in which an object with declared properties refuses any other."""
    if isinstance(node, dict):
        node = {key: _strict(value) for key, value in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


def _write(path: Path, schema: dict) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(schema))
    tmp.replace(path)  # atomic: a parallel run never reads half a file


def _core_schema(source: Path) -> dict:
    text = source.read_text().replace('"/api/_definitions.json#', '"_definitions.json#')
    schema = json.loads(text)
    schema.pop("$id", None)
    return schema


@pytest.fixture(scope="session")
def schema_dir(crd_dir, rendered) -> Path:
    """A folder of JSON schemas named as kubeconform looks them up, for every kind rendered."""
    crd_files = sorted(p for p in crd_dir.glob("*.yaml"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in crd_files)).hexdigest()[:12]
    folder = CACHE / "k8s-schemas" / f"kv{kv_version}-k{K8S_VERSION}-crd{digest}-c{CONVERTER}"
    folder.mkdir(parents=True, exist_ok=True)

    bundled = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    if not (folder / "_definitions.json").exists():
        _write(folder / "_definitions.json", _core_schema(bundled / "_definitions.json"))
    for crd_file in crd_files:
        for crd in yaml.safe_load_all(crd_file.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                target = folder / _kind_file(kind, f"{group}/{version['name']}")
                if not target.exists():
                    _write(target, _strict(version["schema"]["openAPIV3Schema"]))
    for doc in rendered:
        name = _kind_file(doc["kind"], doc["apiVersion"])
        if not (folder / name).exists() and (bundled / name).exists():
            _write(folder / name, _core_schema(bundled / name))
    return folder


def kubeconform(schema_dir: Path, docs: list[dict]) -> list[dict]:
    """kubeconform's verdict on each object: [{kind, name, status, msg}]."""
    out = subprocess.run(
        [tool("kubeconform"), "-strict", "-output", "json", "-verbose",
         "-schema-location", f"{schema_dir}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json", "-"],
        input=yaml.safe_dump_all(docs), capture_output=True, text=True, timeout=120)
    assert out.stdout.strip(), f"kubeconform printed nothing (exit {out.returncode}): {out.stderr}"
    return json.loads(out.stdout)["resources"]


def test_every_object_is_valid_against_kubernetes_and_crd_schemas(schema_dir, rendered):
    results = kubeconform(schema_dir, rendered)
    # Every object was looked at: none skipped for want of a schema.
    assert len(results) == len(rendered)
    bad = [f"{r['kind']}/{r['name']}: {r['status']} {r.get('msg', '')}" for r in results
           if r["status"] != "statusValid"]
    assert not bad, "\n".join(bad)
    assert {r["kind"] for r in results} >= {"Deployment", "Service", "Ingress", "PodDisruptionBudget",
                                            "ConfigMap", "Secret", "Kafka", "KafkaNodePool",
                                            "KafkaTopic", "ScaledObject"}


def _kafka_scaler(crd_dir: Path) -> dict[str, dict]:
    doc = json.loads(next(crd_dir.glob("scalers-schema-v*.json")).read_text())
    scaler = next(s for s in doc["scalers"] if s["type"] == "kafka")
    return {p["name"]: p for p in scaler["parameters"]}


def test_kafka_triggers_use_only_metadata_kedas_kafka_scaler_reads(crd_dir, rendered):
    params = _kafka_scaler(crd_dir)
    required = {name for name, p in params.items() if not p.get("optional") and "default" not in p}
    problems = []
    for name, so in objects(rendered, "ScaledObject").items():
        for trigger in so["spec"]["triggers"]:
            assert trigger["type"] == "kafka", f"{name}: trigger {trigger['type']}"
            metadata = trigger["metadata"]
            for key, value in metadata.items():
                param = params.get(key)
                if param is None or not param.get("metadataVariableReadable"):
                    problems.append(f"{name}: {key!r} is not metadata of KEDA's kafka scaler")
                elif not isinstance(value, str):
                    problems.append(f"{name}: {key} = {value!r} must be a string")
                elif param.get("allowedValue") and value not in param["allowedValue"]:
                    problems.append(f"{name}: {key} = {value!r}, not one of {param['allowedValue']}")
            problems += [f"{name}: {key} is required" for key in sorted(required - set(metadata))]
    assert not problems, "\n".join(problems)


def test_kafka_triggers_speak_a_protocol_version_kafka_4_accepts(rendered):
    for name, so in objects(rendered, "ScaledObject").items():
        for trigger in so["spec"]["triggers"]:
            version = trigger["metadata"].get("version")
            assert isinstance(version, str), f"{name}: no version: KEDA's default (1.0.0) is refused by Kafka 4"
            parts = tuple(int(p) for p in version.split("."))
            assert len(parts) == 3 and parts[:2] >= KAFKA_4_OLDEST_PROTOCOL, f"{name}: version {version}"
