"""Configuration (SPEC §2): defaults, fractions, bad values named, secrets kept out of sight."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
ENV_NAMES = sorted({f.alias for f in Settings.model_fields.values() if f.alias})


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A working directory without .env and an environment without any of our variables."""
    monkeypatch.chdir(tmp_path)
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    return str(info.value)


# -- defaults ----------------------------------------------------------------------------------------


def test_defaults_match_the_spec_table() -> None:
    s = load_settings()
    assert s.akool_api_key is None
    assert s.akool_client_id is None
    assert s.akool_client_secret is None
    assert s.akool_base_url == "https://openapi.akool.com"
    assert s.database_url == "sqlite:///./akool-relay.db"
    assert s.host == "127.0.0.1"
    assert s.port == 8000
    assert s.api_tokens == []
    assert s.api_token_values == []
    assert s.webhook_secret is None
    assert s.allow_private_callbacks is False
    assert s.poll_interval_min == 5
    assert s.poll_interval_max == 60
    assert s.poll_concurrency == 32
    assert s.akool_rate_limit == 20
    assert s.job_timeout == 86400
    assert s.not_found_grace == 60
    assert s.delivery_timeout == 15
    assert s.retry_schedule == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert s.is_sqlite


def test_the_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AKOOL_API_KEY", "k-123")
    monkeypatch.setenv("AKOOL_BASE_URL", "http://127.0.0.1:9000/")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db:5432/relay")
    monkeypatch.setenv("RELAY_HOST", "0.0.0.0")
    monkeypatch.setenv("RELAY_PORT", "9100")
    monkeypatch.setenv("RELAY_API_TOKENS", " t1 , t2,,")
    monkeypatch.setenv("RELAY_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    monkeypatch.setenv("RELAY_ALLOW_PRIVATE_CALLBACKS", "true")
    monkeypatch.setenv("RELAY_POLL_CONCURRENCY", "4")
    monkeypatch.setenv("RELAY_RETRY_SCHEDULE", "1, 2 ,3")
    s = load_settings()
    assert s.akool_api_key is not None and s.akool_api_key.get_secret_value() == "k-123"
    assert s.akool_base_url == "http://127.0.0.1:9000"  # trailing slash dropped
    assert s.database_url == "postgresql://u:p@db:5432/relay"
    assert not s.is_sqlite
    assert (s.host, s.port) == ("0.0.0.0", 9100)
    assert s.api_token_values == ["t1", "t2"]
    assert s.allow_private_callbacks is True
    assert s.poll_concurrency == 4
    assert s.retry_schedule == [1, 2, 3]


def test_client_id_and_secret_together_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AKOOL_CLIENT_ID", "cid")
    monkeypatch.setenv("AKOOL_CLIENT_SECRET", "csecret")
    s = load_settings()
    assert s.akool_client_id == "cid"
    assert s.akool_client_secret is not None
    assert s.akool_client_secret.get_secret_value() == "csecret"


def test_a_dotenv_file_in_the_working_directory_is_read(clean_env: Path) -> None:
    (clean_env / ".env").write_text("RELAY_PORT=8123\nRELAY_POLL_INTERVAL_MIN=0.5\n")
    s = load_settings()
    assert s.port == 8123
    assert s.poll_interval_min == 0.5


def test_the_environment_wins_over_dotenv(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text("RELAY_PORT=8123\n")
    monkeypatch.setenv("RELAY_PORT", "8124")
    assert load_settings().port == 8124


def test_empty_values_mean_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_PORT", "")
    monkeypatch.setenv("RELAY_RETRY_SCHEDULE", "")
    s = load_settings()
    assert s.port == 8000
    assert s.retry_schedule == [5, 300, 1800, 7200, 18000, 36000, 36000]


# -- fractions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "attr"),
    [
        ("RELAY_POLL_INTERVAL_MIN", "poll_interval_min"),
        ("RELAY_JOB_TIMEOUT", "job_timeout"),
        ("RELAY_NOT_FOUND_GRACE", "not_found_grace"),
        ("RELAY_DELIVERY_TIMEOUT", "delivery_timeout"),
    ],
)
def test_durations_accept_fractions(monkeypatch: pytest.MonkeyPatch, name: str, attr: str) -> None:
    monkeypatch.setenv(name, "0.1")
    assert getattr(load_settings(), attr) == pytest.approx(0.1)


def test_interval_max_accepts_fractions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_POLL_INTERVAL_MIN", "0.1")
    monkeypatch.setenv("RELAY_POLL_INTERVAL_MAX", "0.3")
    s = load_settings()
    assert s.poll_interval_min == pytest.approx(0.1)
    assert s.poll_interval_max == pytest.approx(0.3)


def test_retry_schedule_accepts_fractions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_RETRY_SCHEDULE", "0.1,0.25,1.5")
    assert load_settings().retry_schedule == [pytest.approx(0.1), pytest.approx(0.25), pytest.approx(1.5)]


def test_rate_limit_accepts_fractions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_AKOOL_RATE_LIMIT", "0.5")
    assert load_settings().akool_rate_limit == pytest.approx(0.5)


def test_overrides_take_fractions_too() -> None:
    s = load_settings(
        RELAY_POLL_INTERVAL_MIN=0.1, RELAY_POLL_INTERVAL_MAX=0.3, RELAY_RETRY_SCHEDULE="0.1,0.1"
    )
    assert s.poll_interval_min == pytest.approx(0.1)
    assert s.retry_schedule == [pytest.approx(0.1), pytest.approx(0.1)]


# -- bad values --------------------------------------------------------------------------------------

BAD_VALUES = [
    ("RELAY_POLL_INTERVAL_MIN", "abc"),
    ("RELAY_POLL_INTERVAL_MIN", "-1"),
    ("RELAY_POLL_INTERVAL_MIN", "0"),
    ("RELAY_POLL_INTERVAL_MAX", "soon"),
    ("RELAY_RETRY_SCHEDULE", "5,x"),
    ("RELAY_RETRY_SCHEDULE", "5,-1"),
    ("RELAY_RETRY_SCHEDULE", ",,"),
    ("RELAY_PORT", "99999"),
    ("RELAY_PORT", "-5"),
    ("RELAY_PORT", "http"),
    ("DATABASE_URL", "mysql://x"),
    ("DATABASE_URL", "not a url"),
    ("AKOOL_BASE_URL", "ftp://akool"),
    ("RELAY_WEBHOOK_SECRET", "nope"),
    ("RELAY_ALLOW_PRIVATE_CALLBACKS", "perhaps"),
    ("RELAY_POLL_CONCURRENCY", "0"),
    ("RELAY_POLL_CONCURRENCY", "1.5"),
    ("RELAY_AKOOL_RATE_LIMIT", "0"),
    ("RELAY_JOB_TIMEOUT", "-3"),
    ("RELAY_JOB_TIMEOUT", "nan"),
    ("RELAY_NOT_FOUND_GRACE", "-1"),
    ("RELAY_DELIVERY_TIMEOUT", "0"),
    ("RELAY_DELIVERY_TIMEOUT", "15s"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    message = _error(monkeypatch, **{name: value})
    assert name in message


# Infinity parses as a float and passes "> 0", but no duration can be infinite: timedelta(seconds=inf)
# raises OverflowError the first time it is used (registration, scheduling), i.e. after start.
NON_FINITE = [
    ("RELAY_JOB_TIMEOUT", "inf"),
    ("RELAY_POLL_INTERVAL_MAX", "inf"),
    ("RELAY_DELIVERY_TIMEOUT", "Infinity"),
    ("RELAY_NOT_FOUND_GRACE", "inf"),
    ("RELAY_RETRY_SCHEDULE", "5,inf"),
    ("RELAY_RETRY_SCHEDULE", "5,nan"),
]


@pytest.mark.parametrize(("name", "value"), NON_FINITE)
def test_non_finite_durations_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    message = _error(monkeypatch, **{name: value})
    assert name in message


def test_max_below_min_names_both(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(monkeypatch, RELAY_POLL_INTERVAL_MIN="10", RELAY_POLL_INTERVAL_MAX="5")
    assert "RELAY_POLL_INTERVAL_MAX" in message
    assert "RELAY_POLL_INTERVAL_MIN" in message


def test_only_default_max_below_a_large_min_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(monkeypatch, RELAY_POLL_INTERVAL_MIN="120")
    assert "RELAY_POLL_INTERVAL_MAX" in message


def test_client_id_without_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(monkeypatch, AKOOL_CLIENT_ID="cid")
    assert "AKOOL_CLIENT_ID" in message
    assert "AKOOL_CLIENT_SECRET" in message


def test_client_secret_without_id_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(monkeypatch, AKOOL_CLIENT_SECRET="cs-0123456789")
    assert "AKOOL_CLIENT_ID" in message
    assert "cs-0123456789" not in message


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(monkeypatch, RELAY_PORT="99999", RELAY_POLL_INTERVAL_MIN="abc", DATABASE_URL="mysql://x")
    for name in ("RELAY_PORT", "RELAY_POLL_INTERVAL_MIN", "DATABASE_URL"):
        assert name in message


def test_a_bad_value_in_dotenv_is_named(clean_env: Path) -> None:
    (clean_env / ".env").write_text("RELAY_POLL_INTERVAL_MIN=abc\n")
    with pytest.raises(ConfigError, match="RELAY_POLL_INTERVAL_MIN"):
        load_settings()


def test_config_error_is_an_exception_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(monkeypatch, RELAY_PORT="99999")
    assert message.startswith("invalid configuration")
    assert "Traceback" not in message


# -- secrets -----------------------------------------------------------------------------------------

API_KEY = "ak-live-SECRET-0123456789"
CLIENT_SECRET = "cs-SECRET-abcdefghijkl"
TOKENS = ("apitoken-SECRET-one", "apitoken-SECRET-two")
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
DB_PASSWORD = "dbpass-SECRET-hunter2"


def _set_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AKOOL_API_KEY", API_KEY)
    monkeypatch.setenv("AKOOL_CLIENT_ID", "cid")
    monkeypatch.setenv("AKOOL_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("RELAY_API_TOKENS", ",".join(TOKENS))
    monkeypatch.setenv("RELAY_WEBHOOK_SECRET", WEBHOOK_SECRET)


def test_secrets_are_not_in_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_secrets(monkeypatch)
    s = load_settings()
    shown = repr(s) + str(s) + repr(s.model_dump())
    for secret in (API_KEY, CLIENT_SECRET, *TOKENS, WEBHOOK_SECRET):
        assert secret not in shown
    # ...but they are there for the code that needs them
    assert s.akool_api_key is not None and s.akool_api_key.get_secret_value() == API_KEY
    assert s.api_token_values == list(TOKENS)
    assert s.webhook_secret is not None and s.webhook_secret.get_secret_value() == WEBHOOK_SECRET


def test_the_database_password_is_not_in_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://relay:{DB_PASSWORD}@db:5432/relay")
    s = load_settings()
    assert DB_PASSWORD not in repr(s)
    assert DB_PASSWORD not in str(s)
    assert DB_PASSWORD in s.database_url  # still usable


def test_secrets_are_not_in_the_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_secrets(monkeypatch)
    message = _error(monkeypatch, RELAY_PORT="99999", RELAY_POLL_INTERVAL_MIN="abc")
    for secret in (API_KEY, CLIENT_SECRET, *TOKENS, WEBHOOK_SECRET):
        assert secret not in message


def test_a_bad_secret_is_named_but_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = "not-whsec-SECRET-0123456789"
    message = _error(monkeypatch, RELAY_WEBHOOK_SECRET=bad)
    assert "RELAY_WEBHOOK_SECRET" in message
    assert bad not in message


def test_a_bad_database_url_does_not_show_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(monkeypatch, DATABASE_URL=f"mysql://relay:{DB_PASSWORD}@db/relay")
    assert "DATABASE_URL" in message
    assert DB_PASSWORD not in message


# -- the command -------------------------------------------------------------------------------------


def _cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env.update(extra)
    return env


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "akool-relay"
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def test_serve_with_a_bad_value_exits_non_zero_naming_it(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*_cli(), "serve"],
        env=_cli_env(RELAY_POLL_INTERVAL_MIN="abc", RELAY_PORT="0"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "RELAY_POLL_INTERVAL_MIN" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "akool-relay.db").exists(), "nothing is created before the config is valid"


def test_serve_with_a_bad_secret_does_not_print_it(tmp_path: Path) -> None:
    bad = "not-whsec-SECRET-0123456789"
    proc = subprocess.run(
        [*_cli(), "serve"],
        env=_cli_env(RELAY_WEBHOOK_SECRET=bad, AKOOL_API_KEY=API_KEY, RELAY_PORT="0"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "RELAY_WEBHOOK_SECRET" in proc.stderr
    assert bad not in proc.stderr + proc.stdout
    assert API_KEY not in proc.stderr + proc.stdout


def test_module_entry_point_reports_the_same(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        env=_cli_env(DATABASE_URL="mysql://x", PYTHONPATH=str(ROOT)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "DATABASE_URL" in proc.stderr
