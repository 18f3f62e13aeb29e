"""Shared by the deployment-file tests: the project's tools (deploy/local/tools.sh builds and caches
them), the third-party CRDs they validate against, and deploy/k8s rendered by the real kustomize,
as `kubectl apply -k` would render it.

Why the real kustomize and not a Python subset of it: it builds from its Go module in ~20 s once
(then cached in ~/.cache/pingme), and what it renders is what an operator applies; a re-implementation
would test our reading of kustomize's rules (label propagation, patch targets, Secret name hashes)
instead of the manifests.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAY = "overlays/example"
CACHE = Path(os.environ.get("PINGME_CACHE_DIR") or Path.home() / ".cache" / "pingme")


def tool(name: str, timeout: float = 900) -> str:
    """The path of a tool of deploy/local/tools.sh, built or installed first when missing."""
    out = subprocess.run(["bash", str(REPO / "deploy/local/tools.sh"), "path", name],
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"tools.sh path {name} failed:\n{out.stderr[-3000:]}"
    return out.stdout.strip().splitlines()[-1]


def find_vendor_dir() -> Path | None:
    """The shared vendor folder: $PINGME_VENDOR_DIR, else a `shared/vendor` beside the repository or
    one of its parents, else /work/shared/vendor."""
    if os.environ.get("PINGME_VENDOR_DIR"):
        return Path(os.environ["PINGME_VENDOR_DIR"])
    for parent in REPO.parents:
        if (parent / "shared" / "vendor" / "crds").is_dir():
            return parent / "shared" / "vendor"
    fallback = Path("/work/shared/vendor")
    return fallback if (fallback / "crds").is_dir() else None


@pytest.fixture(scope="session")
def crd_dir() -> Path:
    vendor = find_vendor_dir()
    if vendor is None or not (vendor / "crds").is_dir():
        message = ("the KEDA and Strimzi CRDs were not found: set PINGME_VENDOR_DIR to the folder "
                   "holding crds/ (the shared vendor folder), or put it at ../shared/vendor")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return vendor / "crds"


def render(k8s_dir: Path, workdir: Path, overlay: str = OVERLAY) -> list[dict]:
    """Every object `kustomize build` makes of ``overlay``, with the overlay's secrets.env made from
    its committed example (the real one is never committed)."""
    copy = workdir / "k8s"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(k8s_dir, copy)
    example = copy / overlay / "secrets.env.example"
    shutil.copy(example, example.with_suffix(""))
    out = subprocess.run([tool("kustomize"), "build", str(copy / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kustomize build {overlay} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> list[dict]:
    return render(K8S, tmp_path_factory.mktemp("k8s"))


def objects(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


ENV_READ = re.compile(r"""\b(?:env|environ)\.get\(\s*["']([A-Z][A-Z0-9_]*)["']|"""
                      r"""\benviron\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\]|\bgetenv\(\s*["']([A-Z][A-Z0-9_]*)["']""")


def env_names_read_by_code() -> set[str]:
    """Every environment variable the product reads: the settings' variables, and the names the
    code reads from the environment itself (LOG_FORMAT, BUILD_COMMIT, ...)."""
    from common.config import SETTINGS

    names = {s.env for s in SETTINGS if s.env}
    for package in ("common", "functions", "gateway"):
        for path in (REPO / package).rglob("*.py"):
            for match in ENV_READ.finditer(path.read_text()):
                names.add(next(group for group in match.groups() if group))
    return names
