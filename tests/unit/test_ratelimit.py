"""The pure parts of common/ratelimit.py: rate syntax, the in-memory bucket, the client address
behind trusted proxies, and their configuration (the Redis limiter: tests/integration)."""
import pytest

from common import config
from common.ratelimit import Bucket, Decision, Rate, client_address, parse_networks


@pytest.mark.parametrize("text, count, period", [
    ("10/1m", 10, 60), ("30/10s", 30, 10), ("5/h", 5, 3600), (" 2 / 3d ", 2, 3 * 86400), ("1/1S", 1, 1)])
def test_rate_syntax(text, count, period):
    assert Rate.parse(text) == Rate(count, period)


@pytest.mark.parametrize("text", ["", "10", "10/", "10/1x", "-1/1m", "0/1m", "10/0s", "1.5/1m", "10/1m\n5",
                                  "ten/1m", "10/1mm"])
def test_bad_rates_are_refused(text):
    with pytest.raises(ValueError):
        Rate.parse(text)


def test_bucket_allows_a_burst_then_one_per_interval():
    bucket = Bucket(Rate(3, 1))  # 3 at once, then one every 333⅓ ms
    assert [bucket.take(1000) for _ in range(3)] == [0, 0, 0]
    assert bucket.take(1000) == 334  # the retry hint: when the 4th would be allowed
    assert bucket.take(1000) == 334  # a refused request uses nothing up
    assert bucket.take(1333) == 1
    assert bucket.take(1334) == 0
    assert bucket.take(1334) == 333
    assert [bucket.take(5000) for _ in range(3)] == [0, 0, 0]  # idle: full again, never more than 3
    assert bucket.take(5000) > 0


def test_a_bucket_never_allows_more_than_its_rate_over_time():
    bucket, allowed = Bucket(Rate(10, 1)), 0
    for ms in range(0, 10_000, 2):  # 5,000 attempts in 10 s, 500/s
        allowed += bucket.take(ms) == 0
    assert 10 * 10 <= allowed <= 10 * 10 + 10  # 10/s sustained plus the first burst


def test_decision_retry_after_in_whole_seconds():
    assert Decision(False, 1).retry_after_s == 1
    assert Decision(False, 1001).retry_after_s == 2
    assert Decision(True).retry_after_s == 0


TRUSTED = parse_networks(["10.0.0.0/8", "192.168.1.5"])


@pytest.mark.parametrize("peer, header, trusted, expected", [
    ("203.0.113.9", None, TRUSTED, "203.0.113.9"),
    # no proxy configured: the header is the client's own word and is ignored
    ("203.0.113.9", "1.2.3.4", (), "203.0.113.9"),
    # a peer that is not a trusted proxy cannot name another client
    ("203.0.113.9", "1.2.3.4", TRUSTED, "203.0.113.9"),
    ("10.1.2.3", "198.51.100.7", TRUSTED, "198.51.100.7"),
    # the client put a fake address first; the trusted proxies appended the real one: read from the right
    ("10.1.2.3", "6.6.6.6, 198.51.100.7, 192.168.1.5", TRUSTED, "198.51.100.7"),
    ("10.1.2.3", "6.6.6.6, 198.51.100.7", TRUSTED, "198.51.100.7"),
    # a garbled hop: do not guess past it
    ("10.1.2.3", "198.51.100.7, not-an-ip", TRUSTED, "10.1.2.3"),
    ("10.1.2.3", "", TRUSTED, "10.1.2.3"),
    # every hop a trusted proxy: the left-most is the best there is
    ("10.1.2.3", "10.9.9.9, 10.8.8.8", TRUSTED, "10.9.9.9"),
    ("::1", "2001:db8::1", parse_networks(["::1"]), "2001:db8::1"),
    (None, None, TRUSTED, "unknown"),
])
def test_client_address(peer, header, trusted, expected):
    assert client_address(peer, header, trusted) == expected


def test_bad_network_is_named():
    with pytest.raises(ValueError, match="'10.0.0.300'"):
        parse_networks(["10.0.0.0/8", "10.0.0.300"])


def test_rate_limit_configuration(tmp_path):
    cfg = config.load({"APP_CONF": "/dev/null"})
    assert cfg.ratelimit.enabled is True
    assert cfg.ratelimit.login_account == Rate(10, 60)
    assert cfg.ratelimit.trusted_proxies == ()
    assert set(cfg.ratelimit.rules()) == {"login_account", "login_address", "register_address", "api_user",
                                          "directory_user", "ws_send_user", "ws_typing_user", "ws_sync_user"}
    cfg = config.load({"APP_CONF": "/dev/null", "RATE_LIMIT_LOGIN_ACCOUNT": "off",
                       "RATE_LIMIT_WS_SEND_USER": "100/10s", "TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    assert cfg.ratelimit.login_account is None
    assert cfg.ratelimit.ws_send_user == Rate(100, 10)
    assert [str(n) for n in cfg.ratelimit.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    conf = tmp_path / "c.yml"
    conf.write_text("ratelimit:\n  login_address: 5/1m\n  trusted_proxies: [127.0.0.1]\n")
    cfg = config.load({"APP_CONF": str(conf)})
    assert cfg.ratelimit.login_address == Rate(5, 60)
    assert [str(n) for n in cfg.ratelimit.trusted_proxies] == ["127.0.0.1/32"]


@pytest.mark.parametrize("env, key", [
    ({"RATE_LIMIT_LOGIN_ACCOUNT": "10 per minute"}, "RATE_LIMIT_LOGIN_ACCOUNT (ratelimit.login_account)"),
    ({"TRUSTED_PROXIES": "10.0.0.0/33"}, "TRUSTED_PROXIES (ratelimit.trusted_proxies)"),
    ({"RATE_LIMIT_ENABLED": "maybe"}, "RATE_LIMIT_ENABLED (ratelimit.enabled)"),
])
def test_bad_rate_limit_settings_name_the_key(env, key):
    with pytest.raises(config.ConfigError) as err:
        config.load({"APP_CONF": "/dev/null", **env})
    assert str(err.value).startswith(key + ":")
