"""Register, login and the profile through the real pipeline: gateway (gunicorn, gevent) → Kafka →
register/login functions → MariaDB → reply over Redis."""
import time
import uuid

import pytest

from common import auth, bus, config as config_mod

from tests.integration.conftest import wait_for


@pytest.fixture(scope="module")
def api(module_procs):
    module_procs.function("register")
    module_procs.function("login")
    return module_procs.gateway()


def _name():
    return "u" + uuid.uuid4().hex[:10]


def test_register_login_and_use_the_token(api):
    name = _name()
    status, body = api.call("POST", "/api/v1/auth/register",
                            {"username": name, "password": "correct-horse", "email": f"{name}@example.org"})
    assert status == 201 and body["code"] == 0
    user = body["data"]
    assert user["username"] == name and user["nickname"] == name and "password_hash" not in user

    status, body = api.call("POST", "/api/v1/auth/login", {"username": name, "password": "correct-horse"})
    assert status == 200 and body["code"] == 0
    token = body["data"]["token"]
    assert body["data"]["expires_in"] > 0 and body["data"]["user"]["id"] == user["id"]

    status, body = api.call("GET", "/api/v1/user/profile", token=token)
    assert status == 200 and body["data"]["id"] == user["id"]
    status, body = api.call("PUT", "/api/v1/user/profile", {"nickname": "Ally"}, token=token)
    assert status == 200 and body["data"]["nickname"] == "Ally"
    assert api.call("GET", "/api/v1/user/profile", token=token)[1]["data"]["nickname"] == "Ally"


def test_duplicate_username_is_409_30002(api):
    name = _name()
    assert api.call("POST", "/api/v1/auth/register", {"username": name, "password": "pass-word-1"})[0] == 201
    status, body = api.call("POST", "/api/v1/auth/register", {"username": name, "password": "pass-word-2"})
    assert (status, body["code"]) == (409, 30002)


@pytest.mark.parametrize("body, field", [
    ({"password": "long-enough"}, "username"),
    ({"username": "x", "password": "long-enough"}, "username"),
    ({"username": "valid_name", "password": "short"}, "password"),
    ({"username": "valid_name", "password": "long-enough", "email": "not-an-email"}, "email"),
])
def test_invalid_registration_is_400_10002_naming_the_field(api, body, field):
    status, reply = api.call("POST", "/api/v1/auth/register", body)
    assert (status, reply["code"], reply["field"]) == (400, 10002, field)


def test_malformed_json_is_400_10002(api):
    status, reply = api.call("POST", "/api/v1/auth/login", raw=b"{not json")
    assert (status, reply["code"]) == (400, 10002)


def test_wrong_password_and_unknown_user_look_the_same(api):
    name = _name()
    api.call("POST", "/api/v1/auth/register", {"username": name, "password": "right-password"})
    wrong = api.call("POST", "/api/v1/auth/login", {"username": name, "password": "wrong-password"})
    unknown = api.call("POST", "/api/v1/auth/login", {"username": _name(), "password": "wrong-password"})
    assert wrong == unknown == (401, {"code": 30003, "message": "invalid username or password"})


def test_profile_refuses_missing_forged_and_expired_tokens(api, cfg):
    name = _name()
    user = api.call("POST", "/api/v1/auth/register", {"username": name, "password": "right-password"})[1]["data"]
    expired = auth.issue_token(user["id"], cfg.jwt, now=time.time() - cfg.jwt.ttl_seconds - 10)
    forged = auth.issue_token(user["id"], type(cfg.jwt)("f" * 40, 3600, cfg.jwt.issuer))
    assert api.call("GET", "/api/v1/user/profile")[1]["code"] == 30005
    assert api.call("GET", "/api/v1/user/profile", token="garbage")[1]["code"] == 30005
    assert api.call("GET", "/api/v1/user/profile", token=forged) == (401, {"code": 30005, "message": "invalid token"})
    assert api.call("GET", "/api/v1/user/profile", token=expired) == (401, {"code": 30004, "message": "token expired"})


def test_missing_function_reply_is_a_clear_timeout(start_gateway, base_env):
    # A namespace whose topics exist but where no register function runs: never answered.
    namespace = f"nofn{uuid.uuid4().hex[:6]}"
    bus.ensure_topics(config_mod.load({**base_env, "PINGME_NAMESPACE": namespace}), ["register"])
    lonely = start_gateway(PINGME_NAMESPACE=namespace, KAFKA_REQUEST_TIMEOUT_MS="800")
    started = time.monotonic()
    status, reply = lonely.call("POST", "/api/v1/auth/register", {"username": _name(), "password": "long-enough"})
    assert (status, reply["code"]) == (504, 10008)
    assert time.monotonic() - started < 5


def test_health_and_version(api):
    status, body = api.call("GET", "/health")
    assert status == 200 and body["data"]["status"] == "ok"
    assert set(body["data"]["checks"]) == {"db", "redis", "kafka"}
    status, body = api.call("GET", "/version")
    assert status == 200 and body["data"]["version"] and body["data"]["build"]["commit"]


def test_health_is_503_while_redis_is_down(api, services):
    services("stop", "redis")
    try:
        status, body = api.call("GET", "/health")
        assert status == 503 and body["code"] == 20002
        assert body["data"]["checks"]["redis"]["ok"] is False and body["data"]["checks"]["db"]["ok"] is True
    finally:
        services("start", "redis")
    wait_for(lambda: api.call("GET", "/health")[0] == 200, timeout=20, what="health back to 200")
