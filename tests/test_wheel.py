"""The migrations travel inside the package: a plain (non-editable) install can migrate."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_migrations(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("akool_relay-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = sorted(p.name for p in (ROOT / "migrations" / "versions").glob("0*.py"))
    assert migrations, "no migrations in the source tree"
    assert "app/migrations/env.py" in names
    assert "app/migrations/script.py.mako" in names
    for name in migrations:
        assert f"app/migrations/versions/{name}" in names
    assert "app/cli.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)
