"""Keep the packaging honest: Dockerfile, docker-compose.yml, Makefile and .ci/run must agree with the
real CLI (`app.cli.build_parser`) and with the configuration variables of SPEC §2.

No Docker engine is needed: the files are parsed, the Makefile is dry-run with `make -n`, and the
image's HEALTHCHECK command is executed against a local HTTP server.
"""

from __future__ import annotations

import argparse
import fnmatch
import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT.parent / "shared" / "SPEC.md"

# SPEC §2, "Configuration": every variable an operator may set. Kept here because the spec is not part
# of every checkout; where it is, `spec_variables()` checks this list against its table.
SPEC_VARIABLES = frozenset(
    {
        "AKOOL_API_KEY",
        "AKOOL_CLIENT_ID",
        "AKOOL_CLIENT_SECRET",
        "AKOOL_BASE_URL",
        "DATABASE_URL",
        "RELAY_HOST",
        "RELAY_PORT",
        "RELAY_API_TOKENS",
        "RELAY_WEBHOOK_SECRET",
        "RELAY_ALLOW_PRIVATE_CALLBACKS",
        "RELAY_POLL_INTERVAL_MIN",
        "RELAY_POLL_INTERVAL_MAX",
        "RELAY_POLL_CONCURRENCY",
        "RELAY_AKOOL_RATE_LIMIT",
        "RELAY_JOB_TIMEOUT",
        "RELAY_NOT_FOUND_GRACE",
        "RELAY_DELIVERY_TIMEOUT",
        "RELAY_RETRY_SCHEDULE",
    }
)
CONFIG_PREFIXES = ("RELAY_", "AKOOL_", "DATABASE_")


def spec_variables() -> frozenset[str]:
    if SPEC.is_file():
        section = SPEC.read_text(encoding="utf-8").split("\n## 2.", 1)[1].split("\n## ", 1)[0]
        in_table = set()
        for line in section.splitlines():
            if line.startswith("|"):
                in_table.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
        assert in_table == SPEC_VARIABLES, f"SPEC_VARIABLES is out of date with {SPEC}"
    return SPEC_VARIABLES


def config_names(names: Iterable[str]) -> set[str]:
    return {n for n in names if n.startswith(CONFIG_PREFIXES)}


# --- the real CLI -------------------------------------------------------------------------------------


def cli_subcommands() -> set[str]:
    parser = build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(subparsers) == 1, "build_parser() should have exactly one set of subcommands"
    return set(subparsers[0].choices)


def assert_real_command(argv: list[str], where: str) -> None:
    """`argv` is an `akool-relay …` command line the real parser accepts as it stands."""
    assert argv[:1] == ["akool-relay"], f"{where}: {argv} does not run akool-relay"
    assert len(argv) > 1, f"{where}: akool-relay without a subcommand"
    assert argv[1] in cli_subcommands(), f"{where}: `{argv[1]}` is not a subcommand of akool-relay"
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: the CLI rejects `{shlex.join(argv)}` (exit {exc.code})")


def test_cli_has_the_spec_subcommands() -> None:
    assert {"serve", "migrate", "demo", "simulator", "webhook-secret"} <= cli_subcommands()


# --- docker-compose.yml -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_text() -> str:
    return (ROOT / "docker-compose.yml").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    data = yaml.safe_load(compose_text)
    assert isinstance(data, dict)
    assert isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    assert isinstance(env, dict)
    return env


def command(service: dict[str, Any]) -> list[str] | None:
    cmd = service.get("command")
    if cmd is None:
        return None
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def test_compose_commands_are_real_subcommands(services: dict[str, dict[str, Any]]) -> None:
    seen = set()
    for name, service in services.items():
        argv = command(service)
        if argv and argv[0] == "akool-relay":
            assert_real_command(argv, f"docker-compose.yml service {name!r}")
            seen.add(argv[1])
        elif "build" in service:
            pytest.fail(f"service {name!r} builds the relay image but names no akool-relay command")
    assert {"serve", "migrate"} <= seen


def test_compose_relay_scales_without_collisions(services: dict[str, dict[str, Any]]) -> None:
    relay = services["relay"]
    assert command(relay) == ["akool-relay", "serve"]
    assert "container_name" not in relay, "container_name makes `--scale relay=N` impossible"
    env = environment(relay)
    assert env.get("RELAY_HOST") == "0.0.0.0"
    port = str(env.get("RELAY_PORT"))
    assert port in [str(p) for p in relay.get("expose", [])]
    container_ports = []
    for entry in relay.get("ports", []):
        if isinstance(entry, dict):
            assert "published" not in entry, f"fixed host port {entry} collides when scaled"
            container_ports.append(str(entry["target"]))
            continue
        parts = str(entry).split("/")[0].split(":")
        # "8000", "IP::8000" publish on an ephemeral host port; "8000:8000", "IP:8000:8000" do not.
        host_port = parts[-2] if len(parts) >= 2 else ""
        assert not host_port, f"fixed host port in {entry!r} collides when scaled"
        container_ports.append(parts[-1])
    assert port in container_ports, "the relay's port is not published"


def test_compose_migrate_runs_before_relay(services: dict[str, dict[str, Any]]) -> None:
    migrate, relay = services["migrate"], services["relay"]
    assert command(migrate) == ["akool-relay", "migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert relay["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # An unquoted `no` is YAML for false, which Compose rejects.
    assert migrate.get("restart") == "no"
    assert environment(migrate)["DATABASE_URL"] == environment(relay)["DATABASE_URL"]


def test_compose_postgres_is_healthchecked_and_matches_the_url(compose: dict[str, Any]) -> None:
    services = compose["services"]
    postgres = services["postgres"]
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    named_volumes = set(compose.get("volumes") or {})
    assert any(str(v).split(":")[0] in named_volumes for v in postgres.get("volumes", [])), "no named volume"
    pg_env = environment(postgres)
    url = urlsplit(environment(services["relay"])["DATABASE_URL"])
    assert url.scheme.startswith("postgres")
    assert url.hostname == "postgres" and (url.port or 5432) == 5432
    assert url.username == pg_env["POSTGRES_USER"]
    assert url.password == pg_env["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == pg_env["POSTGRES_DB"]


def test_compose_uses_only_spec_variables(services: dict[str, dict[str, Any]], compose_text: str) -> None:
    allowed = spec_variables()
    for name, service in services.items():
        unknown = config_names(environment(service)) - allowed
        assert not unknown, f"service {name!r} sets variables that SPEC §2 does not define: {unknown}"
    interpolated = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", compose_text))
    assert not config_names(interpolated) - allowed


def test_compose_never_passes_empty_secrets(compose_text: str) -> None:
    # `${X:-}` hands the container X="" when X is unset, which the settings read as a (bad) value, e.g.
    # an empty RELAY_WEBHOOK_SECRET instead of "generate one". A bare `X:` passes X through or leaves it unset.
    assert not re.findall(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-\}", compose_text)


# --- Dockerfile ---------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    instructions, pending = [], ""
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    return instructions[last_from:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "ENV":
            words = shlex.split(args)
            if "=" not in words[0]:  # legacy form: ENV KEY value
                env[words[0]] = " ".join(words[1:])
            else:
                env.update(word.split("=", 1) for word in words)
    return env


def exec_form(args: str) -> list[str]:
    """The JSON (exec) form of CMD/HEALTHCHECK CMD; the shell form would wrap it in /bin/sh -c."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_dockerfile_builds_a_wheel_and_installs_it_plainly() -> None:
    instructions = dockerfile_instructions()
    bases = [args.split()[0] for kw, args in instructions if kw == "FROM"]
    assert len(bases) >= 2, "expected a multi-stage build"
    assert all(base == "python:3.11-slim" for base in bases)
    assert any(kw == "RUN" and "pip wheel" in args for kw, args in instructions)
    installs = [args for kw, args in final_stage() if kw == "RUN" and "pip install" in args]
    assert installs, "the final stage does not pip install the wheel"
    for args in installs:
        assert not re.search(r"(^|\s)(-e|--editable)(\s|$)", args), "the image needs a plain install"


def test_dockerfile_runs_as_non_root_with_a_writable_data_dir() -> None:
    stage = final_stage()
    users = [args for kw, args in stage if kw == "USER"]
    assert users, "the final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    database_url = dockerfile_env()["DATABASE_URL"]
    assert database_url.startswith("sqlite:////")
    data_dir = str(Path(database_url.removeprefix("sqlite:///")).parent)
    assert any(
        kw == "RUN" and re.search(rf"chown\s+(\S+\s+)*{re.escape(user)}(:\S+)?\s+(\S+\s+)*{data_dir}\b", args)
        for kw, args in stage
    ), f"{data_dir} is not made writable by {user}"


def test_dockerfile_listens_publicly_on_the_exposed_port() -> None:
    env = dockerfile_env()
    assert env["RELAY_HOST"] == "0.0.0.0"
    exposed = {
        p.split("/")[0] for kw, args in dockerfile_instructions() if kw == "EXPOSE" for p in args.split()
    }
    assert exposed == {env["RELAY_PORT"]}


def test_dockerfile_uses_only_spec_variables() -> None:
    assert not config_names(dockerfile_env()) - spec_variables()


def test_dockerfile_cmd_is_a_real_subcommand() -> None:
    cmds = [args for kw, args in final_stage() if kw == "CMD"]
    assert cmds, "the image has no CMD"
    assert exec_form(cmds[-1]) == ["akool-relay", "serve"]
    assert_real_command(exec_form(cmds[-1]), "Dockerfile CMD")


def test_dockerfile_copies_only_files_that_exist_and_are_not_ignored() -> None:
    ignored = [
        line.strip().removeprefix("**/").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (".venv", ".git", "*.db", ".env"):
        assert needed in ignored, f".dockerignore should exclude {needed}"
    for keyword, args in dockerfile_instructions():
        words = args.split()
        if keyword not in ("COPY", "ADD") or any(w.startswith("--from") for w in words):
            continue
        for source in [w for w in words if not w.startswith("--")][:-1]:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
            hits = [p for p in ignored if fnmatch.fnmatch(source.rstrip("/"), p)]
            assert not hits, f"Dockerfile copies {source}, which .dockerignore excludes ({hits})"


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_dockerfile_healthcheck_hits_healthz(status: int, healthy: bool) -> None:
    checks = [args for kw, args in final_stage() if kw == "HEALTHCHECK"]
    assert checks, "the image has no HEALTHCHECK"
    argv = exec_form(checks[-1][checks[-1].index("CMD") + len("CMD") :].strip())
    assert argv[0] == "python", "slim images have no curl; check with python"
    assert "/healthz" in " ".join(argv)

    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "RELAY_PORT": str(server.server_address[1])}
        result = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert (result.returncode == 0) is healthy, result.stderr.decode()


# --- Makefile and .ci/run -----------------------------------------------------------------------------


def make_dry_run(*args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def test_makefile_targets_are_phony() -> None:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    phony = {t for line in re.findall(r"^\.PHONY:(.*)$", text, re.M) for t in line.split()}
    defined = set(re.findall(r"^([A-Za-z][\w-]*):(?!=)", text, re.M))
    for target in ("run", "test", "bench", "lint", "fmt", "demo", "migrate"):
        assert target in defined and target in phony, f"make {target} is missing or not .PHONY"


def test_make_test_lints_type_checks_then_runs_pytest() -> None:
    lines = make_dry_run("test", "PYTEST_ARGS=-k sentinel")
    expected = [
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        ".venv/bin/mypy app",
        ".venv/bin/pytest -k sentinel",
    ]
    positions = [lines.index(step) for step in expected]
    assert positions == sorted(positions)
    assert lines[-1] == expected[-1]


@pytest.mark.parametrize("target", ["run", "demo", "migrate"])
def test_make_runs_real_subcommands(target: str) -> None:
    last = make_dry_run(target)[-1]
    argv = shlex.split(last)
    assert argv[0] == ".venv/bin/akool-relay"
    assert_real_command(["akool-relay", *argv[1:]], f"make {target}")


def test_make_bench_runs_the_benchmarks_package() -> None:
    assert make_dry_run("bench", "BENCH_ARGS=--sentinel")[-1] == ".venv/bin/python -m benchmarks --sentinel"


def test_make_installs_into_the_venv_only_when_pyproject_changes() -> None:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^PYTHON \?= python3$", text, re.M)
    assert re.search(r"^(\$\(STAMP\)|\.venv/\.installed):.*pyproject\.toml", text, re.M)


def test_ci_run_requires_postgres_and_hides_no_failure() -> None:
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK), ".ci/run is not executable"
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n") or text.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in text
    runs = [line for line in text.splitlines() if re.search(r"\bmake test\b", line)]
    assert len(runs) == 1
    assert "RELAY_REQUIRE_POSTGRES=1" in runs[0]
    assert "||" not in runs[0] and "; true" not in runs[0], "the suite's exit code must reach CI"
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


# --- README -------------------------------------------------------------------------------------------


def test_readme_shows_make_run_and_make_test() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = "\n".join(re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S))
    for needed in ("make run", "make test"):
        assert re.search(rf"(^|\s){needed}\b", blocks, re.M), f"README's code blocks should show `{needed}`"
