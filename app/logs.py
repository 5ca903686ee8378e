"""Logging set-up: `RELAY_LOG_FORMAT=text` (the default) or `json`, one JSON object per line (SPEC §2).

Everything goes through the standard `logging` module; only the formatter differs.

- `configure_logging(fmt, level=...)`: one handler on the root logger (stderr), text or JSON, and the
  noisy loggers (httpx, apscheduler, alembic's plugin chatter) at WARNING.
- `uvicorn_log_config(fmt)`: the dict for `uvicorn.Config(log_config=...)`. Text is uvicorn's own
  default, as before; json sends `uvicorn`, `uvicorn.error` and `uvicorn.access` through `JsonFormatter`
  (same streams as uvicorn's default: server messages on stderr, access lines on stdout).
- `job_fields(...)`, `delivery_fields(...)`: the `extra=` dicts of log lines about a job or a delivery,
  so every such line carries `video_model_id` (and `tenant` where known) or `webhook_id`.

A JSON line has `time` (ISO 8601, UTC, milliseconds, `Z`), `level`, `logger` and `message`, then the
fields the call site passed with `extra=` as top-level keys, then `exception` (the formatted traceback)
and `stack` when present.

Why a hand-written formatter and not python-json-logger (well kept, and it would do): the formatter is
about thirty lines of `json.dumps`, and writing it keeps what may leave the process an explicit rule
rather than a library default. Only the four fields, the call site's own `extra=` fields and the
traceback go out: never `record.args` (the message is rendered with them, as in text mode, but the
objects themselves are not dumped), never the record's other attributes, and an extra whose name says
token/secret/password/api key/authorization is written as "[redacted]". No new dependency to pin either.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]  # Settings.log_format; the functions take any str and check it
FORMATS: tuple[str, ...] = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A line per request or tick; aiosqlite's DEBUG lines carry every statement's parameters.
NOISY_LOGGERS = ("httpx", "apscheduler", "alembic.runtime.plugins", "aiosqlite")

# Attributes every LogRecord has (3.12 adds taskName), plus what Formatter.format adds. Anything else on
# a record came from `extra=`.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
# Extras that are presentation, not data: uvicorn adds an ANSI-coloured copy of some messages.
_DROPPED_EXTRAS = frozenset({"color_message"})
_SECRET_HINTS = ("token", "secret", "password", "passwd", "api_key", "apikey", "authorization")
_RESERVED_KEYS = ("time", "level", "logger", "message")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the `extra=` fields, exception, stack."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRS or key in _DROPPED_EXTRAS or key.startswith("_"):
                continue
            name = f"extra_{key}" if key in _RESERVED_KEYS else key
            lowered = key.lower()
            entry[name] = "[redacted]" if any(h in lowered for h in _SECRET_HINTS) else _plain(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ASCII-only (\uXXXX escapes): valid on a stream of any encoding; newlines escaped, so one line.
        return json.dumps(entry, default=str)


def _iso_utc(created: float) -> str:
    return datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(value: object) -> object:
    """JSON-native values as they are; enums by value, datetimes as ISO 8601, the rest as str()."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN and Infinity are not JSON
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)


def _check(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: text or json")
    return fmt


def make_formatter(fmt: str) -> logging.Formatter:
    """The formatter of `fmt`: JsonFormatter, or the text format of every version so far."""
    return JsonFormatter() if _check(fmt) == "json" else logging.Formatter(TEXT_FORMAT)


# The handler configure_logging installed last, replaced (not duplicated) when it is called again.
_installed: logging.Handler | None = None


def configure_logging(fmt: str, *, level: int, stream: TextIO | None = None) -> None:
    """Route the root logger to `stream` (stderr) in `fmt` at `level`; quiet the noisy loggers."""
    global _installed
    _check(fmt)
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)
    _installed = handler
    # A library's warnings.warn would otherwise be a bare, non-JSON line on stderr.
    logging.captureWarnings(fmt == "json")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def uvicorn_log_config(fmt: str) -> dict[str, Any]:
    """`log_config` for uvicorn.Config: uvicorn's default for text, JSON lines for json."""
    if _check(fmt) == "text":
        import copy

        from uvicorn.config import LOGGING_CONFIG

        return copy.deepcopy(LOGGING_CONFIG)
    json_formatter = {"()": f"{__name__}.JsonFormatter"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": dict(json_formatter), "access": dict(json_formatter)},
        "handlers": {
            "default": {
                "formatter": "default",
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
            },
            "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


def job_fields(video_model_id: str, tenant: str | None = None) -> dict[str, str]:
    """`extra=` of a line about a job: `video_model_id`, and `tenant` when known."""
    fields = {"video_model_id": video_model_id}
    if tenant is not None:
        fields["tenant"] = tenant
    return fields


def delivery_fields(
    webhook_id: str, video_model_id: str | None = None, tenant: str | None = None
) -> dict[str, str]:
    """`extra=` of a line about a delivery: `webhook_id`, plus the job's fields when known."""
    fields = {"webhook_id": webhook_id}
    if video_model_id is not None:
        fields["video_model_id"] = video_model_id
    if tenant is not None:
        fields["tenant"] = tenant
    return fields
