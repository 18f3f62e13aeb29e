"""schemathesis against the live gateway: every operation of docs/openapi.yaml gets generated
requests (valid and invalid), and every answer must be no server error, a status the document lists
for the operation, JSON, and of the documented shape.

Bounded and seeded for `make test` (``FUZZ_EXAMPLES`` examples per operation, default 12;
derandomized, so a run repeats). A longer run: ``FUZZ_EXAMPLES=500 python -m pytest
tests/integration/test_openapi_fuzz.py`` (docs/SECURITY.md).
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from tests.integration.test_security import call

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# These end the caller's sessions: each of their examples gets a session of its own.
SESSION_ENDING = {("POST", "/api/v1/auth/logout"), ("POST", "/api/v1/auth/logout-all"),
                  ("PUT", "/api/v1/user/password")}

schema = schemathesis.openapi.from_path(DOC)


@pytest.fixture(scope="module")
def gw(module_procs):
    for name in ("register", "login", "send", "deliver"):
        module_procs.function(name)
    return module_procs.gateway()


@pytest.fixture(scope="module")
def account(gw):
    name = "f" + uuid.uuid4().hex[:12]
    status, _, body = call(gw, "POST", "/api/v1/auth/register", {"username": name, "password": "correct horse"})
    assert status == 201, body
    return {"username": name, "password": "correct horse"}


def session(gw, account) -> str:
    status, _, body = call(gw, "POST", "/api/v1/auth/login", account)
    assert status == 200, body
    return body["data"]["token"]


@pytest.fixture(scope="module")
def token(gw, account):
    return session(gw, account)


@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case, gw, account, token):
    if (case.method.upper(), case.path) in SESSION_ENDING:
        token = session(gw, account)
    case.call_and_validate(base_url=gw.base, headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)
