"""deploy/compose.yml as `docker compose` would take it: valid against the compose specification,
every `depends_on` target a service (with the healthcheck or exit its condition waits for), every
`${VAR}` set in deploy/.env.example or defaulted, every variable the application containers get one
the code reads, every function run by its own service, and nginx passing WebSockets to both gateways
with timeouts longer than the gateway's ping interval.

No Docker engine here (../shared/FACTS.md): running the file is the container test's job
(tests/integration/test_containers.py runs the same image with Podman)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common import cli, config as config_mod
from functions import FUNCTIONS
from gateway import ws
from tests.deploy.conftest import REPO, env_names_read_by_code

COMPOSE = REPO / "deploy" / "compose.yml"
ENV_EXAMPLE = REPO / "deploy" / ".env.example"
NGINX = REPO / "deploy" / "nginx" / "nginx.conf"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt}, or $NAME;
# $$ is a literal dollar.
VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<rest>[^}]*))?\}"
                      r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def _variables(text: str) -> list[tuple[str, str | None]]:
    """(name, operator) of every interpolated variable, skipping $$ escapes."""
    found = []
    for match in VARIABLE.finditer(text.replace("$$", "")):
        found.append((match["braced"] or match["bare"], match["op"]))
    return found


def _env_file(path: Path) -> tuple[dict[str, str], set[str]]:
    """(assignments, names of the commented-out optional ones) of an env file."""
    assigned, optional = {}, set()
    for line in path.read_text().splitlines():
        if m := re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line):
            assigned[m[1]] = m[2]
        elif m := re.match(r"^#\s*([A-Z_][A-Z0-9_]*)=", line):
            optional.add(m[1])
    return assigned, optional


def _interpolate(text: str, values: dict[str, str]) -> str:
    """What compose makes of ``text`` with ``values`` as its .env (the subset of its rules used here)."""
    def substitute(match: re.Match) -> str:
        name = match["braced"] or match["bare"]
        op, rest = match["op"], match["rest"]
        value = values.get(name)
        if op in ("-", ":-") and (value is None or (op == ":-" and value == "")):
            return rest
        if op in ("?", ":?") and (value is None or (op == ":?" and value == "")):
            raise AssertionError(f"compose would stop: {name}: {rest}")
        if op in ("+", ":+"):
            return rest if value is not None and (op == "+" or value != "") else ""
        return value or ""
    return VARIABLE.sub(substitute, text.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    """deploy/compose.yml as compose reads it with deploy/.env copied from the example (PyYAML
    resolves the `<<:` merges as compose does)."""
    return yaml.safe_load(_interpolate(COMPOSE.read_text(), _env_file(ENV_EXAMPLE)[0]))


def _depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _app_services(compose: dict) -> dict[str, dict]:
    """The services that run the PingMe image (the ones built from deploy/Dockerfile)."""
    return {name: s for name, s in compose["services"].items() if s.get("build")}


def test_compose_file_is_valid_for_the_compose_specification():
    checker = Path(sys.executable).with_name("check-jsonschema")  # requirements-test.txt
    out = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_depends_on_target_is_a_service_that_can_meet_its_condition(compose):
    services = compose["services"]
    problems = []
    for name, service in services.items():
        for target, condition in _depends_on(service).items():
            if target not in services:
                problems.append(f"{name} depends on {target!r}, which is not a service")
                continue
            check = services[target].get("healthcheck") or {}
            if condition == "service_healthy" and (not check.get("test") or check.get("disable")):
                problems.append(f"{name} waits for {target} to be healthy, but {target} has no healthcheck")
            if condition == "service_completed_successfully" and services[target].get("restart", "no") != "no":
                problems.append(f"{name} waits for {target} to exit, but {target} is restarted")
    assert not problems, "\n".join(problems)


def test_every_variable_is_set_in_the_env_example_or_has_a_default():
    assigned, optional = _env_file(ENV_EXAMPLE)
    used = _variables(COMPOSE.read_text())
    missing = sorted({name for name, op in used if name not in assigned and op not in ("-", ":-")})
    assert not missing, f"used by deploy/compose.yml without a default, not set in deploy/.env.example: {missing}"
    # And the example documents nothing that compose.yml does not read (a misspelt name would be
    # silently ignored).
    stale = sorted((set(assigned) | optional) - {name for name, _ in used})
    assert not stale, f"deploy/.env.example names variables deploy/compose.yml never reads: {stale}"


def test_the_example_secrets_are_refused_in_production():
    """A copied-but-not-edited deploy/.env must not start a production gateway."""
    assigned, _ = _env_file(ENV_EXAMPLE)
    with pytest.raises(config_mod.ConfigError, match="JWT_SECRET"):
        config_mod.load({"APP_ENV": "production", "DB_ENGINE": "mysql", "JWT_SECRET": assigned["JWT_SECRET"]})


def test_application_containers_get_only_variables_the_code_reads(compose):
    known = env_names_read_by_code()
    unknown = {name: sorted(set(s.get("environment", {})) - known)
               for name, s in _app_services(compose).items()}
    assert not any(unknown.values()), f"variables no code reads (misspelt?): {unknown}"


def test_each_function_runs_in_its_own_scaled_service_with_its_probe_port(compose):
    apps = _app_services(compose)
    runs = {}
    for name, service in apps.items():
        command = service.get("command")
        if command and command[:3] == ["python", "-m", "functions"]:
            assert len(command) == 4 and command[3] in FUNCTIONS, f"{name}: {command} names no function"
            runs.setdefault(command[3], []).append(name)
            cfg = config_mod.load({**service["environment"], "JWT_SECRET": "x" * 40,
                                   "DB_PASSWORD": "secret"})
            assert cfg.app.function_port == 9100, f"{name}: FUNCTION_PORT is {cfg.app.function_port}"
            replicas = service.get("deploy", {}).get("replicas")
            assert isinstance(replicas, int) and 1 <= replicas <= cfg.kafka.partitions, \
                f"{name}: deploy.replicas {replicas} (1..{cfg.kafka.partitions} partitions)"
    assert {fn: len(names) for fn, names in runs.items()} == {fn: 1 for fn in FUNCTIONS}


def test_setup_runs_the_schema_and_topic_commands_of_the_cli(compose):
    setup = compose["services"]["setup"]
    script = setup["command"][-1]
    commands = [part.split() for part in script.split("&&")]
    assert [c[:3] for c in commands] == [["python", "-m", "common.cli"]] * 2, script
    parsed = [cli.parse(c[3:]) for c in commands]  # argparse exits on a command the CLI lacks
    assert [(a.area, a.action) for a in parsed] == [("db", "migrate"), ("topics", "ensure")]
    dependants = [name for name, s in compose["services"].items()
                  if _depends_on(s).get("setup") == "service_completed_successfully"]
    gateways = [name for name, s in _app_services(compose).items() if not s.get("command")]
    assert set(dependants) >= set(gateways) | set(FUNCTIONS)


def test_nginx_sends_websockets_to_both_gateways_with_long_enough_timeouts(compose):
    conf = NGINX.read_text()
    gateways = sorted(name for name, s in _app_services(compose).items() if not s.get("command"))
    assert len(gateways) == 2, gateways
    port = config_mod.load({}).app.port  # the gateways set no APP_PORT: the default
    upstream = re.search(r"upstream\s+(\w+)\s*\{([^}]*)\}", conf)
    servers = sorted(re.findall(r"^\s*server\s+([\w.-]+):(\d+)", upstream[2], re.M))
    assert servers == [(name, str(port)) for name in gateways]
    assert set(_depends_on(compose["services"]["nginx"])) == set(gateways)
    mounts = compose["services"]["nginx"]["volumes"]
    assert any(m.startswith("./nginx/nginx.conf:/etc/nginx/nginx.conf") for m in mounts), mounts

    ws_block = re.search(r"location\s+/ws\s*\{([^}]*)\}", conf)
    assert ws_block, "no `location /ws` block"
    block = ws_block[1]
    assert f"proxy_pass http://{upstream[1]};" in block
    assert "proxy_http_version 1.1;" in block
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", block)
    assert re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade;", block)
    assert re.search(r"map\s+\$http_upgrade\s+\$connection_upgrade\s*\{[^}]*default\s+upgrade;", conf)
    ping = ws.SERVER_OPTIONS["ping_interval"]
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        value = re.search(rf"{directive}\s+(\d+)s;", block)
        assert value and int(value[1]) >= 4 * ping, f"{directive} must outlast several {ping} s pings"
