"""Keep the packaging honest: Dockerfile, docker-compose.yml, Makefile, constraints.txt and .ci/run must
agree with the real CLI (`app.cli.build_parser`), with the variables `app.config.Settings` reads, and
the README's configuration table must name exactly those variables.

Nothing outside the repository is read, and no Docker engine is needed: the files are parsed, the
Makefile is dry-run with `make -n`, and the healthcheck commands are executed against local servers.
"""

from __future__ import annotations

import argparse
import fnmatch
import http.server
import importlib.metadata
import ipaddress
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import AliasChoices, AliasPath

from app.cli import build_parser
from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
CONFIG_PREFIXES = ("RELAY_", "AKOOL_", "DATABASE_")
VARIABLE = r"[A-Z][A-Z0-9_]*"


def config_names(names: Iterable[str]) -> set[str]:
    return {n for n in names if n.startswith(CONFIG_PREFIXES)}


# --- the variables: Settings against the README -------------------------------------------------------


def settings_variables() -> frozenset[str]:
    """Every environment variable `Settings` reads (its aliases, else env_prefix + field name)."""
    prefix = str(Settings.model_config.get("env_prefix") or "")
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias or field.alias
        if isinstance(alias, AliasChoices):
            names.update(c for c in alias.choices if isinstance(c, str))
        elif isinstance(alias, AliasPath):
            names.add(str(alias.path[0]))
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(prefix + field_name)
    return frozenset(n.upper() for n in names)


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no section `## {title}`"
    return match.group(1)


def readme_configuration() -> tuple[set[str], set[str]]:
    """(variables in the first column of the Configuration table, variables named in its prose)."""
    in_table: set[str] = set()
    in_prose: set[str] = set()
    for line in readme_section("Configuration").splitlines():
        if line.startswith("|"):
            in_table.update(re.findall(rf"`({VARIABLE})`", line.split("|")[1]))
        else:
            in_prose.update(config_names(re.findall(rf"`({VARIABLE})`", line)))
    return in_table, in_prose


def test_settings_reads_variables() -> None:
    # The parsing above must see the variables every deployment sets; an empty set would pass anything.
    assert {"DATABASE_URL", "AKOOL_API_KEY", "RELAY_PORT", "RELAY_RETRY_SCHEDULE"} <= settings_variables()


def test_readme_configuration_table_matches_settings() -> None:
    """Every variable the table lists is read by Settings, and every one Settings reads is documented
    (in the table, or among the tuning knobs named under it)."""
    in_table, in_prose = readme_configuration()
    assert len(in_table) >= 10, "the README's configuration table was not found or not parsed"
    read = settings_variables()
    assert not in_table - read, (
        f"the README's table lists variables Settings does not read: {in_table - read}"
    )
    assert not in_prose - read, (
        f"the README's Configuration names variables Settings does not read: {in_prose - read}"
    )
    undocumented = read - in_table - in_prose
    assert not undocumented, (
        f"Settings reads variables the README's Configuration does not name: {undocumented}"
    )


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
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


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
        published = port_mapping(entry)
        # "8000", "IP::8000" publish on an ephemeral host port; "8000:8000", "IP:8000:8000" do not.
        assert not published["host_port"], f"fixed host port in {entry!r} collides when scaled"
        container_ports.append(published["container_port"])
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


def test_compose_uses_only_variables_the_relay_reads(
    services: dict[str, dict[str, Any]], compose_text: str
) -> None:
    allowed = settings_variables()
    for name, service in services.items():
        unknown = config_names(environment(service)) - allowed
        assert not unknown, f"service {name!r} sets variables that Settings does not read: {unknown}"
    interpolated = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", compose_text))
    assert not config_names(interpolated) - allowed


def test_compose_never_passes_empty_secrets(compose_text: str) -> None:
    # `${X:-}` hands the container X="" when X is unset, which the settings read as a (bad) value, e.g.
    # an empty RELAY_WEBHOOK_SECRET instead of "generate one". A bare `X:` passes X through or leaves it unset.
    assert not re.findall(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-\}", compose_text)


_SHORT_PORT = re.compile(
    r"^(?:(?P<host_ip>\[[^\]]*\]|[^:\[\]]+):(?=[^:]*:))?(?:(?P<host_port>[0-9-]*):)?"
    r"(?P<container_port>[0-9-]+)(?:/(?P<protocol>[a-z]+))?$"
)


def port_mapping(entry: Any) -> dict[str, str]:
    """A `ports:` entry, short ("[IP:][HOST:]CONTAINER[/proto]") or long syntax, as its parts ("" if absent)."""
    if isinstance(entry, dict):
        return {
            "host_ip": str(entry.get("host_ip") or ""),
            "host_port": str(entry.get("published") or ""),
            "container_port": str(entry["target"]),
        }
    match = _SHORT_PORT.match(str(entry))
    assert match, f"cannot read the port mapping {entry!r}"
    return {k: match.group(k) or "" for k in ("host_ip", "host_port", "container_port")}


def publishes_on_all_interfaces(entry: Any) -> bool:
    host_ip = port_mapping(entry)["host_ip"].strip("[]")
    return not host_ip or ipaddress.ip_address(host_ip).is_unspecified


@pytest.mark.parametrize(
    ("entry", "everywhere"),
    [
        ("8000", True),
        ("8000:8000", True),
        ("0.0.0.0::8000", True),
        ("[::]:8000:8000/tcp", True),
        ({"target": 8000, "published": 8000}, True),
        ("127.0.0.1::8000", False),
        ("127.0.0.1:8000:8000", False),
        ("[::1]::8000", False),
        ({"target": 8000, "host_ip": "127.0.0.1"}, False),
    ],
)
def test_port_mappings_are_read_right(entry: Any, everywhere: bool) -> None:
    assert publishes_on_all_interfaces(entry) is everywhere


def test_compose_publishes_no_port_on_all_interfaces(services: dict[str, dict[str, Any]]) -> None:
    # The API is open unless RELAY_API_TOKENS is set: a port on 0.0.0.0 hands it to the whole network.
    published = [(name, entry) for name, service in services.items() for entry in service.get("ports", [])]
    assert published, "nothing is published: the tests below would prove nothing"
    for name, entry in published:
        assert not publishes_on_all_interfaces(entry), (
            f"service {name!r} publishes {entry!r} on every interface"
        )


def shell_words(test: Any) -> list[str]:
    """A healthcheck `test` as words: CMD's list as it is, CMD-SHELL's string split like sh would."""
    if isinstance(test, str):
        return shlex.split(test)
    kind, *rest = [str(t) for t in test]
    if kind == "CMD-SHELL":
        return shlex.split(" ".join(rest))
    assert kind == "CMD", f"unexpected healthcheck form {test!r}"
    return rest


def test_compose_postgres_is_checked_over_tcp(services: dict[str, dict[str, Any]]) -> None:
    # Without a host pg_isready asks the Unix socket, where the image's init-time server (listening on
    # no TCP address) answers before the real one starts: `migrate` could run against it and fail.
    words = shell_words(services["postgres"]["healthcheck"]["test"])
    assert "pg_isready" in words
    hosts = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-h", "--host")]
    hosts += [w.split("=", 1)[1] for w in words if w.startswith("--host=")]
    hosts += [w[2:] for w in words if w.startswith("-h") and len(w) > 2]
    assert hosts, "pg_isready without -h checks the Unix socket, not TCP"
    for host in hosts:
        assert host and not host.startswith("/"), f"pg_isready -h {host} is a socket directory, not TCP"


def relay_image_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run the project's image (they run `akool-relay …`)."""
    return {name: s for name, s in services.items() if (command(s) or [""])[0] == "akool-relay"}


def test_compose_builds_the_image_once(services: dict[str, dict[str, Any]]) -> None:
    ours = relay_image_services(services)
    assert {"relay", "migrate"} <= set(ours)
    builders = [name for name, s in services.items() if "build" in s]
    assert len(builders) == 1, f"the image is built by {builders}: build it once, run it by name elsewhere"
    image = services[builders[0]].get("image")
    assert image, f"service {builders[0]!r} builds an image it does not name, so no other service can run it"
    for name, service in ours.items():
        assert service.get("image") == image, f"service {name!r} does not run the built image {image!r}"
        if name != builders[0]:
            # Never looked for in a registry: it exists only once the builder has built it.
            assert service.get("pull_policy") in ("never", "missing", "if_not_present", None), name


def test_compose_services_do_not_inherit_the_relays_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    # The image's HEALTHCHECK asks :RELAY_PORT/healthz, which only `serve` answers.
    for name, service in relay_image_services(services).items():
        argv = command(service) or []
        check = service.get("healthcheck")
        if argv[1:2] == ["serve"]:
            assert not (check or {}).get("disable"), f"service {name!r} serves the API: keep its healthcheck"
            continue
        assert check, f"service {name!r} inherits the image's :8000/healthz check, which it never answers"
        if check.get("disable") or check.get("test") in (["NONE"], "NONE"):
            continue
        words = " ".join(shell_words(check["test"]))
        assert "--port" in argv, f"service {name!r} has a healthcheck but no port of its own to check"
        port = argv[argv.index("--port") + 1]
        assert f":{port}/" in words or f":{port}'" in words, f"{name!r} checks {words!r}, not its port {port}"
        assert "/healthz" not in words, f"service {name!r} checks the relay's /healthz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_check(argv: list[str], replace: tuple[str, str]) -> int:
    argv = [word.replace(*replace) for word in argv]
    if argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


def test_compose_simulator_healthcheck_passes_on_a_running_simulator(
    services: dict[str, dict[str, Any]],
) -> None:
    """The simulator's own check, run for real: it fails while nothing listens, passes once it serves."""
    simulator = services["simulator"]
    argv = command(simulator) or []
    check = simulator.get("healthcheck") or {}
    if check.get("disable"):
        pytest.skip("the simulator's healthcheck is disabled")
    words = shell_words(check["test"])
    port, ours = argv[argv.index("--port") + 1], str(free_port())
    assert run_check(words, (port, ours)) != 0, "the check passes with no simulator running"
    sim_args = [ours if w == port else w for w in argv[1:]]
    sim_args[sim_args.index("--host") + 1] = "127.0.0.1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *sim_args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while (code := run_check(words, (port, ours))) != 0 and time.monotonic() < deadline:
            assert proc.poll() is None, "the simulator exited"
            time.sleep(0.2)
        assert code == 0, "the simulator's healthcheck never passed"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


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
                env.update(word.partition("=")[::2] for word in words)
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


_PERMS = {"r": 4, "w": 2, "x": 1}
_SHIFT = {"u": 6, "g": 3, "o": 0}


def chmod(mode: int, spec: str) -> int:
    """`chmod SPEC` applied to `mode`: octal, or symbolic clauses such as `g=u`, `u+rwx,g-w`."""
    if re.fullmatch(r"[0-7]{3,4}", spec):
        return int(spec, 8)
    for clause in spec.split(","):
        match = re.fullmatch(r"([ugoa]*)([-+=])([rwx]*|[ugo])", clause)
        assert match, f"cannot read chmod {spec}"
        who = match.group(1).replace("a", "ugo") or "ugo"
        what = match.group(3)
        bits = (mode >> _SHIFT[what]) & 7 if what in _SHIFT else sum(_PERMS[c] for c in what)
        for w in who:
            shift = _SHIFT[w]
            if match.group(2) == "=":
                mode &= ~(7 << shift)
            if match.group(2) == "-":
                mode &= ~(bits << shift)
            else:
                mode |= bits << shift
    return mode


def final_directory_state(stage: list[tuple[str, str]], path: str) -> dict[str, Any]:
    """Owner, group and mode of `path` after the stage's RUN lines (mkdir, useradd, chown, chgrp,
    chmod), as numeric ids; `users` maps user and group names to the ids the stage gives them."""
    names = {"root": "0"}
    state: dict[str, Any] = {"owner": None, "group": None, "mode": None, "users": names}
    for keyword, args in stage:
        if keyword != "RUN":
            continue
        for part in re.split(r"&&|;|\|\|", args):
            words = shlex.split(part)
            if not words:
                continue
            tool, rest = words[0], words[1:]
            operands = [w for w in rest if not w.startswith("-")]
            if tool in ("useradd", "groupadd", "adduser", "addgroup"):
                flag = "--uid" if "user" in tool else "--gid"
                short = "-u" if "user" in tool else "-g"
                for i, w in enumerate(rest[:-1]):
                    if w in (flag, short):
                        names[rest[-1]] = rest[i + 1]
            elif path not in operands:
                continue
            elif tool == "mkdir":
                state.update(owner="0", group="0", mode=0o755)
            elif tool == "chown":
                owner, _, group = operands[0].partition(":")
                state["owner"] = names.get(owner, owner)
                if group:
                    state["group"] = names.get(group, group)
            elif tool == "chgrp":
                state["group"] = names.get(operands[0], operands[0])
            elif tool == "chmod":
                assert state["mode"] is not None, f"chmod on {path} before it is made"
                state["mode"] = chmod(state["mode"], operands[0])
    return state


@pytest.mark.parametrize(
    ("mode", "spec", "expected"),
    [(0o755, "g=u", 0o775), (0o755, "775", 0o775), (0o700, "g+rwx,o-rwx", 0o770), (0o777, "go-w", 0o755)],
)
def test_chmod_is_read_right(mode: int, spec: str, expected: int) -> None:
    assert chmod(mode, spec) == expected


def test_dockerfile_runs_as_non_root_with_a_data_dir_any_uid_in_group_0_can_write() -> None:
    """Docker runs the image as its USER; OpenShift (restricted SCC) as an arbitrary UID in group 0."""
    stage = final_stage()
    users = [args for kw, args in stage if kw == "USER"]
    assert users, "the final stage has no USER"
    database_url = dockerfile_env()["DATABASE_URL"]
    assert database_url.startswith("sqlite:////")
    data_dir = str(Path(database_url.removeprefix("sqlite:///")).parent)
    state = final_directory_state(stage, data_dir)
    user = users[-1].split(":")[0]
    uid = state["users"].get(user, user)
    assert uid.isdigit() and uid != "0", f"USER {users[-1]} is root or not a known numeric id"
    assert user.isdigit(), "USER should be numeric, so that Kubernetes' runAsNonRoot can check it"
    assert state["mode"] is not None, f"{data_dir} is never made"
    assert state["owner"] == uid and state["mode"] & 0o300 == 0o300, f"{data_dir} is not writable by {user}"
    assert state["group"] == "0", f"{data_dir} does not belong to group 0: {state}"
    assert state["mode"] & 0o030 == 0o030, f"group 0 cannot write {data_dir} (mode {state['mode']:o})"


def test_dockerfile_has_no_syntax_directive() -> None:
    # `# syntax=…` makes BuildKit pull a frontend image at build time: no registry, no build.
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        assert not re.match(r"#\s*syntax\s*=", line, re.I), f"parser directive {line!r}"


def test_dockerfile_installs_the_pinned_versions() -> None:
    instructions = dockerfile_instructions()
    copied = {w for kw, args in instructions if kw == "COPY" for w in args.split()[:-1]}
    assert CONSTRAINTS.name in copied, f"the image is built without {CONSTRAINTS.name}"
    resolving = [args for kw, args in instructions if kw == "RUN" and re.search(r"pip (wheel|install)", args)]
    assert resolving
    for args in resolving:
        words = shlex.split(args)
        if "--no-index" in words and "--no-deps" in words:
            continue
        pinned = any(
            w in ("-c", "--constraint") and words[i + 1].endswith(CONSTRAINTS.name)
            for i, w in enumerate(words[:-1])
        )
        assert pinned, f"`{args}` resolves dependencies without -c {CONSTRAINTS.name}"


def test_dockerfile_listens_publicly_on_the_exposed_port() -> None:
    env = dockerfile_env()
    assert env["RELAY_HOST"] == "0.0.0.0"
    exposed = {
        p.split("/")[0] for kw, args in dockerfile_instructions() if kw == "EXPOSE" for p in args.split()
    }
    assert exposed == {env["RELAY_PORT"]}


def test_dockerfile_uses_only_variables_the_relay_reads() -> None:
    assert not config_names(dockerfile_env()) - settings_variables()


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
    # One command per line: a recipe line continued with a backslash is printed as it is written.
    joined = re.sub(r"\\\n\s*", " ", result.stdout)
    return [line.strip() for line in joined.splitlines() if line.strip()]


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
        ".venv/bin/mypy",  # the files to check are pyproject's [tool.mypy] files
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


def test_make_installs_into_the_venv_only_when_pyproject_or_the_pins_change() -> None:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^PYTHON \?= python3$", text, re.M)
    rule = re.search(r"^(\$\(STAMP\)|\.venv/\.installed):(.*)$", text, re.M)
    assert rule, "no rule for the install stamp"
    assert "pyproject.toml" in rule.group(2)
    assert "$(CONSTRAINTS)" in rule.group(2) or CONSTRAINTS.name in rule.group(2)


def test_make_installs_the_pinned_versions() -> None:
    # -B: print the install recipe even when the stamp is up to date.
    installs = [line for line in make_dry_run("-B", "install") if "pip install" in line]
    assert installs, "make install runs no pip install"
    for line in installs:
        words = shlex.split(line)
        assert words[0] == ".venv/bin/python", f"`{line}` does not install into the project's venv"
        constraints = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-c", "--constraint")]
        assert constraints == [CONSTRAINTS.name], f"`{line}` installs without -c {CONSTRAINTS.name}"
        assert ".[dev]" in words, f"`{line}` does not install the project with its dev extra"


def test_make_lock_compiles_pyproject_with_a_pinned_tool() -> None:
    lines = make_dry_run("lock", "LOCK_ARGS=--sentinel")
    [compile_line] = [line for line in lines if re.search(r"\b(pip compile|pip-compile)\b", line)]
    words = shlex.split(compile_line)
    assert words[:3] == [".venv/bin/uv", "pip", "compile"] or words[0].endswith("pip-compile"), compile_line
    assert "pyproject.toml" in words
    assert words[words.index("--extra") + 1] == "dev", "the dev tools must be pinned too"
    assert words[words.index("--output-file") + 1] == CONSTRAINTS.name
    assert words[-1] == "--sentinel", "LOCK_ARGS (e.g. --upgrade) does not reach the resolver"
    tool_installs = [line for line in lines if "pip install" in line]
    assert all(re.search(r"'?(uv|pip-tools)==[0-9.]+'?", line) for line in tool_installs), tool_installs


def test_make_image_check_is_optional_and_reports_its_result(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def image_check(script: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "--no-print-directory", "image-check", f"CONTAINER_CHECK={script}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    absent = image_check(tmp_path / "absent")
    assert absent.returncode == 0, absent.stderr
    assert "absent" in absent.stdout
    stub = tmp_path / "container-check"
    stub.write_text('#!/bin/sh\necho "checking $1"\nexit 3\n')
    failing = image_check(stub)
    assert "checking ." in failing.stdout, "the check is not run on the project"
    assert failing.returncode != 0, "a failing container check must fail make image-check"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "image-check" not in ci and "container-check" not in ci, (
        "CI must not depend on the container check"
    )


# --- constraints.txt ----------------------------------------------------------------------------------


def pinned() -> dict[str, tuple[str, Marker | None]]:
    """constraints.txt as {canonical name: (version, marker or None)}."""
    pins: dict[str, tuple[str, Marker | None]] = {}
    for raw in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        assert not requirement.extras, f"pip refuses extras in a constraints file: {line!r}"
        assert not requirement.url, f"a constraint names a URL: {line!r}"
        [spec] = requirement.specifier
        assert spec.operator == "==", f"not pinned to one version: {line!r}"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{name} is pinned twice"
        pins[name] = (spec.version, requirement.marker)
    return pins


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]


def test_constraints_pin_every_declared_dependency_within_its_range() -> None:
    """A dependency added to pyproject.toml without `make lock` would be installed unpinned."""
    pins = pinned()
    assert CONSTRAINTS.read_text(encoding="utf-8").startswith("# This file was autogenerated")
    for requirement in declared_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in {CONSTRAINTS.name}: run `make lock`"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} is outside pyproject's {requirement}: run `make lock`"
        )
    assert canonicalize_name("akool-relay") not in pins, "the project itself must not be pinned"


def test_the_venv_holds_the_pinned_versions() -> None:
    """`make install` installs exactly the pins (each one whose marker applies to this interpreter)."""
    wrong = {}
    for name, (version, marker) in pinned().items():
        if marker is not None and not marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            wrong[name] = f"{installed}, pinned {version}"
    assert not wrong, f"the venv differs from {CONSTRAINTS.name} (run `make install`): {wrong}"


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
