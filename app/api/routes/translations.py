"""POST /translations (SPEC §7): create a video translation at Akool and track every job it makes.

A create costs the Akool account credits, so Akool is asked at most once per `Idempotency-Key`:

1. The callback URL is checked, then the key is recorded `in_progress` and committed (creates.begin).
   A key seen before answers from its row and never reaches Akool: its kept answer (same status,
   same body); 409 `in_progress` while its call may still be running; 409 `unknown` once it cannot
   be (a timeout after sending, or a crash before the answer was kept); 422 for another body.
2. createbytranslate, once (Runtime.create_translation), with `webhookUrl` when RELAY_PUBLIC_URL is set.
3. What Akool said decides: jobs made → registered as POST /jobs registers them, in the transaction
   that keeps the 201; a business error → 502, kept; nothing sent → 503 and the key is freed;
   sent without an answer → the key becomes `unknown`, 409.

Steps 2 and 3 run in a task of their own: a client that hangs up does not stop the jobs Akool made
from being tracked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from app.akool import CreateKind, CreateResult
from app.api.deps import Authorized, CallerDep, RuntimeDep
from app.config import Settings
from app.errors import (
    AkoolRejected,
    AkoolUnreachable,
    CallbackConflict,
    CreateInProgress,
    CreateOutcomeUnknown,
    IdempotencyKeyReused,
    field_error,
)
from app.models import DEFAULT_TENANT_ID
from app.netguard import UnsafeCallbackURL, check_callback_url
from app.runtime import Runtime
from app.schemas import JobCreate, JobPublic, TranslationCreate, TranslationFailure, TranslationResult
from app.store import creates
from app.store.creates import CreateState, KeptCreate
from app.store.jobs import Registered

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/akool/webhook"
# A call ends within RELAY_AKOOL_TIMEOUT; its answer then needs a moment to be committed. Past both, a
# key still `in_progress` belongs to a process that died: its outcome is unknown.
COMMIT_GRACE = 2.0

IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=128,
        description="one create per key (kept 24 h): a retry answers the first outcome again",
    ),
]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {
        code: {"description": description} for code, description in _DESCRIPTIONS.items() if code in codes
    }


_DESCRIPTIONS = {
    409: '{"detail", "state": "in_progress" | "unknown"}: this key\'s first call is running, or its outcome '
    "cannot be known; Akool is not asked again",
    422: "a field error, a missing or too long Idempotency-Key, or the key was used with another body",
    502: '{"detail": <Akool\'s msg>, "akool_code": N}: Akool refused the create (kept for this key)',
    503: "Akool could not be reached and nothing was sent: the same key may be tried again",
}

router = APIRouter(
    prefix="/translations",
    tags=["translations"],
    dependencies=[Authorized],
    responses={400: {"description": "unreadable body"}, 401: {}, 413: {"description": "body too large"}},
)

_running: set[asyncio.Task[JSONResponse]] = set()  # creates whose client may have gone


def request_hash(spec: TranslationCreate) -> str:
    """SHA-256 of the canonical JSON of the request (keys sorted, no spaces)."""
    canonical = json.dumps(
        spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@router.post("", status_code=201, response_model=TranslationResult, responses=_errors(409, 422, 502, 503))
async def create_translation(
    spec: TranslationCreate, runtime: RuntimeDep, caller: CallerDep, idempotency_key: IdempotencyKey
) -> JSONResponse:
    try:
        await check_callback_url(spec.callback_url, allow_private=runtime.settings.allow_private_callbacks)
    except UnsafeCallbackURL as exc:
        raise field_error("callback_url", str(exc), spec.callback_url) from None
    digest = request_hash(spec)
    tenant_id = DEFAULT_TENANT_ID if caller.tenant_id is None else caller.tenant_id
    key = creates.tenant_key(tenant_id, idempotency_key)
    kept, now = await creates.begin(runtime.db, key, digest)
    if kept is not None:
        return _answer_again(kept, digest, now, runtime.settings)
    task = asyncio.create_task(_create(runtime, spec, key, tenant_id))
    _running.add(task)
    task.add_done_callback(_settled)
    return await asyncio.shield(task)


def _settled(task: asyncio.Task[JSONResponse]) -> None:
    _running.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: the route re-raises it, unless its client is gone


def _answer_again(kept: KeptCreate, digest: str, now: datetime, settings: Settings) -> JSONResponse:
    """A key seen before: never Akool again."""
    if kept.request_hash != digest:
        raise IdempotencyKeyReused()
    if kept.state is CreateState.DONE and kept.status_code is not None and kept.response is not None:
        return JSONResponse(kept.response, status_code=kept.status_code)
    running_for = timedelta(seconds=settings.akool_timeout + COMMIT_GRACE)
    if kept.state is CreateState.IN_PROGRESS and now - kept.created_at < running_for:
        raise CreateInProgress()
    raise CreateOutcomeUnknown()


async def _create(runtime: Runtime, spec: TranslationCreate, key: str, tenant_id: int) -> JSONResponse:
    body = dict(spec.akool)
    if runtime.settings.public_url:
        body["webhookUrl"] = runtime.settings.public_url + WEBHOOK_PATH
    result = await runtime.create_translation(body)
    db = runtime.db
    fields = {"idempotency_key": key, "tenant_id": tenant_id}
    if result.kind is CreateKind.NOT_SENT:
        await creates.forget(db, key)
        log.warning("translation not sent: Akool could not be reached (%s)", result.detail, extra=fields)
        raise AkoolUnreachable(
            f"Akool could not be reached ({result.detail}); nothing was sent, the same "
            "Idempotency-Key may be tried again"
        )
    if result.kind is CreateKind.UNKNOWN:
        await creates.keep(db, key, CreateState.UNKNOWN)
        log.warning(
            "translation outcome unknown (%s): Akool may have made jobs the relay does not track",
            result.detail,
            extra=fields,
        )
        raise CreateOutcomeUnknown()
    if result.kind is CreateKind.REJECTED:
        error = AkoolRejected(result.detail, result.code)
        await creates.keep(db, key, CreateState.DONE, error.status_code, error.body())
        log.info("translation refused by Akool: code %s: %s", result.code, result.detail, extra=fields)
        raise error
    specs, languages, failed = _to_track(spec, result)

    def respond(registered: list[tuple[Registered, JobPublic]]) -> tuple[int, dict[str, Any]]:
        jobs: list[JobPublic] = []
        refused = list(failed)
        for language, (found, job) in zip(languages, registered, strict=True):
            if found is Registered.CONFLICT:  # someone tracks this new id already, elsewhere
                refused.append(
                    TranslationFailure(
                        language=language, akool_code=result.code, msg=CallbackConflict.default_detail
                    )
                )
            else:
                jobs.append(job)
        answer = TranslationResult(
            akool={"data": result.data, "all_results": result.all_results}, jobs=jobs, failed=refused
        )
        return 201, answer.model_dump(mode="json")

    status_code, answer = await creates.record_created(db, runtime.settings, key, tenant_id, specs, respond)
    runtime.jobs_registered()
    log.info(
        "translation created: %d job(s) tracked, %d language(s) failed",
        len(answer["jobs"]),
        len(answer["failed"]),
        extra=fields,
    )
    return JSONResponse(answer, status_code=status_code)


def _to_track(
    spec: TranslationCreate, result: CreateResult
) -> tuple[list[JobCreate], list[str | None], list[TranslationFailure]]:
    """The jobs to register (and each one's language), and the languages Akool made no job for."""
    specs: list[JobCreate] = []
    languages: list[str | None] = []
    failed: list[TranslationFailure] = []
    for entry in result.entries:
        if entry.video_model_id is None:
            failed.append(TranslationFailure(language=entry.language, akool_code=entry.code, msg=entry.msg))
            continue
        try:
            job = JobCreate(
                video_model_id=entry.video_model_id,
                callback_url=spec.callback_url,
                metadata=spec.metadata,
                events=spec.events,
            )
        except ValidationError:
            msg = f"Akool's id {entry.video_model_id[:80]!r} is not one the relay can track"
            failed.append(TranslationFailure(language=entry.language, akool_code=entry.code, msg=msg))
            continue
        specs.append(job)
        languages.append(entry.language)
    return specs, languages, failed
