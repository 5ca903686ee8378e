"""Secrets stay secret (issue 3 item 7): configuration errors and the settings repr show none, and
token comparison is constant-time in construction and correct in behaviour."""

from __future__ import annotations

import hmac
import logging
import traceback
from typing import Any

import httpx
import pytest

from app import cli
from app.config import ConfigError, Settings, load_settings
from app.main import create_app
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import Simulator, SimulatorConfig
from tests.support.env import relay_settings
from tests.support.relay import RelayFactory, RunningRelay
from tests.support.secrets import (
    API_KEY,
    CLIENT_ID,
    CLIENT_SECRET,
    SECRETS,
    TOKENS,
    WEBHOOK_SECRET,
)

# -- configuration errors and the settings repr ------------------------------------------------


SECRET_ENV = {
    "AKOOL_API_KEY": API_KEY,
    "AKOOL_CLIENT_ID": CLIENT_ID,
    "AKOOL_CLIENT_SECRET": CLIENT_SECRET,
    "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "RELAY_API_TOKENS": ",".join(TOKENS),
    "DATABASE_URL": "sqlite:///./never-created.db",
}

BAD_NEIGHBOURS: list[tuple[dict[str, str], str]] = [
    ({"RELAY_POLL_CONCURRENCY": "lots"}, "RELAY_POLL_CONCURRENCY"),
    ({"RELAY_RETRY_SCHEDULE": "5,soon"}, "RELAY_RETRY_SCHEDULE"),
    ({"AKOOL_BASE_URL": "ftp://akool"}, "AKOOL_BASE_URL"),
    ({"RELAY_POLL_INTERVAL_MIN": "10", "RELAY_POLL_INTERVAL_MAX": "1"}, "RELAY_POLL_INTERVAL_MAX"),
    ({"RELAY_WEBHOOK_SECRET": "SENTINEL-6-not-a-whsec-value"}, "RELAY_WEBHOOK_SECRET"),
    ({"AKOOL_CLIENT_ID": ""}, "AKOOL_CLIENT_ID"),  # the secret without its id
]


def _exception_texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc)), str(exc.args)]


def _leaked_in(texts: list[str]) -> list[str]:
    return [secret for secret in SECRETS for text in texts if secret in text]


@pytest.mark.parametrize(("bad", "variable"), BAD_NEIGHBOURS, ids=[v for _, v in BAD_NEIGHBOURS])
def test_config_errors_name_the_variable_but_not_the_secrets(
    bad: dict[str, str], variable: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    env = {**SECRET_ENV, **bad}
    # given as arguments
    with pytest.raises(ConfigError) as by_args:
        load_settings(**{k: v for k, v in env.items() if v != ""})
    # and from the environment
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as by_env:
        load_settings()
    for caught in (by_args.value, by_env.value):
        assert variable in str(caught)
        assert not _leaked_in(_exception_texts(caught)), _exception_texts(caught)[2]


def test_the_cli_reports_a_config_error_without_the_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in {**SECRET_ENV, "RELAY_DELIVERY_TIMEOUT": "-1"}.items():
        monkeypatch.setenv(name, value)
    levels = {
        name: logging.getLogger(name).level for name in ("httpx", "apscheduler", "alembic.runtime.plugins")
    }
    try:
        assert cli.main(["webhook-secret"]) == 2
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    out = capsys.readouterr()
    assert "RELAY_DELIVERY_TIMEOUT" in out.err
    assert not _leaked_in([out.out, out.err]), out


def test_settings_repr_and_str_hide_every_secret() -> None:
    settings = load_settings(**SECRET_ENV)
    texts = [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(settings.model_dump()),
        str(settings.model_dump()),
        repr(settings.api_tokens),
        f"{settings}",
        f"{settings.webhook_secret}",
        f"{settings.akool_api_key!r}",
    ]
    assert not _leaked_in(texts), texts
    # ...while the values themselves are intact for the code that needs them
    assert settings.akool_api_key is not None and settings.akool_api_key.get_secret_value() == API_KEY
    assert settings.api_token_values == list(TOKENS)


# -- token comparison --------------------------------------------------------------------------


async def _status(r: RunningRelay, authorization: str | bytes | None) -> int:
    value = authorization.encode("latin-1") if isinstance(authorization, str) else authorization
    headers = [] if value is None else [(b"authorization", value)]
    async with httpx.AsyncClient(base_url=r.base_url) as bare:  # not the test client's own token
        return (await bare.get("/jobs", headers=headers)).status_code


async def test_admin_tokens_are_compared_with_compare_digest_against_every_one(
    start_relay: RelayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Constant-time in construction: hmac.compare_digest for each admin token, no early exit. (A
    tenant's token is found by its SHA-256 in the database: nothing there to time.)"""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("app.api.deps.hmac.compare_digest", spy)
    tokens = ["tok-SENTINEL-2", "tok-SENTINEL-3", "tok-other-long-token-value"]
    async with start_relay(driven=True, RELAY_API_TOKENS=None, RELAY_ADMIN_TOKENS=",".join(tokens)) as r:
        for presented, ok in [
            (f"Bearer {tokens[0]}", True),  # a match on the first token still compares with the rest
            (f"Bearer {tokens[2]}", True),
            ("Bearer tok-SENTINEL-X", False),
            ("Bearer nope", False),
        ]:
            calls.clear()
            assert (await _status(r, presented) == 200) is ok, presented
            assert len(calls) == len(tokens), (presented, calls)
            assert sorted(b for _, b in calls) == sorted(t.encode() for t in tokens)
            assert all(a == presented.split(" ", 1)[1].encode() for a, _ in calls)


async def test_token_checks_over_http(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True, RELAY_API_TOKENS=None) as r:
        assert await _status(r, None) == 200  # no token anywhere: the API is open
    async with start_relay(driven=True, RELAY_API_TOKENS=",".join(TOKENS)) as r:
        assert await _status(r, f"Bearer {TOKENS[0]}") == 200
        assert await _status(r, f"Bearer {TOKENS[1]}") == 200  # any one of several
        assert await _status(r, f"bearer {TOKENS[1]}") == 200  # the scheme is case-insensitive
        refused: list[str | bytes | None] = [
            None,
            "",
            "Bearer",
            "Bearer tok-SENTINEL-9",  # same length, same prefix, last character differs
            "Bearer Tok-SENTINEL-2",  # first character differs
            "Bearer tok-SENTINEL-",  # a prefix
            f"Bearer {TOKENS[0]}2",  # an extension
            f"Bearer {TOKENS[0]},{TOKENS[1]}",  # the configured list
            f"Bearer {TOKENS[0]} {TOKENS[1]}",
            f"Basic {TOKENS[0]}",
            TOKENS[0],
            b"Bearer tok-SENTINEL-\xb2",  # not ASCII: refused, not an error
        ]
        for presented in refused:
            assert await _status(r, presented) == 401, presented


async def test_token_auth_over_http(db_url: str) -> None:
    sim = Simulator(SimulatorConfig(api_key="k"))
    async with serve_in_background(sim.app) as sim_url:
        settings = relay_settings(db_url, sim_url, AKOOL_API_KEY="k", RELAY_API_TOKENS=",".join(TOKENS))
        async with (
            serve_in_background(create_app(settings)) as base_url,
            httpx.AsyncClient(base_url=base_url) as c,
        ):
            for token in TOKENS:
                response = await c.get("/jobs", headers={"authorization": f"Bearer {token}"})
                assert response.status_code == 200, response.text
            for presented in ("Bearer tok-SENTINEL-9", "Bearer tok-SENTINEL-", f"Basic {TOKENS[0]}", ""):
                response = await c.get("/jobs", headers={"authorization": presented})
                assert response.status_code == 401, presented
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json() == {"detail": "missing or invalid bearer token"}
            raw: list[tuple[bytes, bytes]] = [(b"authorization", b"Bearer \xff\xfe")]
            response = await c.get("/jobs", headers=raw)
            assert response.status_code == 401


def test_settings_type_keeps_secrets_as_secretstr() -> None:
    secret_fields = {"akool_api_key", "akool_client_secret", "webhook_secret", "api_tokens"}
    for name in secret_fields:
        annotation = str(Settings.model_fields[name].annotation)
        assert "SecretStr" in annotation, (name, annotation)
