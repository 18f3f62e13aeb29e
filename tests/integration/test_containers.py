"""The image, for real: deploy/Dockerfile built with Podman, the gateway and every function each in a
container of its own, against the project's Kafka, Redis and MariaDB (host network, loopback).

What a team that deploys one container per function relies on: a conversation works through the
containers; a killed ``send`` container loses nothing (every acked message stored once, seqs
gap-free); a stopped (SIGTERM) function drains and exits 0 within its grace period; a second
``deliver`` container joins the group and takes partitions; the image's HEALTHCHECK answers.

No registry is reachable here, so the base image is a debootstrapped Debian bookworm
(deploy/local/image.sh, cached in Podman's store). Slow the first time (debootstrap and build,
about a minute and a half); run alone with ``pytest -m container``.
"""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from common import config as config_mod
from functions import FUNCTIONS

from tests.integration.conftest import REPO, Api, free_port, group_assignment, wait_for
from tests.integration.test_faults import _load
from tests.integration.test_messaging import Client, User_, mid

pytestmark = [pytest.mark.container, pytest.mark.slow]

IMAGE_SH = REPO / "deploy" / "local" / "image.sh"
IMAGE = "localhost/pingme:test"
GRACE_S = 20  # what a deployment gives a container between SIGTERM and SIGKILL (k8s default: 30)
# Passed into the containers from the test session's environment; nothing else of the host is.
FORWARDED = ("KAFKA_BROKERS", "REDIS_HOST", "REDIS_PORT", "DB_ENGINE", "DB_HOST", "DB_PORT", "DB_USERNAME",
             "DB_PASSWORD", "DB_NAME", "PASSWORD_ITERATIONS", "KAFKA_PARTITIONS", "JWT_SECRET",
             "RATE_LIMIT_ENABLED")  # off for the test session: the load tool registers its users from one address


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(IMAGE_SH), "podman", *args], capture_output=True, text=True,
                          check=check, timeout=timeout)


class Containers:
    """The containers of one scenario, each started from the image with its own command."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.prefix = f"pingme-{env['PINGME_NAMESPACE']}"
        self.names: list[str] = []

    def run(self, name: str, *command: str, detach: bool = True, **env: str) -> str:
        container = f"{self.prefix}-{name}"
        args = ["run", "--name", container, "--network", "host", "--ulimit", "nofile=10000:10000",
                "--ulimit", "nproc=4096:4096", "--read-only", "--tmpfs", "/tmp",
                "--health-interval", "disable"]  # no systemd timers here; `healthcheck run` probes
        for key, value in {**self.env, **env}.items():
            args += ["-e", f"{key}={value}"]
        if detach:
            self.names.append(container)
            podman(*args, "-d", IMAGE, *command)
        else:
            out = podman(*args, "--rm", IMAGE, *command, check=False)
            assert out.returncode == 0, f"{' '.join(command)} failed:\n{out.stdout}\n{out.stderr}"
        return container

    def function(self, name: str, suffix: str = "") -> str:
        container = self.run(name + suffix, "python", "-m", "functions", name, FUNCTION_PORT=str(free_port()))
        self.wait_assigned(container)
        return container

    def logs(self, container: str) -> str:
        out = podman("logs", container, check=False)
        return out.stdout + out.stderr

    def wait_assigned(self, container: str, times: int = 1) -> None:
        wait_for(lambda: self.logs(container).count("partitions assigned") >= times, timeout=90,
                 what=f"{container} to join its group")

    def inspect(self, container: str, field: str) -> str:
        return podman("inspect", "--format", "{{" + field + "}}", container).stdout.strip()

    def remove_all(self) -> None:
        for container in reversed(self.names):
            podman("rm", "-f", "-t", "2", container, check=False)


@pytest.fixture(scope="module")
def image():
    """deploy/Dockerfile built on the local Debian base (layers cached between runs)."""
    started = time.monotonic()
    out = subprocess.run(["bash", str(IMAGE_SH), "build", IMAGE], capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    size = podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip()
    print(f"\nimage {IMAGE}: built in {time.monotonic() - started:.0f} s, {int(size) / 1e6:.0f} MB")
    return IMAGE


@pytest.fixture(scope="module")
def stack(image, base_env, cfg):
    """The gateway and the six functions, one container each, in a private namespace (on the
    session's database, which ``cfg`` creates)."""
    env = {key: base_env[key] for key in FORWARDED if key in base_env}
    env.update({"PINGME_NAMESPACE": f"c{uuid.uuid4().hex[:8]}", "APP_ENV": "production", "LOG_LEVEL": "INFO"})
    containers = Containers(env)
    try:
        # The one-shot set-up an operator runs before a deployment (compose's `setup` service).
        containers.run("migrate", "python", "-m", "common.cli", "db", "migrate", detach=False)
        containers.run("topics", "python", "-m", "common.cli", "topics", "ensure", detach=False)
        port = free_port()
        gateway = containers.run("gateway", APP_HOST="127.0.0.1", APP_PORT=str(port))
        fns = {name: containers.function(name) for name in FUNCTIONS}
        api = Api(f"http://127.0.0.1:{port}")
        wait_for(lambda: _healthy(api) or containers.inspect(gateway, ".State.Status") != "running",
                 timeout=60, what="the gateway container to answer /health")
        assert _healthy(api), containers.logs(gateway)[-3000:]
        yield {"containers": containers, "api": api, "gateway": gateway, "functions": fns, "env": env}
    finally:
        containers.remove_all()


def _healthy(api: Api) -> bool:
    try:
        return api.call("GET", "/health")[0] == 200
    except OSError:
        return False


def _user(api: Api, name: str) -> User_:
    status, body = api.call("POST", "/api/v1/auth/register", {"username": name, "password": "correct-horse"})
    assert status == 201, body
    status, body = api.call("POST", "/api/v1/auth/login", {"username": name, "password": "correct-horse"})
    assert status == 200, body
    return User_(body["data"]["user"]["id"], body["data"]["token"])


def test_a_conversation_through_the_containers(stack):
    api = stack["api"]
    suffix = uuid.uuid4().hex[:6]
    alice, bob = _user(api, f"alice{suffix}"), _user(api, f"bob{suffix}")
    a, b = Client(api, alice), Client(api, bob)
    first = mid()
    a.send("send", {"msg_id": first, "to_user_id": bob.id, "content": "hello from a container"})
    ack = a.expect("message_ack")
    assert ack["msg_id"] == first and ack["seq"] == 1
    pushed = b.expect("message")
    assert (pushed["msg_id"], pushed["content"], pushed["seq"]) == (first, "hello from a container", 1)

    # Bob goes offline; what Alice sends meanwhile is there when he syncs.
    b.close()
    later = [mid() for _ in range(3)]
    for n, msg_id in enumerate(later):
        a.send("send", {"msg_id": msg_id, "to_user_id": bob.id, "content": f"while away {n}"})
    assert [a.expect("message_ack")["seq"] for _ in later] == [2, 3, 4]
    b = Client(api, bob)
    b.send("sync", {"conversation_id": ack["conversation_id"], "after_seq": 1})
    synced = b.expect("sync")["messages"]
    assert [(m["msg_id"], m["seq"]) for m in synced] == list(zip(later, [2, 3, 4]))
    a.close(), b.close()


def test_killing_and_stopping_function_containers_loses_nothing(stack, base_env, tmp_path):
    containers, fns = stack["containers"], stack["functions"]
    out = tmp_path / "containers.json"
    load = _load(base_env, {}, stack["api"], out, rate=100, duration=14, pairs=5, drain=90)
    try:
        wait_for(lambda: load.poll() is not None or _acked_so_far(stack) >= 200, timeout=60,
                 what="the load to get going")
        # SIGKILL mid-stream: what the send container had not committed is redelivered to its
        # next incarnation and stored once (idempotent by msg_id).
        podman("kill", "--signal", "KILL", fns["send"])
        podman("start", fns["send"])
        containers.wait_assigned(fns["send"], times=2)
        # SIGTERM (what `podman stop` and Kubernetes send first): the worker drains and exits 0.
        started = time.monotonic()
        podman("stop", "-t", str(GRACE_S), fns["deliver"], timeout=GRACE_S + 30)
        stop_s = time.monotonic() - started
        exit_code = containers.inspect(fns["deliver"], ".State.ExitCode")
        podman("start", fns["deliver"])
        containers.wait_assigned(fns["deliver"], times=2)
        output, _ = load.communicate(timeout=240)
    finally:
        if load.poll() is None:
            load.kill()
    result = json.loads(out.read_text())
    print(f"\ncontainers: {result['sent']} sent, {result['acked']} acked, lost {result['lost']}, "
          f"duplicate pushes {result['duplicate_pushes']}, send killed once, deliver stopped in {stop_s:.1f} s "
          f"(exit {exit_code}), e2e {result['e2e_ms']}")
    assert exit_code == "0" and stop_s < GRACE_S, containers.logs(fns["deliver"])[-3000:]
    assert "draining" in containers.logs(fns["deliver"])
    assert result["sent"] >= 1000 and result["acked"] == result["sent"], output[-3000:]
    assert result["lost"] == 0 and result["acked_not_delivered"] == 0, output[-3000:]
    assert result["sync_problems"] == 0, output[-3000:]  # every acked message stored once, seqs 1..n


def _acked_so_far(stack) -> int:
    """Messages the send container has acknowledged (from its consumer group's committed offsets)."""
    cfg = config_mod.load({**stack["env"], "APP_CONF": "/dev/null"})
    admin = KafkaAdminClient(bootstrap_servers=list(cfg.kafka.brokers))
    try:
        offsets = admin.list_group_offsets(cfg.group("send"))[cfg.group("send")]
        return sum(meta.offset for meta in offsets.values() if meta.offset > 0)
    finally:
        admin.close()


def test_a_second_deliver_container_takes_partitions(stack):
    containers, fns = stack["containers"], stack["functions"]
    cfg = config_mod.load({**stack["env"], "APP_CONF": "/dev/null"})
    second = containers.function("deliver", suffix="-2")

    def shared() -> dict[str, set[int]] | None:
        members = group_assignment(cfg, "deliver")
        return members if len(members) == 2 and all(members.values()) else None

    assignment = wait_for(shared, timeout=60, what="two deliver containers sharing the partitions")
    parts = list(assignment.values())
    assert not parts[0] & parts[1] and parts[0] | parts[1] == set(range(cfg.kafka.partitions))
    assert "partitions assigned" in containers.logs(second)
    podman("stop", "-t", str(GRACE_S), second, timeout=GRACE_S + 30)


def test_the_image_healthcheck_and_its_user(stack):
    containers = stack["containers"]
    for container in (stack["gateway"], stack["functions"]["send"]):
        out = podman("healthcheck", "run", container, check=False)
        assert out.returncode == 0, f"{container}: {out.stdout}{out.stderr}"
    assert containers.inspect(stack["gateway"], ".Config.User") == "10001:10001"
    version = stack["api"].call("GET", "/version")[1]["data"]
    assert version["build"]["commit"] not in ("", "unknown")
