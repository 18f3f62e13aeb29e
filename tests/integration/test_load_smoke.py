"""The load tool at a tiny size against the test system: it runs, checks, and finds no loss; it
reports the system's processes and, with matplotlib installed, writes its latency plot."""
import importlib.util
import json
import subprocess
import sys

from tests.integration.conftest import REPO


def test_chat_load_tool_smoke(gw1, tmp_path):
    out = tmp_path / "load.json"
    done = subprocess.run([sys.executable, "-m", "tests.load.chat_load", "--url", gw1.base, "--pairs", "2",
                           "--rate", "40", "--duration", "1", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["sent"] == result["delivered"] == 40
    assert result["lost"] == 0 and result["sync_problems"] == 0 and result["errors"] == 0
    assert 0 < result["e2e_ms"]["p50"] <= result["e2e_ms"]["p99"]
    processes = result["processes"]
    assert processes["gw-master"]["pids"] == [gw1.proc.popen.pid], processes  # the gateway under load
    assert processes["gw"]["cpu_pct"] >= 0 and processes["send"]["cpu_pct"] >= 0, processes
    assert sum(row["sent"] for row in result["timeline"]) == 40
    if importlib.util.find_spec("matplotlib") is not None:
        png = out.with_suffix(".png")
        assert png.exists() and png.stat().st_size > 0, done.stdout[-2000:]
