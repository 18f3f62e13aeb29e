"""Fault injection on the real servers: the database goes away while messages flow.

Each scenario runs its own functions and gateway in a private namespace with its own retry
settings, stops the real MariaDB for a while, and checks what was stored afterwards.
Marked slow: ``pytest -m slow`` runs just these.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from kafka import KafkaConsumer

from common import bus, config as config_mod
from common.models import DeadLetter, Message, db

from tests.integration.conftest import REPO, wait_for
from tests.integration.test_messaging import Client, make_users, mid

pytestmark = pytest.mark.slow


def _scenario(base_env, start_function, start_gateway, functions=("send", "deliver", "retry", "dlq"), **env):
    """Functions and a gateway in a private namespace with their own settings, ready to use."""
    env = {"PINGME_NAMESPACE": f"f{uuid.uuid4().hex[:8]}", **env}
    cfg = config_mod.load({**base_env, **env})
    bus.ensure_topics(cfg)
    procs = {name: start_function(name, **env) for name in functions}
    return cfg, env, procs, start_gateway(**env)


def _send_during_outage(services, client, to_user_id, count: int, seconds: float) -> list[str]:
    """Stop MariaDB, send ``count`` messages, wait ``seconds``, start it again; the msg_ids."""
    ids = [mid() for _ in range(count)]
    services("stop", "mariadb")
    try:
        for i, msg in enumerate(ids):
            client.send("send", {"msg_id": msg, "to_user_id": to_user_id, "content": f"outage {i}"})
        time.sleep(seconds)
    finally:
        services("start", "mariadb")
    return ids


def _stored(msg_ids) -> list[Message]:
    with db.connection_context():
        return list(Message.select().where(Message.msg_id.in_(list(msg_ids))))


def _assert_once_gap_free(rows, expected_ids):
    assert sorted(r.msg_id for r in rows) == sorted(expected_ids)  # each exactly once
    for conversation_id in {r.conversation_id for r in rows}:
        seqs = sorted(r.seq for r in rows if r.conversation_id == conversation_id)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


def test_short_database_outage_is_absorbed_by_retries(cfg, base_env, start_function, start_gateway, services):
    # Budget 1 + 2 + 4 + 8 = 15 s of retries; the outage lasts about 3 s.
    scen_cfg, _, _, gw = _scenario(base_env, start_function, start_gateway, RETRY_MAX_ATTEMPTS="4",
                                   RETRY_INITIAL_BACKOFF_MS="1000", RETRY_MULTIPLIER="2")
    alice, bob = make_users(cfg, 2)
    a, b = Client(gw, alice), Client(gw, bob)
    ids = _send_during_outage(services, a, bob.id, count=20, seconds=2)
    acks = {a.expect("message_ack", timeout=60)["msg_id"] for _ in ids}
    assert acks == set(ids)
    got = {b.expect("message", timeout=60)["msg_id"] for _ in ids}
    assert got == set(ids)
    _assert_once_gap_free(_stored(ids), ids)
    with db.connection_context():
        assert DeadLetter.select().where(DeadLetter.origin_topic == scen_cfg.topic("send")).count() == 0
    a.close(), b.close()


def test_long_outage_dead_letters_then_replay_stores_each_once(cfg, base_env, start_function, start_gateway,
                                                               services):
    # Budget 200 + 400 + 800 ms: a 5 s outage exhausts it.
    scen_cfg, env, _, gw = _scenario(base_env, start_function, start_gateway, RETRY_MAX_ATTEMPTS="3",
                                     RETRY_INITIAL_BACKOFF_MS="200", RETRY_MULTIPLIER="2")
    alice, bob = make_users(cfg, 2)
    a = Client(gw, alice)
    ids = _send_during_outage(services, a, bob.id, count=5, seconds=5)

    send_topic = scen_cfg.topic("send")

    def dead():
        with db.connection_context():
            return list(DeadLetter.select().where(DeadLetter.origin_topic == send_topic))
    letters = wait_for(lambda: len(dead()) >= len(ids) and dead(), timeout=60, what="the dead letters")
    assert {d.code for d in letters} == {50006} and {d.attempts for d in letters} == {3}
    assert "20001" in letters[0].error
    assert _stored(ids) == []

    # The backoff schedule, observed on the retry topic's real timestamps.
    consumer = KafkaConsumer(scen_cfg.topic("retry"), bootstrap_servers=list(scen_cfg.kafka.brokers),
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    by_event: dict[bytes, list] = {}  # the event's bytes travel unchanged through retries
    for record in consumer:
        if bus.headers_to_dict(record.headers)[bus.H_ORIGIN_TOPIC] == send_topic:
            by_event.setdefault(record.value, []).append(record)
    consumer.close()
    tolerance_ms = 500  # scheduling noise on a loaded 2-core machine: polls, flushes, the GIL
    exhausted_at = {bytes(d.value): d.last_failed_at for d in letters}
    assert len(by_event) == len(ids)
    for value, records in by_event.items():
        headers = [bus.headers_to_dict(r.headers) for r in records]
        assert [h[bus.H_ATTEMPT] for h in headers] == ["1", "2", "3"]
        # Record n is written when attempt n-1 failed; the next failure (record n+1, or the dead
        # letter after the last) can only follow the re-publish at record n's due time.
        failures = [r.timestamp for r in records] + [exhausted_at[value]]
        gaps = [later - earlier for earlier, later in zip(failures, failures[1:])]
        for gap, delay in zip(gaps, [200, 400, 800]):
            assert delay <= gap <= delay + tolerance_ms, (gaps, "expected 200, 400, 800 ms")

    cli_env = {**base_env, **env}
    done = subprocess.run([sys.executable, "-m", "common.cli", "--json", "dlq", "replay", "--all",
                           "--code", "50006", "--topic", send_topic],
                          cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["count"] == len(ids)
    wait_for(lambda: len(_stored(ids)) == len(ids), timeout=60, what="the replayed messages stored")
    acks = {a.expect("message_ack", timeout=30)["msg_id"] for _ in ids}
    assert acks == set(ids)
    # A second replay (of the same letters, forced) stores nothing twice.
    again = subprocess.run([sys.executable, "-m", "common.cli", "dlq", "replay", "--all", "--again",
                            "--topic", send_topic], cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    time.sleep(2)
    _assert_once_gap_free(_stored(ids), ids)
    listed = subprocess.run([sys.executable, "-m", "common.cli", "dlq", "list", "--topic", send_topic, "--json"],
                            cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["dead_letters"]
    assert len(rows) == len(ids) and all(row["replayed_at"] for row in rows)
    a.close()


def _load(base_env, env, gw, out, rate=150, duration=12, pairs=5):
    """Start the load tool against ``gw`` in the background; returns (process, result path)."""
    return subprocess.Popen([sys.executable, "-m", "tests.load.chat_load", "--url", gw.base, "--pairs", str(pairs),
                             "--rate", str(rate), "--duration", str(duration), "--out", str(out)],
                            cwd=REPO, env={**base_env, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


CHAT = ("register", "login", "send", "deliver", "retry", "dlq")


def test_killing_send_and_deliver_workers_loses_nothing(base_env, start_function, start_gateway, tmp_path):
    import signal

    _, env, procs, gw = _scenario(base_env, start_function, start_gateway, CHAT)
    out = tmp_path / "chaos.json"
    load = _load(base_env, env, gw, out)
    kills = 0
    time.sleep(4)  # registration and connections first
    while load.poll() is None and kills < 8:
        name = ("send", "deliver")[kills % 2]
        procs[name].signal(signal.SIGKILL)
        procs[name].popen.wait()
        procs[name] = start_function(name, ready=False, **env)
        kills += 1
        time.sleep(1.5)
    output, _ = load.communicate(timeout=180)
    result = json.loads(out.read_text())
    print(f"chaos: {result['sent']} messages, {kills} kills, lost {result['lost']}, "
          f"duplicate pushes {result['duplicate_pushes']}, e2e {result['e2e_ms']}")
    assert kills >= 4, output[-2000:]
    assert result["sent"] >= 1500 and result["acked"] == result["sent"]
    assert result["lost"] == 0 and result["acked_not_delivered"] == 0 and result["sync_problems"] == 0, output[-3000:]


def test_kafka_broker_restart_loses_no_acknowledged_message(base_env, start_function, start_gateway, services,
                                                            tmp_path):
    _, env, _, gw = _scenario(base_env, start_function, start_gateway, CHAT)
    out = tmp_path / "restart.json"
    load = _load(base_env, env, gw, out, duration=14)
    time.sleep(6)
    services("stop", "kafka")
    time.sleep(1)
    services("start", "kafka")
    output, _ = load.communicate(timeout=240)
    result = json.loads(out.read_text())
    print(f"broker restart: {result['sent']} sent, {result['acked']} acked, lost {result['lost']}, "
          f"errors {result['error_codes']}")
    assert result["sent"] > 1000
    # Sends the gateway could not hand to Kafka are refused with 50008; everything acked arrives.
    assert set(result["error_codes"]) <= {50008}
    assert result["acked_not_delivered"] == 0 and result["sync_problems"] == 0, output[-3000:]
    assert result["acked"] + result["errors"] == result["sent"]
