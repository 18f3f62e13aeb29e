"""The operator CLI against the real database: output, --json, exit codes; and /metrics."""
import json
import subprocess
import sys
import urllib.request

from common.models import DeadLetter, db, now_ms

from tests.integration.conftest import REPO


def cli(base_env, *args, **env):
    return subprocess.run([sys.executable, "-m", "common.cli", *args], cwd=REPO, env={**base_env, **env},
                          capture_output=True, text=True, timeout=60)


def _letter(cfg, code, value=b"raw \xff bytes", age_ms=0):
    with db.connection_context():
        return DeadLetter.create(dlq_topic=cfg.topic("dlq"), dlq_partition=0, dlq_offset=now_ms() + code,
                                 origin_topic=cfg.topic("cli-origin"), key=b"k", value=value, code=code,
                                 error="test", attempts=3, created_at=now_ms() - age_ms)


def test_list_show_depth_purge(cfg, base_env):
    old = _letter(cfg, 50002, age_ms=3_600_000)
    new = _letter(cfg, 50006, value=b'{"a":1}')
    listed = json.loads(cli(base_env, "dlq", "list", "--topic", cfg.topic("cli-origin"), "--json").stdout)
    assert [row["id"] for row in listed["dead_letters"]] == [old.id, new.id]
    assert listed["dead_letters"][0]["code_name"] == "UNMARSHAL_FAILED"
    human = cli(base_env, "dlq", "list", "--code", "50002", "--topic", cfg.topic("cli-origin"))
    assert human.returncode == 0 and "1 dead letter(s)" in human.stdout

    shown = json.loads(cli(base_env, "--json", "dlq", "show", str(old.id)).stdout)
    assert shown["value_base64"] and shown["key"] == "k"
    assert json.loads(cli(base_env, "--json", "dlq", "show", str(new.id)).stdout)["value"] == '{"a":1}'

    depth = json.loads(cli(base_env, "dlq", "depth", "--json").stdout)["depth"]
    assert depth["50002"] >= 1 and depth["50006"] >= 1

    purged = cli(base_env, "dlq", "purge", "--older-than", "1800", "--code", "50002", "--json")
    assert purged.returncode == 0 and json.loads(purged.stdout)["purged"] >= 1
    with db.connection_context():
        assert DeadLetter.get_or_none(DeadLetter.id == old.id) is None
        assert DeadLetter.get_or_none(DeadLetter.id == new.id) is not None


def test_errors_exit_non_zero_with_one_line(base_env):
    missing = cli(base_env, "dlq", "show", "999999999")
    assert missing.returncode == 1 and "no dead letter 999999999" in missing.stderr
    assert cli(base_env, "dlq", "replay").returncode == 1
    assert cli(base_env, "dlq", "frobnicate").returncode == 2
    bad = cli(base_env, "dlq", "depth", DB_PORT="notaport")
    assert bad.returncode == 2 and "DB_PORT" in bad.stderr
    down = cli(base_env, "dlq", "depth", DB_PORT="1")
    assert down.returncode == 1 and "failed" in down.stderr


def test_metrics_show_dlq_depth_and_connections(cfg, gw1):
    _letter(cfg, 50007)
    with urllib.request.urlopen(gw1.base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'pingme_dlq_depth{code="50007"}' in text
    assert "pingme_ws_connections " in text
