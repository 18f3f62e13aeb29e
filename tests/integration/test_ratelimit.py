"""The shared rate limiter (common/ratelimit.py) against the real Redis: what two gateways see."""
import time
import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from common import bus, config as config_mod
from common.ratelimit import Limiter, Rate


@pytest.fixture(scope="module")
def rcfg(base_env):
    return config_mod.load(base_env)


@pytest.fixture
def ns(rcfg):
    """A namespace of this test's own (no key of another test or session is touched)."""
    return f"{rcfg.app.namespace}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def r(rcfg):
    client = bus.make_redis(rcfg)
    yield client
    client.close()


def test_burst_then_refused_with_a_retry_hint_then_allowed_again(r, ns):
    limiter = Limiter(r, ns, {"login_account": Rate(3, 1)})
    assert [limiter.check(("login_account", "alice")).allowed for _ in range(3)] == [True] * 3
    refused = limiter.check(("login_account", "alice"))
    assert not refused.allowed and refused.rule == "login_account"
    assert 1 <= refused.retry_after_ms <= 334
    assert limiter.check(("login_account", "bob")).allowed  # another key has its own budget
    time.sleep(refused.retry_after_ms / 1000 + 0.02)  # the hint is the condition: time must pass
    assert limiter.check(("login_account", "alice")).allowed
    assert not limiter.check(("login_account", "alice")).allowed


def test_gateways_share_the_count(rcfg, r, ns):
    """Two limiters with their own connections (two gateways) draw from one budget."""
    other = bus.make_redis(rcfg)
    try:
        gw1 = Limiter(r, ns, {"register_address": Rate(4, 60)})
        gw2 = Limiter(other, ns, {"register_address": Rate(4, 60)})
        answers = [(gw1 if i % 2 else gw2).check(("register_address", "10.0.0.1")).allowed for i in range(6)]
        assert answers == [True] * 4 + [False] * 2
        # 4 per 60 s: the next one in 15 s
        assert 14_000 <= gw1.check(("register_address", "10.0.0.1")).retry_after_ms <= 15_000
    finally:
        other.close()


def test_several_limits_are_charged_all_or_none(r, ns):
    limiter = Limiter(r, ns, {"login_account": Rate(5, 60), "login_address": Rate(2, 60)})
    hit = [("login_account", "carol"), ("login_address", "192.0.2.1")]
    assert limiter.check(*hit).allowed and limiter.check(*hit).allowed
    refused = limiter.check(*hit)
    assert (refused.allowed, refused.rule) == (False, "login_address")
    # the refusals did not use up the account's budget: 3 more from another address pass
    assert all(limiter.check(("login_account", "carol"), ("login_address", f"192.0.2.{i}")).allowed
               for i in (2, 3, 3))
    refused = limiter.check(("login_account", "carol"), ("login_address", "192.0.2.9"))
    assert (refused.allowed, refused.rule) == (False, "login_account")


def test_keys_are_namespaced_and_expire(r, ns):
    limiter = Limiter(r, ns, {"ws_sync_user": Rate(10, 10)})
    limiter.check(("ws_sync_user", 42))
    key = f"{ns}:rl:ws_sync_user:42"
    assert r.exists(key)
    assert 0 < r.pttl(key) <= 1_001  # the key lives only as long as its history matters (1 s here)
    assert r.keys(f"{ns}:*") == [key.encode()]


def test_unknown_or_disabled_limits_allow(r, ns):
    limiter = Limiter(r, ns, {"api_user": Rate(1, 60), "directory_user": None})
    assert limiter.check(("api_user", 1)).allowed
    assert not limiter.check(("api_user", 1)).allowed
    assert all(limiter.check(("directory_user", 1), ("nothing", 1)).allowed for _ in range(5))
    off = Limiter(r, ns, {"api_user": Rate(1, 60)}, enabled=False)
    assert off.check(("api_user", 1)).allowed
    assert not r.exists(f"{ns}:rl:directory_user:1")


def test_redis_down_lets_requests_through_and_reports_it(ns, caplog):
    """Fail open: an outage must not lock every user out (the per-connection bucket still holds)."""
    errors = []
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5,  # nothing listens on port 1
                       retry=Retry(NoBackoff(), 0))
    limiter = Limiter(dead, ns, {"login_account": Rate(1, 60)}, on_error=errors.append)
    assert limiter.check(("login_account", "dave")).allowed
    assert limiter.check(("login_account", "dave")).allowed
    assert len(errors) == 2 and isinstance(errors[0], redis.ConnectionError)
    assert "rate limit not checked (redis unavailable: ConnectionError); request allowed" in caplog.text
