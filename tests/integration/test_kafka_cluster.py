"""The pipeline on a three-node Kafka cluster (services.sh KAFKA_NODES=3: replication factor 3,
min.insync.replicas 2, producers with acks=all), a private one for this module, while brokers die.

* The leader of a busy partition is killed with SIGKILL under load: the history checker
  (tests/load/history.py) finds every acknowledged message read back exactly once, seqs 1..n.
* The active controller (the metadata quorum's leader) is killed the same way: the same verdict.
  The nodes are combined broker+controllers, so it takes the partitions it led with it.
* Two of the three nodes are killed (below the minimum in-sync replicas, and the controller quorum
  lost): sends are refused with 50008 (never acknowledged), and succeed, once each, when they
  come back.

Each prints its write-unavailability window. Marked slow: about 3-5 minutes with the cluster's
start (three more JVMs on the box), so they run only with ``PINGME_CLUSTER_TESTS=1``. Results so
far (2-core box at load 9-14): the leader kill passed 4 of 5 runs (e2e p99 after the kill 5.2-12.6
s, all 2,000 messages acked and pushed once, checker clean). In the other, every final sync was
answered 20001 at once and the load tool waited 30 s for each (it ignored the error frame; it now
fails at once), and the next test's stores failed: the gateway had been started from a working
tree in which another engineer had just added a column (conversation_member.wrote) that the
session's database, migrated at its start, lacked — the functions started after it logged 1054
"Unknown column 'wrote'". Not a database stall, and not the cluster's doing. Below the minimum ISR
the sends were refused with 50008 after 30 s (the producer's delivery timeout) and stored once
when resent (2 of 3 runs; the third inherited that schema mismatch).
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid

import pytest
from kafka import KafkaAdminClient

from common import bus, config as config_mod
from tests.integration.private_kafka import PrivateKafka
from tests.integration.test_faults import CHAT, _assert_once_gap_free, _load, _stored
from tests.integration.test_messaging import Client, make_users, mid

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("PINGME_CLUSTER_TESTS") != "1",
                                 reason="three more Kafka JVMs: set PINGME_CLUSTER_TESTS=1 (see the docstring)")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    kafka = PrivateKafka(tmp_path_factory.mktemp("cluster"), nodes=3)
    try:
        kafka.run("start")
    except AssertionError as first:
        # On a loaded box a node has once not answered within services.sh's 120 s: stop all three
        # (a node left running would count as started without being waited for) and start again.
        print(f"the cluster's first start failed, starting again: {str(first)[-1500:]}")
        kafka.run("stop")
        kafka.run("start")
    yield kafka
    kafka.run("stop")


def _system(cluster, base_env, start_function, start_gateway, functions=CHAT):
    env = {"PINGME_NAMESPACE": f"k{uuid.uuid4().hex[:8]}", "KAFKA_BROKERS": cluster.brokers}
    scen_cfg = config_mod.load({**base_env, **env})
    bus.ensure_topics(scen_cfg)
    for name in functions:
        start_function(name, **env)
    return scen_cfg, env, start_gateway(**env)


def _leader(cfg, topic: str, partition: int) -> int:
    admin = KafkaAdminClient(bootstrap_servers=list(cfg.kafka.brokers))
    try:
        [described] = admin.describe_topics([topic])
    finally:
        admin.close()
    return next(p["leader_id"] for p in described["partitions"] if p["partition_index"] == partition)


def _controller(cfg) -> int:
    """The active KRaft controller: the leader of the metadata quorum."""
    admin = KafkaAdminClient(bootstrap_servers=list(cfg.kafka.brokers))
    try:
        quorum = admin.describe_metadata_quorum()
    finally:
        admin.close()
    return quorum["topics"][0]["partitions"][0]["leader_id"]


def _led_by(cfg, node: int) -> list[str]:
    """The app's topic partitions whose leader is ``node``."""
    admin = KafkaAdminClient(bootstrap_servers=list(cfg.kafka.brokers))
    try:
        described = admin.describe_topics([cfg.topic(f) for f in ("send", "deliver")])
    finally:
        admin.close()
    return [f"{t['name']}-{p['partition_index']}" for t in described for p in t["partitions"]
            if p["leader_id"] == node]


def _kill_under_load(cluster, base_env, start_function, start_gateway, tmp_path, choose, what: str) -> dict:
    """Run 100 msg/s, kill the node ``choose(cfg)`` names once 300 messages were delivered, let the
    load finish; the load tool's result (with the checker's verdict), its assertions made."""
    scen_cfg, env, gw = _system(cluster, base_env, start_function, start_gateway)
    out = tmp_path / "kill.json"
    load = _load(base_env, env, gw, out, rate=100, duration=20, drain=90)
    head = []
    for line in load.stdout:  # the load tool's progress lines: "t=  3.0s sent=300 acked=.. delivered=.."
        head.append(line)
        match = re.search(r"t=\s*([\d.]+)s .*delivered=(\d+)", line)
        if match and int(match.group(2)) >= 300:
            break
    else:
        pytest.fail("the load ended before 300 messages were delivered:\n" + "".join(head)[-3000:])
    victim = choose(scen_cfg)
    assert victim in (1, 2, 3), victim
    led = _led_by(scen_cfg, victim)
    cluster.kill(victim)
    killed_t = float(match.group(1))  # seconds into the load's sending
    try:
        output, _ = load.communicate(timeout=300)
    finally:
        cluster.run("start")  # the killed node comes back for the next test
    result = json.loads(out.read_text())
    window = max((row["e2e_p99"] or 0) for row in result["timeline"] if row["t"] >= int(killed_t))
    print(f"{what} (node {victim}, leader of {led}) killed: {result['sent']} sent, "
          f"{result['acked']} acked, errors {result['error_codes']}; e2e p99 after the kill up to "
          f"{window / 1000:.1f} s; checker {result['checker']}")
    assert result["sent"] > 1000
    assert set(result["error_codes"]) <= {50008}, output[-3000:]
    # Every send is acked or refused; one refused 50008 may still be acked later (PROTOCOL.md).
    assert result["acked"] + result["refused"] == result["sent"]
    assert result["acked_not_delivered"] == 0 and result["sync_problems"] == 0, output[-3000:]
    assert result["checker"]["ok"], result["checker"]
    return result


def test_killing_the_leader_of_a_busy_partition_loses_nothing(cluster, base_env, start_function, start_gateway,
                                                              tmp_path):
    _kill_under_load(cluster, base_env, start_function, start_gateway, tmp_path,
                     lambda cfg: _leader(cfg, cfg.topic("send"), 0), "the leader of send-0")


def test_losing_the_active_controller_loses_nothing(cluster, base_env, start_function, start_gateway, tmp_path):
    # The nodes are combined broker+controllers: the active controller's node is a broker too, so
    # its partitions move as well (the print says which it led); the quorum elects a new controller.
    _kill_under_load(cluster, base_env, start_function, start_gateway, tmp_path, _controller,
                     "the active controller")


def test_below_min_insync_replicas_sends_are_refused_then_succeed(cluster, cfg, base_env, start_function,
                                                                  start_gateway):
    scen_cfg, env, gw = _system(cluster, base_env, start_function, start_gateway, ("send", "deliver"))
    alice, bob = make_users(cfg, 2)
    a = Client(gw, alice)
    a.send("send", {"msg_id": mid(), "to_user_id": bob.id, "content": "before"})
    assert a.expect("message_ack", timeout=30)["seq"] == 1

    survivor = _leader(scen_cfg, scen_cfg.topic("send"), 0)
    down = [node for node in (1, 2, 3) if node != survivor]
    for node in down:
        cluster.kill(node)
    killed_at = time.monotonic()
    ids = [mid() for _ in range(3)]
    try:
        for msg in ids:
            a.send("send", {"msg_id": msg, "to_user_id": bob.id, "content": "below min ISR"})
        refused = {}
        while len(refused) < len(ids):
            frame = a.next(timeout=90)
            assert frame is not None, f"{len(refused)} of {len(ids)} answered"
            assert frame["type"] != "message_ack" or frame["payload"]["seq"] == 1, frame  # never acked
            if frame["type"] == "error":
                refused[frame["payload"]["ref"]] = frame["payload"]["code"]
        refused_after = time.monotonic() - killed_at
    finally:
        cluster.run("start")
    back_at = time.monotonic()
    print(f"nodes {down} killed: {len(ids)} sends refused with {sorted(set(refused.values()))} "
          f"{refused_after:.1f} s after the kill; nodes back in {back_at - killed_at:.1f} s")
    assert refused == {msg: 50008 for msg in ids}

    for msg in ids:  # the client resends what was refused, with the same msg_id
        a.send("send", {"msg_id": msg, "to_user_id": bob.id, "content": "below min ISR"})
    acks = {}
    while len(acks) < len(ids):
        frame = a.next(timeout=120)
        assert frame is not None, f"{len(acks)} of {len(ids)} acked after the nodes came back"
        if frame["type"] == "message_ack" and frame["payload"]["msg_id"] in ids:
            acks[frame["payload"]["msg_id"]] = frame["payload"]["seq"]
    print(f"writes available again {time.monotonic() - back_at:.1f} s after the nodes were back")
    assert sorted(acks.values()) == [2, 3, 4]
    _assert_once_gap_free(_stored(ids), ids)
    a.close()
