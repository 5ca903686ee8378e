"""Akool's own webhook (SPEC §7): a push is a hint that makes the job due; the poll decides."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app import akool_push
from app.api.deps import RuntimeDep
from app.errors import MalformedPush, PushNotAccepted, PushSignatureMismatch

router = APIRouter(tags=["akool"])


@router.post(
    "/akool/webhook",
    responses={
        400: {"description": "not Akool's envelope, or it does not decrypt"},
        401: {"description": "the signature does not match"},
        404: {"description": "pushes are not configured (AKOOL_CLIENT_ID and the client secret)"},
    },
)
async def akool_webhook(request: Request, runtime: RuntimeDep) -> JSONResponse:
    """Verify and decrypt the push, then answer 200 at once whether or not the id is tracked
    (Akool retries anything else)."""
    keys = runtime.push_keys
    if keys is None:
        raise PushNotAccepted()
    try:
        notice = keys.decode(await request.body())
    except akool_push.BadSignature:
        runtime.metrics.pushes.labels("bad_signature").inc()
        raise PushSignatureMismatch() from None
    except akool_push.MalformedPush:
        runtime.metrics.pushes.labels("undecryptable").inc()
        raise MalformedPush() from None
    await runtime.push_received(notice)
    return JSONResponse({"ok": True})
