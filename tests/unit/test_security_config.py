"""Settings of issue 13 outside the rate limits: the body timeout and who counts as an operator."""
import ipaddress

import pytest

from common import config


def test_defaults():
    cfg = config.load({"APP_CONF": "/dev/null"})
    assert cfg.app.body_timeout_ms == 10_000
    assert ipaddress.ip_address("127.0.0.1") in cfg.app.operator_networks[0]
    assert ipaddress.ip_address("::1") in cfg.app.operator_networks[1]
    assert cfg.app.operator_token == ""


def test_the_operator_token_is_a_secret():
    cfg = config.load({"APP_CONF": "/dev/null", "OPERATOR_TOKEN": "t" * 32, "OPERATOR_NETWORKS": "10.0.0.0/8"})
    assert "t" * 32 not in repr(cfg)
    assert [str(n) for n in cfg.app.operator_networks] == ["10.0.0.0/8"]
    with pytest.raises(config.ConfigError, match=r"^OPERATOR_TOKEN \(app.operator_token\): at least 32"):
        config.load({"APP_CONF": "/dev/null", "OPERATOR_TOKEN": "short"})


@pytest.mark.parametrize("env, key", [({"BODY_TIMEOUT_MS": "5"}, "BODY_TIMEOUT_MS"),
                                      ({"OPERATOR_NETWORKS": "localhost"}, "OPERATOR_NETWORKS")])
def test_bad_values_name_the_key(env, key):
    with pytest.raises(config.ConfigError, match=rf"^{key} "):
        config.load({"APP_CONF": "/dev/null", **env})
