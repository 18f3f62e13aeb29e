"""The group fan-out benchmark at a tiny size against the test system: it runs, every acked group
message reaches every other member, and the synced copy is complete."""
import json
import subprocess
import sys

from tests.integration.conftest import REPO


def test_group_fanout_tool_smoke(gw1, tmp_path):
    out = tmp_path / "fanout.json"
    done = subprocess.run([sys.executable, "-m", "tests.load.group_fanout", "--url", gw1.base,
                           "--members", "5", "--rate", "10", "--duration", "1", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["sent"] == result["acked"] == 10
    assert result["expected_deliveries"] == 40
    assert result["missing"] == 0 and result["received_deliveries"] == result["expected_deliveries"] > 0
    assert result["self_echo"] == 0 and result["errors"] == 0 and result["fast_path_mismatches"] == 0
    assert result["sync_problems"] == {} and len(result["sync_checked_members"]) == 3
    assert 0 < result["e2e_ms"]["p50"] <= result["e2e_ms"]["p99"]
