"""Faults under load, judged by the operation-history checker, on servers of this module's own:
Redis killed (SIGKILL) and restarted, a gateway killed, MariaDB killed and restarted, and a short
soak with every fault in turn.

Each test runs tests/load/soak.py (a subprocess: it is a gevent program) against a private Redis
and MariaDB started once for the module (tests/integration/private_servers.py; the shared servers
are never touched) and the shared Kafka in a namespace of the run's own. Its clients behave as
docs/PROTOCOL.md asks: reconnect, sync, resend what is unacknowledged with the same msg_id. The
verdict: the checker finds nothing (every acknowledged message read back exactly once, seqs 1..n
per conversation, no seq or msg_id seen two ways), every send was acknowledged in the end, every
acknowledged message reached its recipient (push or sync), and nothing was dead-lettered.
Marked slow. The soak (a worker, Redis, a gateway and MariaDB in turn) takes about 100 s and
runs in make test; one fault per run (about a minute each) with ``PINGME_FAULT_TESTS=1``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.integration.conftest import REPO
from tests.integration.private_servers import PrivateServers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    private = PrivateServers(tmp_path_factory.mktemp("outages"))
    private.run("start")
    yield private
    private.run("stop")
    shutil.rmtree(private.state_dir, ignore_errors=True)  # a MariaDB data dir is ~100 MB


def soak(servers, tmp_path, faults: str, duration: float, first_fault: float, every: float = 1000,
         **options) -> dict:
    out = tmp_path / "soak.json"
    args = [sys.executable, "-m", "tests.load.soak", "--state-dir", str(servers.state_dir), "--keep-servers",
            "--faults", faults, "--duration", str(duration), "--first-fault", str(first_fault),
            "--every", str(every), "--out", str(out), "--history", str(tmp_path / "history.jsonl")]
    for key, value in {"rate": 20, "pairs": 6, "outage": 3, "drain": 90, "sample-every": 5, **options}.items():
        args += [f"--{key}", str(value)]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.exists(), done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads(out.read_text())
    print(json.dumps({k: result[k] for k in ("sent", "acked", "received_by_sync", "reconnects", "closes",
                                              "e2e_ms", "faults", "dead_letters", "checker")}))
    result["log"] = done.stdout[-4000:] + done.stderr[-4000:]
    return result


def assert_nothing_wrong(result: dict) -> None:
    assert result["checker"]["ok"], result["checker"]
    assert result["sent"] > 200 and result["unacked"] == 0, result["log"]
    assert result["acked_not_received"] == 0 and result["conversations_unread"] == 0, result["log"]
    assert not result["refused"] and result["dead_letters"] == {}, result["log"]


# One fault per run: PINGME_FAULT_TESTS=1 (about a minute each; the soak below covers all three
# in make test).
one_fault = pytest.mark.skipif(os.environ.get("PINGME_FAULT_TESTS") != "1",
                               reason="one fault per run, a minute each: set PINGME_FAULT_TESTS=1 "
                                      "(test_a_short_soak_with_every_fault_in_turn covers them)")


def check_redis(fault: dict, result: dict, devices: int) -> None:
    # Replies and pushes travel through Redis: every socket was told to come back later (1013),
    # and every device came back (its gateway's inbox resubscribed, its presence registered anew).
    # Redis runs without persistence here, so the sessions were gone too: each device had to log
    # in again (result["logins_again"]; docs/OPERATIONS.md, "Faults").
    assert result["closes"].get("1013", 0) >= devices, result["closes"]
    assert fault["stall_s"] >= 3  # nothing moved while Redis was down (3 s)


def check_gateway(fault: dict, result: dict, devices: int) -> None:
    # Its devices (at first one of each pair; after a 1013 wherever they reconnected) moved to the
    # other gateway; no close frame came (the client library reports 1005, no status).
    on_it = fault["devices_on_it"]
    assert on_it >= 1
    assert result["closes"].get("1005", 0) + result["closes"].get("1006", 0) >= on_it, result["closes"]
    # The dead gateway's presence entries were not removed by anyone, and expire by themselves
    # within the presence TTL (common/presence.py: 60 s), so nobody shows it online after that.
    assert fault["dead_presence_entries"] >= on_it
    assert 0 < fault["dead_presence_expire_within_s"] <= 60


def check_mariadb(fault: dict, result: dict, devices: int) -> None:
    # Stores waited (the send function pauses on an outage rather than spend its retries), then
    # went through: none dead-lettered, none stored twice (assert_nothing_wrong).
    assert fault["ack_stall_s"] >= 3  # the database was down 3 s, then restarted


CHECKS = {"redis": check_redis, "gateway": check_gateway, "mariadb": check_mariadb}


@one_fault
@pytest.mark.parametrize("kind", ["redis", "gateway", "mariadb"])
def test_one_fault_under_load(servers, tmp_path, kind):
    result = soak(servers, tmp_path, kind, duration=25, first_fault=8)
    assert_nothing_wrong(result)
    [fault] = result["faults"]
    CHECKS[kind](fault, result, devices=12)
    if kind == "redis":
        assert result["reconnects"] >= 12
    if kind == "gateway":
        assert fault["devices_on_it"] == 6  # one of each pair, as they started


def test_a_short_soak_with_every_fault_in_turn(servers, tmp_path):
    result = soak(servers, tmp_path, "worker,redis,gateway,mariadb", duration=50, first_fault=8, every=12)
    assert_nothing_wrong(result)
    faults = {f["kind"]: f for f in result["faults"]}
    assert list(faults) == ["worker", "redis", "gateway", "mariadb"]
    for kind, check in CHECKS.items():
        check(faults[kind], result, devices=12)
    processes = result["processes"]
    assert {"send", "deliver", "gw0", "gw1", "redis", "mariadb"} <= set(processes)
    assert processes["send"]["incarnations"] == 2  # killed once, restarted
    for gw in ("gw0", "gw1"):
        assert processes[gw]["end"]["greenlets"] > 0 and "ws_connections" in processes[gw]["end"]
