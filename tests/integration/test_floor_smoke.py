"""The floor benchmark at a tiny size against the real servers: every record comes back, timed."""
import json
import subprocess
import sys

from tests.integration.conftest import REPO


def test_floor_tool_smoke(base_env, tmp_path):
    out = tmp_path / "floor.json"
    done = subprocess.run([sys.executable, "-m", "tests.load.floor", "--rate", "50", "--duration", "1",
                           "--out", str(out)],
                          cwd=REPO, env=base_env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["sent"] == result["received"] == 50
    assert result["lost"] == 0 and result["send_errors"] == 0
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
