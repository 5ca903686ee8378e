"""The project as a user gets it: a wheel, installed plainly (not editable) into a fresh venv, run from
a directory that is not the source tree. The migrations travel inside the package, so `migrate` and the
start-up migration of the embedded SQLite default work from that install alone.

One wheel and one venv per session (the install uses constraints.txt and pip's cache).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel

import app.models  # noqa: F401  (registers the tables in SQLModel.metadata)
from app.migrate import alembic_config

ROOT = Path(__file__).resolve().parent.parent
# Setting up the venv (a first install fills pip's cache) counts against the first test that uses it.
INSTALL_TIMEOUT = 600


@dataclass(frozen=True)
class Install:
    venv: Path
    home: Path  # a working directory away from the source tree

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **settings: str) -> dict[str, str]:
        """The outer environment without the relay's own variables or a path to the sources."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RELAY_", "AKOOL_", "DATABASE_URL", "PYTHON", "VIRTUAL_ENV"))
        }
        return {**env, **settings}

    def run(self, *argv: str, **settings: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]],
            cwd=self.home,
            env=self.env(**settings),
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=INSTALL_TIMEOUT,
    )
    [built] = out.glob("akool_relay-*.whl")
    return built


@pytest.fixture(scope="session")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Install:
    base = tmp_path_factory.mktemp("plain-install")
    install = Install(venv=base / "venv", home=base / "home")
    install.home.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(install.venv)], check=True, timeout=120)
    result = subprocess.run(
        [
            str(install.bin / "python"),
            *("-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check"),
            *("-c", str(ROOT / "constraints.txt"), str(wheel)),
        ],
        cwd=install.home,
        env=install.env(),
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return install


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head
    return head


def model_tables() -> set[str]:
    """The tables the code reads and writes (app.models)."""
    names = set(SQLModel.metadata.tables)
    assert len(names) >= 4, names
    return names


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def revision(db: Path) -> str | None:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    return rows[0][0] if rows else None


def test_the_wheel_carries_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = sorted(p.name for p in (ROOT / "migrations" / "versions").glob("0*.py"))
    assert migrations, "no migrations in the source tree"
    assert "app/migrations/env.py" in names
    assert "app/migrations/script.py.mako" in names
    for name in migrations:
        assert f"app/migrations/versions/{name}" in names
    assert "app/cli.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_the_wheel_carries_the_console(wheel: Path) -> None:
    """Every file of the console (GET /ui/) travels in the package: app/api/routes/console.py serves
    what is installed beside it."""
    names = set(zipfile.ZipFile(wheel).namelist())
    files = sorted(
        p.relative_to(ROOT).as_posix() for p in (ROOT / "app" / "console").rglob("*") if p.is_file()
    )
    assert "app/console/index.html" in files and "app/console/js/main.js" in files
    assert [f for f in files if f not in names] == []


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_the_install_is_plain_and_away_from_the_sources(installed: Install) -> None:
    found = installed.run(
        "python", "-c", "import app, app.migrations; print(app.__file__, app.migrations.__file__)"
    )
    assert found.returncode == 0, found.stderr
    for path in found.stdout.split():
        assert Path(path).is_relative_to(installed.venv), f"{path} is not the installed copy"
    editable = installed.run("python", "-m", "pip", "list", "--editable", "--disable-pip-version-check")
    assert "akool-relay" not in editable.stdout, "the install is editable"


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_a_plain_install_migrates_a_fresh_sqlite_file(installed: Install, tmp_path: Path) -> None:
    db = tmp_path / "data" / "fresh.db"
    db.parent.mkdir()
    result = installed.run("akool-relay", "migrate", DATABASE_URL=f"sqlite:///{db}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "latest migration" in result.stdout
    assert model_tables() | {"alembic_version"} <= tables(db)
    assert revision(db) == head_revision()
    # Again on a migrated file: nothing to do, still fine.
    again = installed.run("akool-relay", "migrate", DATABASE_URL=f"sqlite:///{db}")
    assert again.returncode == 0, again.stderr
    assert revision(db) == head_revision()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def serving(installed: Install, tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """`akool-relay serve` from the plain install on a SQLite file that does not exist yet."""
    db = tmp_path / "fresh.db"
    log = tmp_path / "serve.log"
    port = free_port()
    settings = {
        "DATABASE_URL": f"sqlite:///{db}",
        "RELAY_HOST": "127.0.0.1",
        "RELAY_PORT": str(port),
        "AKOOL_API_KEY": "test-key",
        "AKOOL_BASE_URL": f"http://127.0.0.1:{free_port()}",  # nobody there: polls fail, transiently
        "RELAY_ALLOW_PRIVATE_CALLBACKS": "true",
    }
    assert not db.exists()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(installed.bin / "akool-relay"), "serve"],
            cwd=installed.home,
            env=installed.env(**settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}", db, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_serve_migrates_a_fresh_sqlite_file_at_start(serving: tuple[str, Path, Path]) -> None:
    url, db, log = serving
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "no /healthz within 60 s:\n" + log.read_text()
        time.sleep(0.1)
    assert model_tables() | {"alembic_version"} <= tables(db), log.read_text()
    assert revision(db) == head_revision()
    # The schema is the one the code uses: a job can be registered and read back.
    job = {"video_model_id": "fresh-file-1", "callback_url": "http://127.0.0.1:9/hook"}
    created = httpx.post(f"{url}/jobs", json=job, timeout=10)
    assert created.status_code == 201, created.text
    read = httpx.get(f"{url}/jobs/fresh-file-1", timeout=10)
    assert read.status_code == 200, read.text
    assert read.json()["video_model_id"] == "fresh-file-1"
