"""Domain errors and their one handler: each maps to a status code and a `{"detail": ...}` body."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class RelayError(Exception):
    status_code = 400
    default_detail = "bad request"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.default_detail)
        self.detail = detail or self.default_detail


class JobNotFound(RelayError):
    status_code = 404
    default_detail = "no job with this video_model_id is tracked"


class CallbackConflict(RelayError):
    status_code = 409
    default_detail = "this video_model_id is already tracked with another callback_url"


class NothingToRedeliver(RelayError):
    status_code = 409
    default_detail = "this job has no event to redeliver yet"


class Unauthorized(RelayError):
    status_code = 401
    default_detail = "missing or invalid bearer token"


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


def field_error(field: str, message: str, value: object) -> RequestValidationError:
    """A 422 shaped like FastAPI's own validation errors, for checks made outside pydantic."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", field), "msg": message, "input": value}]
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RelayError)
    async def _relay_error(_request: Request, exc: RelayError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)
