import pytest

from common import config
from common.config import ConfigError, load

STRONG = "s" * 40


def test_defaults_load_without_a_file(tmp_path):
    cfg = load({"APP_CONF": str(_write(tmp_path, ""))})
    assert cfg.app.port == 8080
    assert cfg.kafka.retry_max_attempts == 3
    assert cfg.kafka.retry_initial_backoff_ms == 100
    assert cfg.kafka.retry_max_backoff_ms == 10_000
    assert cfg.kafka.retry_multiplier == 2.0
    assert cfg.kafka.enable_dlq is True
    assert cfg.db.engine == "sqlite"


def test_yaml_then_environment_override(tmp_path):
    path = _write(tmp_path, "app:\n  port: 9000\nkafka:\n  brokers: [a:1, b:2]\n")
    cfg = load({"APP_CONF": str(path)})
    assert cfg.app.port == 9000
    assert cfg.kafka.brokers == ("a:1", "b:2")
    cfg = load({"APP_CONF": str(path), "APP_PORT": "9100", "KAFKA_BROKERS": "x:9, y:10",
                "RETRY_MULTIPLIER": "3", "ENABLE_DLQ": "false", "DB_ENGINE": "MySQL"})
    assert cfg.app.port == 9100
    assert cfg.kafka.brokers == ("x:9", "y:10")
    assert cfg.kafka.retry_multiplier == 3.0
    assert cfg.kafka.enable_dlq is False
    assert cfg.db.engine == "mysql"


@pytest.mark.parametrize("env, key", [
    ({"APP_PORT": "eighty"}, "APP_PORT"),
    ({"APP_PORT": "70000"}, "APP_PORT"),
    ({"DB_ENGINE": "oracle"}, "DB_ENGINE"),
    ({"KAFKA_BROKERS": "nohostport"}, "KAFKA_BROKERS"),
    ({"ENABLE_DLQ": "maybe"}, "ENABLE_DLQ"),
    ({"RETRY_MULTIPLIER": "0.5"}, "RETRY_MULTIPLIER"),
    ({"RETRY_INITIAL_BACKOFF_MS": "20000", "RETRY_MAX_BACKOFF_MS": "1000"}, "retry_initial_backoff_ms"),
])
def test_bad_value_names_the_key(tmp_path, env, key):
    with pytest.raises(ConfigError, match=key):
        load({"APP_CONF": str(_write(tmp_path, "")), **env})


def test_bad_yaml_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="redis.port"):
        load({"APP_CONF": str(_write(tmp_path, "redis:\n  port: many\n"))})
    with pytest.raises(ConfigError, match="redis.colour"):
        load({"APP_CONF": str(_write(tmp_path, "redis:\n  colour: red\n"))})
    with pytest.raises(ConfigError, match="APP_CONF"):
        load({"APP_CONF": str(tmp_path / "missing.yml")})


@pytest.mark.parametrize("secret", [None, "", "short", config.DEV_JWT_SECRET])
def test_production_refuses_weak_jwt_secret(tmp_path, secret):
    env = {"APP_CONF": str(_write(tmp_path, "")), "APP_ENV": "production", "DB_ENGINE": "mysql"}
    if secret is not None:
        env["JWT_SECRET"] = secret
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        load(env)


def test_production_accepts_strong_secret_and_refuses_sqlite(tmp_path):
    env = {"APP_CONF": str(_write(tmp_path, "")), "APP_ENV": "production", "JWT_SECRET": STRONG}
    with pytest.raises(ConfigError, match="DB_ENGINE"):
        load(env)
    assert load({**env, "DB_ENGINE": "mysql"}).production


def test_secrets_do_not_show_in_repr(tmp_path):
    cfg = load({"APP_CONF": str(_write(tmp_path, "")), "JWT_SECRET": STRONG, "DB_PASSWORD": "hunter22"})
    assert STRONG not in repr(cfg) and "hunter22" not in repr(cfg)


def test_names_are_namespaced(tmp_path):
    cfg = load({"APP_CONF": str(_write(tmp_path, "")), "PINGME_NAMESPACE": "t1"})
    assert cfg.topic("send") == "t1.send"
    assert cfg.group("send") == "t1.send"
    assert cfg.redis_key("gw", "abc") == "t1:gw:abc"


def test_markdown_table_lists_every_setting():
    table = config.markdown_table()
    for setting in config.SETTINGS:
        assert f"`{setting.env}`" in table


def _write(tmp_path, text):
    path = tmp_path / "conf.yml"
    path.write_text(text)
    return path


def test_readme_configuration_table_matches_the_code():
    readme = (config.REPO_ROOT / "README.md").read_text()
    assert config.markdown_table() in readme, "regenerate it: python -m common.config --markdown"
