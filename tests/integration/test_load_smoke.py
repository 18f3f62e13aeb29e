"""The load tools at a tiny size against the test system. chat_load runs, checks, and finds no
loss; it reports the system's processes and, with matplotlib installed, writes its latency plot.
conn_capacity opens its sockets and measures the gateway worker."""
import importlib.util
import json
import subprocess
import sys

from common import bus
from tests.integration.conftest import REPO, wait_for
from tests.load import history as history_mod, procstats


def test_chat_load_tool_smoke(gw1, tmp_path):
    out = tmp_path / "load.json"
    done = subprocess.run([sys.executable, "-m", "tests.load.chat_load", "--url", gw1.base, "--pairs", "2",
                           "--rate", "40", "--duration", "1", "--out", str(out), "--read-every", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["sent"] == result["delivered"] == 40
    assert result["lost"] == 0 and result["sync_problems"] == 0 and result["errors"] == 0
    assert 0 < result["e2e_ms"]["p50"] <= result["e2e_ms"]["p99"]
    # The operation history (tests/load/history.py) holds every send, ack, push, receipt and the final
    # reads, and its checker finds nothing wrong.
    checker = result["checker"]
    assert checker["ok"], checker
    assert checker["stats"]["acked"] == 40 and checker["stats"]["conversations_read"] == 2, checker
    assert checker["stats"]["receipts"] > 0, checker
    processes = result["processes"]
    assert processes["gw-master"]["pids"] == [gw1.proc.popen.pid], processes  # the gateway under load
    # Both did work for 40 messages: a zero means the tool measured the wrong processes.
    assert processes["gw"]["cpu_pct"] > 0 and processes["send"]["cpu_pct"] > 0, processes
    assert sum(row["sent"] for row in result["timeline"]) == 40
    png = out.with_suffix(".png")
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.exists() and png.stat().st_size > 0, done.stdout[-2000:]
    else:  # the tool says why there is no plot instead of failing or staying silent
        assert not png.exists() and "matplotlib is not installed" in done.stdout, done.stdout[-2000:]


def test_chat_load_leaves_the_warmup_out_of_the_latency_figures_only(gw1, tmp_path):
    out = tmp_path / "warm.json"
    done = subprocess.run([sys.executable, "-m", "tests.load.chat_load", "--url", gw1.base, "--pairs", "2",
                           "--rate", "40", "--duration", "2", "--warmup", "1", "--out", str(out), "--plot", ""],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["sent"] == result["acked"] == result["delivered"] == 80 and result["lost"] == 0
    assert result["timed"] == 40 and result["warmup_s"] == 1
    assert result["ack_ms"]["count"] == result["e2e_ms"]["count"] == 40
    assert result["checker"]["ok"] and result["checker"]["stats"]["acked"] == 80, result["checker"]


def test_chat_load_tool_over_http_smoke(gw1, tmp_path):
    """chat_load --http: every message is a POST /api/v1/messages whose answer is its ack (the
    gateway served them, and the history has the acks on the HTTP clients), delivered and stored
    once; latency split at the stored time; the connections capped."""
    out, history = tmp_path / "http.json", tmp_path / "http-history.jsonl"
    posts_before = gw1.proc.log().count('"POST /api/v1/messages" 200')
    done = subprocess.run([sys.executable, "-m", "tests.load.chat_load", "--url", gw1.base, "--pairs", "2",
                           "--rate", "40", "--duration", "1", "--out", str(out), "--http", "--connections", "3",
                           "--history", str(history)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["transport"] == "http"
    assert result["sent"] == result["acked"] == result["delivered"] == 40
    assert result["lost"] == 0 and result["sync_problems"] == 0 and result["errors"] == 0
    assert result["checker"]["ok"] and result["checker"]["stats"]["acked"] == 40, result["checker"]
    acks = [op for op in history_mod.read(history) if op["op"] == "ack"]
    assert len(acks) == 40 and all(op["conn"].startswith("http-") for op in acks)
    assert wait_for(lambda: gw1.proc.log().count('"POST /api/v1/messages" 200') - posts_before == 40,
                    timeout=10, what="the gateway's access log lines")
    assert 1 <= result["http_connections"]["opened"] <= 3
    assert 0 < result["ack_ms"]["p50"] <= result["ack_ms"]["p99"]
    stages = result["stages_ms"]
    assert stages["to_stored"]["count"] == stages["stored_to_ack"]["count"] == 40
    assert result["late_ms"]["count"] == 40
    assert result["processes"]["gw"]["cpu_pct"] > 0, result["processes"]
    if importlib.util.find_spec("matplotlib") is not None:
        assert out.with_suffix(".png").stat().st_size > 0


def test_conn_capacity_tool_smoke(gw1, tmp_path):
    out = tmp_path / "capacity.json"
    [worker] = procstats.children(gw1.proc.popen.pid)  # the gunicorn worker that holds the sockets
    done = subprocess.run([sys.executable, "-m", "tests.load.conn_capacity", "--url", gw1.base, "--count", "8",
                           "--per-user", "4", "--gateway-pid", str(worker), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert (result["requested"], result["opened"], result["failures"], result["users"]) == (8, 8, 0, 2)
    assert result["open_seconds"] > 0 and result["gateway_rss_after_kb"] > 0


def test_idle_tool_smoke(cfg, tmp_path):
    """tests/load/idle.py at a tiny size: every function's worker measured, the first messages after
    a quiet spell acknowledged (the figures themselves are docs/BENCHMARKS.md's, not asserted)."""
    out = tmp_path / "idle.json"
    done = subprocess.run([sys.executable, "-m", "tests.load.idle", "--seconds", "2", "--samples", "2", "--gap", "1",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=240)
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert sorted(result["cpu_pct"]) == sorted(bus.FUNCTIONS)
    assert result["total_cores"] > 0  # the workers were found and ran
    assert len(result["first_message_ms"]) == 2 and all(ms > 0 for ms in result["first_message_ms"])


def test_store_cost_tool_smoke(tmp_path):
    """tests/load/store_cost.py at a tiny size: both ways of executing the store's statements store
    every send (the tool exits non-zero otherwise) and are measured."""
    out = tmp_path / "store-cost.json"
    done = subprocess.run([sys.executable, "-m", "tests.load.store_cost", "--batch", "3", "--rounds", "2",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())["3"]
    assert set(result) == {"rendered once", "rendered each time"}
    assert all(figures["median_us"] > 0 for figures in result.values())
