"""Domain errors and their one handler: each maps to a status code and a `{"detail": ...}` body."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class RelayError(Exception):
    status_code = 400
    default_detail = "bad request"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.default_detail)
        self.detail = detail or self.default_detail

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail}


class JobNotFound(RelayError):
    status_code = 404
    default_detail = "no job with this video_model_id is tracked"


class AmbiguousJob(RelayError):
    """An operator named an id several tenants track, without `?tenant=`: a 422 shaped like a
    validation error of the `tenant` query parameter, as the OpenAPI schema declares 422s."""

    status_code = 422
    default_detail = "several tenants track this video_model_id: name one with ?tenant="

    def body(self) -> dict[str, Any]:
        return {
            "detail": [{"type": "missing", "loc": ["query", "tenant"], "msg": self.detail, "input": None}]
        }


class CallbackConflict(RelayError):
    status_code = 409
    default_detail = "this video_model_id is already tracked with another callback_url"


class NothingToRedeliver(RelayError):
    status_code = 409
    default_detail = "this job has no event to redeliver yet"


class Unauthorized(RelayError):
    status_code = 401
    default_detail = "missing or invalid bearer token"


class NotFound(RelayError):
    """An operator route asked without an admin token: it answers as a route that does not exist."""

    status_code = 404
    default_detail = "Not Found"


class TenantNotFound(RelayError):
    status_code = 404
    default_detail = "no such tenant"


class TokenNotFound(RelayError):
    status_code = 404
    default_detail = "no such token"


class TenantExists(RelayError):
    status_code = 409
    default_detail = "a tenant with this name exists"


class EnvManaged(RelayError):
    """What the environment sets (RELAY_API_TOKENS, RELAY_WEBHOOK_SECRET) is managed there."""

    status_code = 409
    default_detail = "set by the environment: change it there"


class PushNotAccepted(RelayError):
    """Akool's push cannot be checked: no AKOOL_CLIENT_ID and client secret are configured."""

    status_code = 404
    default_detail = "Not Found"


class MalformedPush(RelayError):
    """Not Akool's envelope, or it does not decrypt: one answer for every cause (no padding oracle)."""

    status_code = 400
    default_detail = "not a valid Akool push"


class PushSignatureMismatch(RelayError):
    status_code = 401
    default_detail = "bad signature"


class IdempotencyKeyReused(RelayError):
    status_code = 422
    default_detail = "this Idempotency-Key was already used with another request body"


class AkoolUnreachable(RelayError):
    """Nothing reached Akool (connection refused, DNS, no token): the same key may be tried again."""

    status_code = 503
    default_detail = "Akool could not be reached; nothing was sent, the request may be tried again"


class TranslationError(RelayError):
    """An answer of POST /translations with fields beside `detail` (SPEC §7)."""


class CreateInProgress(TranslationError):
    """The key's first call may still be running: Akool is not asked again."""

    status_code = 409
    default_detail = "a request with this Idempotency-Key is still in progress; try again shortly"

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "state": "in_progress"}


class CreateOutcomeUnknown(TranslationError):
    """Sent, with no answer kept (a timeout after sending, a crash): Akool may have made the jobs."""

    status_code = 409
    default_detail = (
        "the outcome of the request with this Idempotency-Key is unknown: Akool may have created the "
        "video translation; it is not asked again (that could make a second paid job)"
    )

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "state": "unknown"}


class AkoolRejected(TranslationError):
    """Akool answered the create with a business error: its message and code."""

    status_code = 502
    default_detail = "Akool refused the request"

    def __init__(self, detail: str | None = None, akool_code: int | None = None) -> None:
        super().__init__(detail)
        self.akool_code = akool_code

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "akool_code": self.akool_code}


def field_error(field: str, message: str, value: object, *, where: str = "body") -> RequestValidationError:
    """A 422 shaped like FastAPI's own validation errors, for checks made outside pydantic."""
    return RequestValidationError(
        [{"type": "value_error", "loc": (where, field), "msg": message, "input": value}]
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RelayError)
    async def _relay_error(_request: Request, exc: RelayError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)
