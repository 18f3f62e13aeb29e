"""The load tool at a tiny size against the test system: it runs, checks, and finds no loss."""
import json
import subprocess
import sys

from tests.integration.conftest import REPO


def test_chat_load_tool_smoke(gw1, tmp_path):
    out = tmp_path / "load.json"
    done = subprocess.run([sys.executable, "-m", "tests.load.chat_load", "--url", gw1.base, "--pairs", "2",
                           "--rate", "40", "--duration", "1", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["sent"] == result["delivered"] == 40
    assert result["lost"] == 0 and result["sync_problems"] == 0 and result["errors"] == 0
    assert 0 < result["e2e_ms"]["p50"] <= result["e2e_ms"]["p99"]
