"""Failover of a function worker with static group membership (``kafka.group_instance_id``).

The session timeout is set to 30 s here, so that a takeover that waits for it cannot pass for one
that does not. With dynamic membership a worker killed with SIGKILL and restarted at once got its
partitions back only when the group dropped the dead member, after the session timeout (10 s by
default; tests/load/failover.py measures it); with a static one, the restarted worker takes them
back at once. A static member stopped with SIGTERM leaves its group explicitly (it would otherwise
hold its partitions for the session timeout). `python -m functions all` gives its children static
membership, so a child it restarts takes its partitions back at once. Marked slow (about 40 s).
"""
from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from common import bus, config as config_mod
from tests.integration.conftest import Proc, group_assignment, wait_for
from tests.integration.test_messaging import Client, make_users, mid
from tests.load import procstats

pytestmark = pytest.mark.slow
SESSION_MS = 30_000
TAKEOVER_MAX_S = 15  # half the session timeout


def _env(**extra):
    return {"PINGME_NAMESPACE": f"fo{uuid.uuid4().hex[:8]}", "KAFKA_SESSION_TIMEOUT_MS": str(SESSION_MS),
            "KAFKA_HEARTBEAT_INTERVAL_MS": "1000", **extra}


def test_a_killed_static_worker_restarted_at_once_takes_its_partitions_back_at_once(
        cfg, base_env, start_function, start_gateway):
    env = _env()
    bus.ensure_topics(config_mod.load({**base_env, **env}))
    send = start_function("send", KAFKA_GROUP_INSTANCE_ID="send-0", **env)
    start_function("deliver", **env)
    gw = start_gateway(**env)
    alice, bob = make_users(cfg, 2)
    a = Client(gw, alice)
    a.send("send", {"msg_id": mid(), "to_user_id": bob.id, "content": "before"})
    assert a.expect("message_ack", timeout=30)["seq"] == 1

    send.signal(signal.SIGKILL)
    send.popen.wait()
    killed = time.monotonic()
    start_function("send", ready=False, KAFKA_GROUP_INSTANCE_ID="send-0", **env)
    after = mid()
    a.send("send", {"msg_id": after, "to_user_id": bob.id, "content": "after"})
    # (The first message's ack may come again first: the killed worker may not have committed it.)
    ack = a.expect("message_ack", timeout=SESSION_MS / 1000 + 30, where=lambda p: p["msg_id"] == after)
    assert ack["seq"] == 2
    stall = time.monotonic() - killed
    print(f"static member killed and restarted: the next message acked {stall:.1f} s after the kill")
    assert stall < TAKEOVER_MAX_S, stall
    a.close()


def test_a_static_worker_stopped_with_sigterm_hands_its_partitions_on_at_once(base_env, start_function):
    env = _env()
    scen_cfg = config_mod.load({**base_env, **env})
    bus.ensure_topics(scen_cfg)
    first = start_function("send", KAFKA_GROUP_INSTANCE_ID="send-0", **env)
    second = start_function("send", KAFKA_GROUP_INSTANCE_ID="send-1", **env)
    wait_for(lambda: sorted(map(len, group_assignment(scen_cfg, "send").values())) == [1, 1], timeout=60,
             what="two members with a partition each")
    stopped = time.monotonic()
    assert first.stop() == 0
    wait_for(lambda: list(group_assignment(scen_cfg, "send").values()) == [{0, 1}], timeout=SESSION_MS / 1000 + 30,
             what="the other member to hold both partitions")
    handed_on = time.monotonic() - stopped
    print(f"static member stopped with SIGTERM: both partitions with the other {handed_on:.1f} s later")
    assert handed_on < TAKEOVER_MAX_S, handed_on
    assert "left group" in first.log()
    assert second.popen.poll() is None


def test_the_supervisor_restarts_a_killed_child_under_the_same_membership(cfg, base_env, procs, start_gateway):
    # `python -m functions send deliver` (as `make dev` runs `all`): its children are static members.
    env = _env()
    bus.ensure_topics(config_mod.load({**base_env, **env}))
    supervisor = Proc([sys.executable, "-m", "functions", "send", "deliver"], {**base_env, **env}, "fn-supervisor")
    procs.procs.append(supervisor)
    wait_for(lambda: supervisor.log().count("partitions assigned: [0, 1]") == 2, timeout=60,
             what="both children to hold their partitions")
    gw = start_gateway(**env)
    alice, bob = make_users(cfg, 2)
    a = Client(gw, alice)
    a.send("send", {"msg_id": mid(), "to_user_id": bob.id, "content": "before"})
    assert a.expect("message_ack", timeout=30)["seq"] == 1

    [send_child] = [pid for pid in procstats.children(supervisor.popen.pid)
                    if b"send" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    os.kill(send_child, signal.SIGKILL)
    killed = time.monotonic()
    after = mid()
    a.send("send", {"msg_id": after, "to_user_id": bob.id, "content": "after"})
    ack = a.expect("message_ack", timeout=SESSION_MS / 1000 + 30, where=lambda p: p["msg_id"] == after)
    stall = time.monotonic() - killed
    print(f"supervisor's child killed: the next message acked {stall:.1f} s after the kill")
    assert ack["seq"] == 2 and stall < TAKEOVER_MAX_S, stall
    a.close()
