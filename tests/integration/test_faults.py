"""Fault injection on the real servers: a server goes away, the broker restarts, a worker is
killed or falls behind, a store keeps failing, while messages flow.

Each scenario runs its own functions and gateway in a private namespace with its own settings,
injects its fault, and checks what clients were told and what was stored afterwards.
Marked slow: ``pytest -m slow`` runs just these.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import simple_websocket
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from common import auth, bus, config as config_mod
from common.models import DeadLetter, Message, User, db

from tests.integration.conftest import REPO, wait_for
from tests.integration.test_messaging import Client, User_, make_users, mid, refused

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


def test_long_database_outage_pauses_the_pipeline_and_dead_letters_nothing(cfg, base_env, start_function,
                                                                         start_gateway, services):
    # The default per-event budget (100 + 200 + 400 ms) is far shorter than this 8 s outage: the
    # send function must pause (back-pressure) rather than spend it and dead-letter every send.
    scen_cfg, env, procs, gw = _scenario(base_env, start_function, start_gateway)
    alice, bob = make_users(cfg, 2)
    a = Client(gw, alice)
    ids = _send_during_outage(services, a, bob.id, count=10, seconds=8)
    acks = {}
    while len(acks) < len(ids):
        frame = a.next(timeout=60)
        assert frame is not None, f"{len(acks)} of {len(ids)} acked"
        assert frame["type"] != "error", frame
        if frame["type"] == "message_ack":
            acks[frame["payload"]["msg_id"]] = frame["payload"]["seq"]
    assert set(acks) == set(ids)
    rows = _stored(ids)
    _assert_once_gap_free(rows, ids)
    assert {r.msg_id: r.seq for r in rows} == acks
    with db.connection_context():
        assert DeadLetter.select().where(DeadLetter.origin_topic == scen_cfg.topic("send")).count() == 0
    assert "database unreachable" in procs["send"].log()
    a.close()


def _load(base_env, env, gw, out, rate=150, duration=12, pairs=5, drain=30):
    """Start the load tool against ``gw`` in the background; returns (process, result path)."""
    return subprocess.Popen([sys.executable, "-m", "tests.load.chat_load", "--url", gw.base, "--pairs", str(pairs),
                             "--rate", str(rate), "--duration", str(duration), "--out", str(out),
                             "--drain", str(drain)],
                            cwd=REPO, env={**base_env, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


CHAT = ("register", "login", "send", "deliver", "retry", "dlq")


def test_killing_send_and_deliver_workers_loses_nothing(base_env, start_function, start_gateway, tmp_path):
    import signal

    # Static group membership (one name: each function is its own group), as `python -m functions
    # all` and containers named by their pod give: a restarted worker takes its partitions back at
    # once instead of after the session timeout (docs/OPERATIONS.md, Failover).
    _, env, procs, gw = _scenario(base_env, start_function, start_gateway, CHAT, KAFKA_GROUP_INSTANCE_ID="chaos-0")
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
    # The operation history: every acked message read back once, seqs 1..n, no seq or msg_id seen
    # two ways, nothing delivered that was not acked, read cursors forward only.
    assert result["checker"]["ok"], result["checker"]


def test_kafka_broker_restart_loses_no_acknowledged_message(base_env, start_function, start_gateway, services,
                                                            tmp_path):
    _, env, _, gw = _scenario(base_env, start_function, start_gateway, CHAT)
    out = tmp_path / "restart.json"
    # The drain allows for a slow restart: on a loaded 2-core box the broker has taken up to 30 s
    # to come back, and its clients' expired batches are then tried again.
    load = _load(base_env, env, gw, out, duration=14, drain=150)
    time.sleep(6)
    services("stop", "kafka")
    time.sleep(1)
    services("start", "kafka")
    output, _ = load.communicate(timeout=400)
    result = json.loads(out.read_text())
    print(f"broker restart: {result['sent']} sent, {result['acked']} acked, lost {result['lost']}, "
          f"errors {result['error_codes']}")
    assert result["sent"] > 1000
    # Sends the gateway could not hand to Kafka are refused with 50008; everything acked arrives.
    assert set(result["error_codes"]) <= {50008}
    assert result["acked_not_delivered"] == 0 and result["sync_problems"] == 0, output[-3000:]
    # Every send is acked or refused; one refused 50008 may still be acked later (PROTOCOL.md).
    assert result["acked"] + result["refused"] == result["sent"]
    assert result["checker"]["ok"], result["checker"]


def _connect_when_ready(gw, user, timeout: float = 30) -> Client:
    """A client, once the gateway accepts sockets again (it closes them with 1013 until then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Client(gw, user)
        except (AssertionError, simple_websocket.ConnectionError, simple_websocket.ConnectionClosed):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_redis_outage_closes_sockets_with_1013_and_resends_are_stored_once(cfg, base_env, start_function,
                                                                           start_gateway, services):
    _, _, _, gw = _scenario(base_env, start_function, start_gateway, functions=("send", "deliver"))
    alice, bob = make_users(cfg, 2)
    a, b = Client(gw, alice), Client(gw, bob)
    ids = [mid() for _ in range(5)]
    for msg in ids[:3]:
        a.send("send", {"msg_id": msg, "to_user_id": bob.id, "content": "before"})
    first = {ack["msg_id"]: ack["seq"] for ack in (a.expect("message_ack", timeout=30) for _ in ids[:3])}

    services("stop", "redis")
    try:
        # Replies and pushes travel through Redis: every socket is told to come back later...
        assert (a.close_code(), b.close_code()) == (1013, 1013)
        # ... and so is a socket opened during the outage (no HTTP 500, no silent close).
        assert [(op, int.from_bytes(body[:2], "big")) for op, body in refused(gw, alice.token)] == [(8, 1013)]
    finally:
        services("start", "redis")

    a, b = _connect_when_ready(gw, alice), _connect_when_ready(gw, bob)
    for msg in ids:  # the client resends what it is not sure of: here all five
        a.send("send", {"msg_id": msg, "to_user_id": bob.id, "content": "before" if msg in first else "after"})
    acks = {ack["msg_id"]: ack["seq"] for ack in (a.expect("message_ack", timeout=60) for _ in ids)}
    assert {m: acks[m] for m in first} == first  # a resend is answered with its first seq
    assert sorted(acks.values()) == [1, 2, 3, 4, 5]
    _assert_once_gap_free(_stored(ids), ids)
    assert {b.expect("message", timeout=30, where=lambda p: p["msg_id"] in ids[3:])["msg_id"]
            for _ in ids[3:]} == set(ids[3:])
    a.close(), b.close()


def _lag(cfg, function: str) -> int:
    """Records of the function's topic its group has not committed yet."""
    admin = KafkaAdminClient(bootstrap_servers=list(cfg.kafka.brokers))
    consumer = KafkaConsumer(bootstrap_servers=list(cfg.kafka.brokers))
    try:
        committed = admin.list_group_offsets(cfg.group(function))[cfg.group(function)]
        ends = consumer.end_offsets([TopicPartition(cfg.topic(function), p)
                                     for p in consumer.partitions_for_topic(cfg.topic(function))])
        return sum(end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items())
    finally:
        admin.close(), consumer.close()


def test_a_registration_answered_with_a_timeout_never_takes_effect(base_env, start_function, start_gateway):
    # One register worker, slow hashing (~0.6 s), a short request timeout: a burst outruns the
    # worker, and some requests pass their deadline while being hashed (rolled back, not created).
    scen_cfg, _, _, gw = _scenario(base_env, start_function, start_gateway, functions=("register",),
                                   PASSWORD_ITERATIONS="600000", KAFKA_REQUEST_TIMEOUT_MS="1500")
    names = [f"burst{uuid.uuid4().hex[:8]}{i}" for i in range(16)]

    def register(name):
        return gw.call("POST", "/api/v1/auth/register", {"username": name, "password": "burst-password"})

    with ThreadPoolExecutor(len(names)) as pool:
        answers = dict(zip(names, pool.map(register, names)))
    created = {n for n, (status, _) in answers.items() if status == 201}
    timed_out = {n for n, (status, body) in answers.items() if (status, body.get("code")) == (504, 10008)}
    assert created | timed_out == set(names), answers

    wait_for(lambda: _lag(scen_cfg, "register") == 0, timeout=120, what="the register worker to drain")
    with db.connection_context():
        assert {u.username for u in User.select().where(User.username.in_(names))} == created
    assert created and timed_out  # the burst did outrun the worker
    # What timed out can simply be tried again (on a loaded box a retry may time out too: 1.5 s
    # against ~0.6 s of hashing; each attempt that times out is rolled back, so again).
    again = sorted(timed_out)[0]
    wait_for(lambda: register(again)[0] == 201, timeout=60, interval=0.5, what="a retried registration to succeed")
    with db.connection_context():
        assert User.select().where(User.username == again).count() == 1


def test_a_send_given_up_on_answers_its_sender_and_can_be_sent_again(cfg, base_env, start_function,
                                                                     start_gateway):
    # The database answers but every store fails (its message table is away): no outage, so the
    # send's retries run out and it is dead-lettered. The sender must hear so, and may resend.
    name = f"pingme_dl{uuid.uuid4().hex[:8]}"
    env = {"DB_NAME": name, "RETRY_MAX_ATTEMPTS": "2", "RETRY_INITIAL_BACKOFF_MS": "100"}
    with db.connection_context():
        db.execute_sql(f"CREATE DATABASE `{name}`")
    try:
        subprocess.run([sys.executable, "-m", "common.cli", "db", "migrate"], cwd=REPO, check=True,
                       env={**base_env, **env}, capture_output=True)
        with db.connection_context():
            for n in ("alice", "bob"):
                db.execute_sql(f"INSERT INTO `{name}`.`user` (username, username_key, password_hash, nickname, "
                               "avatar, created_at, updated_at) VALUES (%s, %s, 'x', '', '', 0, 0)", (n, n))
            alice_id, bob_id = (row[0] for row in db.execute_sql(f"SELECT id FROM `{name}`.`user` ORDER BY id"))
        _, _, _, gw = _scenario(base_env, start_function, start_gateway, **env)
        alice, bob = (User_(uid, auth.issue_token(uid, cfg.jwt)) for uid in (alice_id, bob_id))
        a = Client(gw, alice)
        msg = mid()
        with db.connection_context():
            db.execute_sql(f"RENAME TABLE `{name}`.`message` TO `{name}`.`message_away`")
        a.send("send", {"msg_id": msg, "to_user_id": bob.id, "content": "given up on"})
        error = a.expect("error", timeout=60)
        assert (error["code"], error["ref"]) == (50006, msg)
        with db.connection_context():
            db.execute_sql(f"RENAME TABLE `{name}`.`message_away` TO `{name}`.`message`")

        def dead_letters():
            with db.connection_context():
                return db.execute_sql(f"SELECT COUNT(*) FROM `{name}`.`dead_letter`").fetchone()[0]
        wait_for(lambda: dead_letters() == 1, timeout=30, what="the dead letter to be stored")
        a.send("send", {"msg_id": msg, "to_user_id": bob.id, "content": "given up on"})
        assert a.expect("message_ack", timeout=30)["seq"] == 1
        a.close()
    finally:
        with db.connection_context():
            db.execute_sql(f"DROP DATABASE IF EXISTS `{name}`")
