"""docs/openapi.yaml is in step with the gateway: every route has its operation and no operation is
without a route, the document is valid OpenAPI 3.1 (its schemas valid JSON Schema 2020-12), and
each error response lists only codes whose HTTP status is that response's (common/errors.py)."""
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from jsonschema import Draft202012Validator

from common import config
from common.errors import Code

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
NOT_API = {"/", "/static/{filename}", "/ws", "/openapi.json"}  # the page, its files, the socket, this document
METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture(scope="module")
def doc():
    return yaml.safe_load(DOC.read_text())


def routes(tmp_path_factory) -> set[tuple[str, str]]:
    from gateway.app import create_app

    cfg = config.load({"APP_CONF": "/dev/null", "DB_PATH": str(tmp_path_factory.mktemp("db") / "x.db")})
    app = create_app(cfg, gateway=SimpleNamespace())
    found = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        if path not in NOT_API:
            found |= {(path, m.lower()) for m in rule.methods if m.lower() in METHODS}
    return found


def test_every_route_is_documented_and_nothing_else(doc, tmp_path_factory):
    documented = {(path, method) for path, item in doc["paths"].items() for method in item if method in METHODS}
    actual = routes(tmp_path_factory)
    assert actual - documented == set(), "routes without an operation in docs/openapi.yaml"
    assert documented - actual == set(), "operations in docs/openapi.yaml without a route"


def test_it_is_openapi_3_1_with_valid_schemas(doc):
    assert doc["openapi"].startswith("3.1.")
    operation_ids = []
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            operation_ids.append(operation["operationId"])
            assert operation["responses"], (path, method)
            for param in operation.get("parameters", ()):
                if param["in"] == "path":
                    assert param["required"] and "{" + param["name"] + "}" in path, (path, param["name"])
            assert set(re.findall(r"{(\w+)}", path)) == {
                p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"}, (path, method)
    assert len(operation_ids) == len(set(operation_ids))
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)


def _refs(node):
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_reference_resolves(doc):
    for ref in set(_refs(doc)):
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]


def test_error_responses_use_codes_of_their_status(doc):
    responses = doc["components"]["responses"]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if "$ref" not in response:
                    continue
                named = responses[response["$ref"].rsplit("/", 1)[1]]
                schema = named["content"]["application/json"]["schema"]["allOf"][1]["properties"]["code"]
                codes = schema.get("enum") or [schema["const"]]
                for code in codes:
                    assert Code(code).http_status == int(status), (path, method, status, code)


def test_the_document_is_served_as_json_and_its_absence_is_a_json_404(tmp_path):
    from gateway.app import create_app

    cfg = config.load({"APP_CONF": "/dev/null", "DB_PATH": str(tmp_path / "x.db")})
    app = create_app(cfg, gateway=SimpleNamespace())
    client = app.test_client()
    answer = client.get("/openapi.json")
    assert answer.status_code == 200 and answer.json == yaml.safe_load(DOC.read_text())
    app.config["OPENAPI_PATH"] = tmp_path / "missing.yaml"
    answer = client.get("/openapi.json")
    assert (answer.status_code, answer.json["code"]) == (404, 10005)
