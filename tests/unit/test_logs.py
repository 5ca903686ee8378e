"""RELAY_LOG_FORMAT (SPEC §2, issue 14 item 2): JSON lines through `logging`, text as before.

Every JSON line parses and has time, level, logger and message; `extra=` fields are top-level keys;
exceptions are a string field; record arguments and secret-looking extras never come out; uvicorn's own
loggers come out as JSON through the `log_config` given to uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import io
import json
import logging
import re
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn

from app import logs
from app.config import ConfigError, is_sqlite_url, load_settings
from app.logs import configure_logging, delivery_fields, job_fields, uvicorn_log_config

FIELDS = ("time", "level", "logger", "message")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<msg>.*)$"
)
SECRET = "sk-SENTINEL-LOG-77"
TOUCHED = (
    "",
    "httpx",
    "apscheduler",
    "alembic.runtime.plugins",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Each test may reconfigure logging; put the loggers it touches back as they were."""
    saved = {}
    for name in TOUCHED:
        lg = logging.getLogger(name)
        saved[name] = (list(lg.handlers), lg.level, lg.propagate, lg.disabled)
    yield
    if logs._installed is not None:
        logging.getLogger().removeHandler(logs._installed)
        logs._installed = None
    logging.captureWarnings(False)
    for name, (handlers, level, propagate, disabled) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
        lg.disabled = disabled


def _configured(fmt: str, level: int = logging.DEBUG) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(fmt, level=level, stream=stream)
    return stream


def _json_lines(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict), line
        for field in FIELDS:
            assert isinstance(entry.get(field), str), f"{field} missing in {line}"
        assert ISO_UTC.match(entry["time"]), entry["time"]
        entries.append(entry)
    return entries


class Status(enum.StrEnum):
    completed = "completed"


# -- json ----------------------------------------------------------------------------------------------


def test_every_json_line_parses_and_has_the_four_fields() -> None:
    stream = _configured("json")
    log = logging.getLogger("app.test")
    log.debug("debug %d", 1)
    log.info("plain")
    log.warning('with "quotes", a newline\nand unicode ✓ %s', "arg")
    log.error("error")
    logging.getLogger("app.other.deep").critical("critical")
    entries = _json_lines(stream.getvalue())
    assert [(e["level"], e["logger"], e["message"]) for e in entries] == [
        ("DEBUG", "app.test", "debug 1"),
        ("INFO", "app.test", "plain"),
        ("WARNING", "app.test", 'with "quotes", a newline\nand unicode ✓ arg'),
        ("ERROR", "app.test", "error"),
        ("CRITICAL", "app.other.deep", "critical"),
    ]
    assert len(stream.getvalue().splitlines()) == 5  # the newline in a message stays inside its line
    assert stream.getvalue().isascii()  # non-ASCII escaped: valid whatever the stream's encoding


def test_time_is_the_record_time_in_utc() -> None:
    stream = _configured("json")
    before = datetime.now(UTC) - timedelta(seconds=1)
    logging.getLogger("app.test").info("now")
    [entry] = _json_lines(stream.getvalue())
    when = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
    assert when.utcoffset() == timedelta(0)
    assert before <= when <= datetime.now(UTC) + timedelta(seconds=1)


def test_extras_are_top_level_keys() -> None:
    stream = _configured("json")
    log = logging.getLogger("app.worker.poller")
    log.info("polled", extra=job_fields("vm-1", tenant="acme"))
    log.info("polled", extra=job_fields("vm-2"))
    log.info(
        "attempt",
        extra={**delivery_fields("msg_1", "vm-3", "acme"), "attempt": 2, "status": Status.completed},
    )
    log.info("dead", extra=delivery_fields("msg_2"))
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    log.info(
        "odd values",
        extra={"when": at, "codes": (200, 503), "ratio": 0.5, "ok": True, "none": None, "nan": float("nan")},
    )
    a, b, c, d, e = _json_lines(stream.getvalue())
    assert (a["video_model_id"], a["tenant"]) == ("vm-1", "acme")
    assert b["video_model_id"] == "vm-2" and "tenant" not in b
    assert (c["webhook_id"], c["video_model_id"], c["tenant"]) == ("msg_1", "vm-3", "acme")
    assert (c["attempt"], c["status"]) == (2, "completed")
    assert d["webhook_id"] == "msg_2" and "video_model_id" not in d and "tenant" not in d
    assert e["when"] == "2025-01-02T03:04:05+00:00"
    assert (e["codes"], e["ratio"], e["ok"], e["none"], e["nan"]) == ([200, 503], 0.5, True, None, "nan")
    assert "NaN" not in stream.getvalue()  # not JSON; strict parsers refuse it


def test_the_helpers_give_the_extra_dicts() -> None:
    assert job_fields("vm") == {"video_model_id": "vm"}
    assert job_fields("vm", "t") == {"video_model_id": "vm", "tenant": "t"}
    assert delivery_fields("w") == {"webhook_id": "w"}
    assert delivery_fields("w", "vm", "t") == {"webhook_id": "w", "video_model_id": "vm", "tenant": "t"}
    assert delivery_fields("w", tenant="t") == {"webhook_id": "w", "tenant": "t"}


def test_only_the_standard_fields_and_the_extras_come_out() -> None:
    stream = _configured("json")
    logging.getLogger("app.test").info("hello %s", "world", extra={"webhook_id": "msg_1"})
    [entry] = _json_lines(stream.getvalue())
    assert set(entry) == {*FIELDS, "webhook_id"}


def test_exceptions_are_a_string_field() -> None:
    stream = _configured("json")
    log = logging.getLogger("app.test")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed", extra=job_fields("vm-9"))
    log.info("with a stack", stack_info=True)
    failed, stacked = _json_lines(stream.getvalue())
    assert failed["level"] == "ERROR" and failed["message"] == "it failed"
    assert failed["video_model_id"] == "vm-9"
    assert isinstance(failed["exception"], str)
    assert failed["exception"].startswith("Traceback (most recent call last):")
    assert failed["exception"].rstrip().endswith("ValueError: boom")
    assert "Stack (most recent call last)" in stacked["stack"]
    assert "exception" not in stacked


def test_record_arguments_are_rendered_into_the_message_but_never_dumped() -> None:
    """The message is the rendered text, as in text mode; the argument objects themselves stay out."""

    class Holder:
        def __init__(self) -> None:
            self.api_key = SECRET

        def __str__(self) -> str:
            return "<holder>"

    stream = _configured("json")
    settings = load_settings(AKOOL_API_KEY=SECRET, RELAY_API_TOKENS=SECRET + "-tok")
    log = logging.getLogger("app.test")
    log.info("object %s", Holder())
    log.info("settings %s", settings)
    log.info("mapping %(a)s", {"a": "shown", "key": SECRET})
    out = stream.getvalue()
    entries = _json_lines(out)
    assert entries[0]["message"] == "object <holder>"
    assert entries[2]["message"] == "mapping shown"
    assert all("args" not in e for e in entries)
    assert SECRET not in out


def test_secret_looking_extras_are_redacted() -> None:
    stream = _configured("json")
    logging.getLogger("app.test").info(
        "oops",
        extra={
            "api_token": SECRET,
            "webhook_secret": SECRET,
            "Authorization": SECRET,
            "akool_api_key": SECRET,
        },
    )
    [entry] = _json_lines(stream.getvalue())
    assert SECRET not in stream.getvalue()
    assert entry["api_token"] == entry["webhook_secret"] == entry["Authorization"] == "[redacted]"
    assert entry["akool_api_key"] == "[redacted]"


def test_uvicorn_colour_copies_are_dropped() -> None:
    stream = _configured("json")
    # uvicorn's records carry `color_message`; a logger of our own, because uvicorn's may have been
    # configured (no propagation) by an earlier server in this process.
    logging.getLogger("app.test.uvicorn_like").info(
        "Started %s", "x", extra={"color_message": "\x1b[1mStarted\x1b[0m"}
    )
    [entry] = _json_lines(stream.getvalue())
    assert "color_message" not in entry and "\\u001b" not in stream.getvalue()


def test_warnings_become_json_lines() -> None:
    stream = _configured("json")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    [entry] = _json_lines(stream.getvalue())
    assert entry["logger"] == "py.warnings" and "deprecated thing" in entry["message"]


def test_configuring_again_replaces_the_handler() -> None:
    first = _configured("json")
    second = _configured("text")
    logging.getLogger("app.test").info("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


def test_the_level_is_applied() -> None:
    stream = _configured("json", level=logging.WARNING)
    logging.getLogger("app.test").info("hidden")
    logging.getLogger("app.test").warning("shown")
    assert [e["message"] for e in _json_lines(stream.getvalue())] == ["shown"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_noisy_loggers_stay_at_warning_even_at_debug(fmt: str) -> None:
    stream = _configured(fmt, level=logging.DEBUG)
    for noisy in ("httpx", "apscheduler", "alembic.runtime.plugins"):
        assert logging.getLogger(noisy).level == logging.WARNING
        logging.getLogger(noisy).info("chatter")
    assert stream.getvalue() == ""


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="xml"):
        configure_logging("xml", level=logging.INFO)
    with pytest.raises(ValueError, match="xml"):
        uvicorn_log_config("xml")


# -- text ----------------------------------------------------------------------------------------------


def test_text_mode_is_the_format_of_today() -> None:
    stream = _configured("text")
    log = logging.getLogger("app.worker.poller")
    log.info("polled %s", "vm-1", extra=job_fields("vm-1", "acme"))
    try:
        raise RuntimeError("bad")
    except RuntimeError:
        log.exception("failed")
    lines = stream.getvalue().splitlines()
    first = TEXT_LINE.match(lines[0])
    assert first is not None, lines[0]
    assert first.group("level", "logger", "msg") == ("INFO", "app.worker.poller", "polled vm-1")
    assert "acme" not in lines[0]  # extras are for json; the text line is unchanged
    second = TEXT_LINE.match(lines[1])
    assert second is not None and second.group("msg") == "failed"
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: bad"
    assert logs.TEXT_FORMAT == "%(asctime)s %(levelname)s %(name)s: %(message)s"


def test_text_mode_gives_uvicorn_its_default_config() -> None:
    from uvicorn.config import LOGGING_CONFIG

    config = uvicorn_log_config("text")
    assert config == LOGGING_CONFIG
    config["loggers"]["uvicorn"]["level"] = "DEBUG"  # a copy: uvicorn's own dict is untouched
    assert LOGGING_CONFIG["loggers"]["uvicorn"]["level"] == "INFO"


# -- uvicorn ----------------------------------------------------------------------------------------------


async def _tiny_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    status = 200 if scope["path"] == "/ok" else 404
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
    )
    await send({"type": "http.response.body", "body": b"hi"})


async def test_uvicorn_server_and_access_lines_are_json(capsys: pytest.CaptureFixture[str]) -> None:
    """A real uvicorn server with the json log_config: its start-up, access and shutdown lines."""
    configure_logging("json", level=logging.INFO)  # the root handler too, as `serve` does
    config = uvicorn.Config(
        _tiny_app, host="127.0.0.1", port=0, log_level="info", log_config=uvicorn_log_config("json")
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.02)
        assert server.started
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/ok?x=1")).status_code == 200
            assert (await client.get("/missing")).status_code == 404
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
    captured = capsys.readouterr()
    out, err = _json_lines(captured.out), _json_lines(captured.err)
    access = [e for e in out if e["logger"] == "uvicorn.access"]
    assert len(access) == 2, captured.out
    assert '"GET /ok?x=1 HTTP/1.1" 200' in access[0]["message"]
    assert '"GET /missing HTTP/1.1" 404' in access[1]["message"]
    server_lines = [e for e in err if e["logger"] == "uvicorn.error"]
    messages = " | ".join(e["message"] for e in server_lines)
    assert "Started server process" in messages and "Uvicorn running on" in messages
    assert "Shutting down" in messages
    assert all(e["level"] == "INFO" for e in server_lines)
    assert all("color_message" not in e for e in out + err)


# -- configuration ------------------------------------------------------------------------------------


@pytest.fixture
def no_relay_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for name in ("RELAY_LOG_FORMAT", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_relay_env")
def test_log_format_defaults_to_text_and_reads_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().log_format == "text"
    monkeypatch.setenv("RELAY_LOG_FORMAT", "json")
    assert load_settings().log_format == "json"
    monkeypatch.setenv("RELAY_LOG_FORMAT", " JSON ")
    assert load_settings().log_format == "json"
    monkeypatch.setenv("RELAY_LOG_FORMAT", "")
    assert load_settings().log_format == "text"


@pytest.mark.usefixtures("no_relay_env")
def test_a_bad_log_format_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match=r"RELAY_LOG_FORMAT: .*'text' or 'json'"):
        load_settings()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///./akool-relay.db", True),
        ("sqlite:////abs/path.db", True),
        ("sqlite+aiosqlite:///x.db", True),
        ("sqlite://", True),
        ("postgresql://u:p@h:5432/db", False),
        ("postgresql+asyncpg://u:p@h/db", False),
        ("postgres://h/db", False),
        ("sqlitex:///x.db", False),
        ("sqlite", False),
        ("", False),
    ],
)
def test_is_sqlite_url(url: str, expected: bool) -> None:
    assert is_sqlite_url(url) is expected


@pytest.mark.usefixtures("no_relay_env")
def test_settings_is_sqlite_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().is_sqlite
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@h/db")
    assert not load_settings().is_sqlite
