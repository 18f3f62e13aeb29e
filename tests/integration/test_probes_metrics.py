"""Probes and metrics of running processes, read as operators read them: a function worker's
/healthz, /readyz and /metrics on FUNCTION_PORT, the gateway's /metrics, and a scrape of both by
Debian's real Prometheus server (its query API answers with what happened)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from functions.__main__ import probe_port
from tests.integration.conftest import REPO, Proc, free_port, wait_for
from tests.integration.test_messaging import clients, make_users, mid  # noqa: F401 (clients: a fixture)

pytestmark = pytest.mark.integration
TOOLS = REPO / "deploy" / "local" / "tools.sh"


def get(url: str) -> tuple[int, bytes, str]:
    """Status, body and content type of a GET (an error status is an answer too)."""
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


def scrape(base: str) -> dict:
    """``{(sample name, frozenset(labels)): value}`` of ``base``/metrics, parsed by prometheus_client."""
    status, body, ctype = get(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def processed(observed) -> float:
    """send's pingme_events_processed_total, read from its /metrics."""
    return value(scrape(observed.send), "pingme_events_processed_total", function="send")


@pytest.fixture(scope="module")
def observed(module_procs):
    """send (with its probe port) and deliver as processes of their own, and one gateway."""
    port = free_port()
    module_procs.function("send", FUNCTION_PORT=str(port))
    module_procs.function("deliver")
    return SimpleNamespace(gw=module_procs.gateway(), send=f"http://127.0.0.1:{port}", port=port,
                           sent=0)


def chat(cfg, observed, clients, count: int) -> None:  # noqa: F811 (clients: the fixture)
    """Alice sends ``count`` messages to Bob over WebSockets; each is acked and pushed."""
    alice, bob = make_users(cfg, 2)
    a, b = clients(observed.gw, alice), clients(observed.gw, bob)
    for i in range(count):
        msg = mid()
        a.send("send", {"msg_id": msg, "to_user_id": bob.id, "content": f"m{i}"})
        a.expect("message_ack", where=lambda p, msg=msg: p["msg_id"] == msg)
        b.expect("message", where=lambda p, msg=msg: p["msg_id"] == msg)
    observed.sent += count
    a.close()
    b.close()


def test_a_running_function_is_live_and_ready(observed):
    status, body, ctype = get(observed.send + "/healthz")
    assert (status, ctype, json.loads(body)["status"]) == (200, "application/json", "alive")
    status, body, _ = get(observed.send + "/readyz")
    ready = json.loads(body)
    assert status == 200 and ready["not_ready"] == [], ready
    assert {name for name, check in ready["checks"].items() if check["ok"]} == {
        "group", "running", "db", "redis", "kafka"}
    samples = scrape(observed.send)
    assert value(samples, "pingme_rebalances_total", function="send") >= 1
    assert value(samples, "pingme_assigned_partitions", function="send") == 2  # KAFKA_PARTITIONS


@pytest.mark.parametrize("dependency, env_name", [("redis", "REDIS_PORT"), ("db", "DB_PORT")])
def test_readyz_names_the_dependency_that_is_unreachable(start_function, dependency, env_name):
    """A worker pointed at a closed port (the shared servers stay up) joins its group and stays
    live, but is not ready, and says why."""
    port = free_port()
    start_function("login", FUNCTION_PORT=str(port), **{env_name: str(free_port())})
    base = f"http://127.0.0.1:{port}"
    status, body, _ = get(base + "/readyz")
    ready = json.loads(body)
    assert status == 503 and ready["not_ready"] == [dependency], ready
    assert ready["checks"][dependency] == {**ready["checks"][dependency], "ok": False}
    assert get(base + "/healthz")[0] == 200  # an outage must not get the worker restarted


def test_a_message_moves_the_function_and_gateway_counters(cfg, observed, clients):  # noqa: F811
    gw_before, fn_before = scrape(observed.gw.base), scrape(observed.send)
    processed_before = processed(observed)
    chat(cfg, observed, clients, 3)
    wait_for(lambda: processed(observed) - processed_before >= 3, timeout=15,
             what="send's processed counter to count 3 events")
    assert processed(observed) - processed_before == 3
    fn = scrape(observed.send)
    assert value(fn, "pingme_batch_seconds_count", function="send") > value(
        fn_before, "pingme_batch_seconds_count", function="send")
    assert value(fn, "pingme_handler_seconds_count", function="send", call="handle_batch") >= value(
        fn_before, "pingme_handler_seconds_count", function="send", call="handle_batch") + 1
    assert not any(name == "pingme_events_failed_total" and value_ for (name, _), value_ in fn.items())

    def delta(name, **labels):
        return value(scrape(observed.gw.base), name, **labels) - value(gw_before, name, **labels)
    assert delta("pingme_ws_frames_in_total", type="send") == 3
    assert delta("pingme_ws_frames_out_total", type="message_ack") == 3
    assert delta("pingme_ws_frames_out_total", type="message") == 3  # to Bob; never echoed to Alice
    assert delta("pingme_ws_frames_out_total", type="auth_ok") == 2
    assert delta("pingme_ws_connections_opened_total") == 2
    wait_for(lambda: delta("pingme_ws_connections_closed_total") == 2, what="both sockets counted closed")
    assert value(scrape(observed.gw.base), "pingme_ws_connections") == value(gw_before, "pingme_ws_connections")

    # Lag is brought up to date every few seconds: both partitions of send's topic, nothing left.
    def lags():
        fn = scrape(observed.send)
        return {labels: v for (name, labels), v in fn.items() if name == "pingme_consumer_lag"}
    wait_for(lambda: len(lags()) == 2, timeout=15, what="a lag series per partition")
    assert all(dict(labels)["function"] == "send" and v == 0 for labels, v in lags().items()), lags()
    # The idle worker's loop keeps coming round (a poll every 0.2 s): liveness sees it recent.
    assert json.loads(get(observed.send + "/healthz")[1])["loop_idle_s"] < 1.0


def test_an_unanswered_request_counts_a_reply_timeout(start_gateway):
    """No login worker runs: the gateway answers 10008 and counts the timeout."""
    gw = start_gateway(KAFKA_REQUEST_TIMEOUT_MS="500")
    before = value(scrape(gw.base), "pingme_reply_timeouts_total", function="login")
    status, body = gw.call("POST", "/api/v1/auth/login", {"username": "nobody1", "password": "secret123"})
    assert (status, body["code"]) == (504, 10008)
    assert value(scrape(gw.base), "pingme_reply_timeouts_total", function="login") == before + 1


def test_python_m_functions_all_gives_each_child_its_own_port(base_env, cfg):
    """Two functions under the supervisor with FUNCTION_PORT=P: each serves on P + its index in
    functions.FUNCTIONS, and the process behind each port is that function."""
    base = free_port()
    while not all(_closed(probe_port(name, base)) for name in ("retry", "dlq")):
        base = free_port()
    proc = Proc([sys.executable, "-m", "functions", "retry", "dlq"], {**base_env, "FUNCTION_PORT": str(base)},
                "fn-supervisor")
    try:
        for name in ("retry", "dlq"):
            url = f"http://127.0.0.1:{probe_port(name, base)}"
            wait_for(lambda url=url: _status(url + "/readyz") == 200, timeout=60, what=f"{name} ready at {url}")
            assert ("pingme_rebalances_total", frozenset({"function": name}.items())) in scrape(url)
    finally:
        assert proc.stop() == 0


def _closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _status(url: str) -> int | None:
    try:
        return get(url)[0]
    except OSError:
        return None


# -- a scrape by the real Prometheus server ------------------------------------------------------

@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    out = subprocess.run(["bash", str(TOOLS), "path", "prometheus"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_prometheus_scrapes_a_function_and_the_gateway(cfg, observed, clients, prometheus_bin,  # noqa: F811
                                                       tmp_path, base_env):
    chat(cfg, observed, clients, 2)
    gateway = observed.gw.base.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: send\n    static_configs:\n      - targets: ['127.0.0.1:{observed.port}']\n"
        f"  - job_name: gateway\n    static_configs:\n      - targets: ['{gateway}']\n")
    port = free_port()
    prom = Proc([prometheus_bin, f"--config.file={tmp_path / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                 "--log.level=warn"], base_env, "prometheus")

    def query(expr: str) -> dict:
        """``{job: value}`` of an instant query (nothing while Prometheus is not up yet)."""
        try:
            status, body, _ = get(f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        except OSError:
            return {}
        if status == 503:  # still starting: "Service Unavailable" in plain text until it is ready
            return {}
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", answer
        return {r["metric"].get("job"): float(r["value"][1]) for r in answer["data"]["result"]}

    try:
        wait_for(lambda: query("up") == {"send": 1.0, "gateway": 1.0}, timeout=30,
                 what="Prometheus to scrape both targets successfully")
        # Every message sent in this module went through send (counted once its batch finished).
        wait_for(lambda: processed(observed) >= observed.sent, timeout=15, what="send to count every message")
        direct = processed(observed)
        wait_for(lambda: query('pingme_events_processed_total{function="send"}') == {"send": direct},
                 timeout=15, what="Prometheus to hold send's processed count")
        frames = query('pingme_ws_frames_in_total{type="send"}')
        assert frames["gateway"] >= observed.sent
        assert query('pingme_handler_seconds_count{function="send", call="handle_batch"}')["send"] >= 1
    finally:
        prom.stop()
