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


@pytest.mark.parametrize("command", [
    ["-m", "gunicorn", "-c", "gateway/gunicorn.conf.py", "gateway.wsgi:app"],
    ["-m", "functions", "all"],
])
def test_a_bad_production_secret_stops_the_process_with_one_line(command):
    """Not a traceback, not a restart loop: exit non-zero with the key named."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "APP_CONF": "/dev/null", "APP_ENV": "production", "JWT_SECRET": "short",
           "APP_PORT": "1", "LOG_FORMAT": "text"}
    done = subprocess.run([sys.executable, *command], cwd=config.REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    output = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode != 0
    assert len(output) == 1 and "JWT_SECRET (jwt.secret): production needs a secret" in output[0], output
