"""Tenants (SPEC §8) over real HTTP, on SQLite and PostgreSQL: an operator makes them, each sees and
signs its own jobs, tokens are revoked at once on every replica, secrets rotate with a grace, and
the CLI does the same offline. (Every route tried on another tenant's job: test_tenant_isolation.py.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.sandbox.receiver import Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import ManualClock, Simulator
from tests.support.relay import DUE_AT_ONCE, HOOK, PAST_THE_END, RelayFactory, RunningRelay, deliver, poll
from tests.support.tenants import ADMIN, AS_ADMIN, bearer, make_tenant

DEFAULT_TOKEN = "default-tenant-token-0123456789"


async def track(r: RunningRelay, token: str, vid: str, url: str = HOOK, **extra: Any) -> httpx.Response:
    return await r.client.post(
        "/jobs", json={"video_model_id": vid, "callback_url": url, **extra}, headers=bearer(token)
    )


async def test_each_tenant_sees_its_own_jobs_and_an_operator_sees_all(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True, RELAY_ADMIN_TOKENS=ADMIN, RELAY_API_TOKENS=DEFAULT_TOKEN) as r:
        acme = await make_tenant(r, "acme")
        # The same Akool id tracked by two tenants: two subscriptions, each 201.
        assert (await track(r, acme["token"], "shared-1", metadata={"who": "acme"})).status_code == 201
        assert (await track(r, DEFAULT_TOKEN, "shared-1", metadata={"who": "default"})).status_code == 201
        assert (await track(r, acme["token"], "acme-only")).status_code == 201

        mine = (await r.client.get("/jobs", headers=bearer(acme["token"]))).json()
        assert sorted(j["video_model_id"] for j in mine["items"]) == ["acme-only", "shared-1"]
        assert all("tenant" not in j for j in mine["items"])
        assert mine["summary"]["jobs"]["pending"] == 2
        theirs = (await r.client.get("/jobs", headers=bearer(DEFAULT_TOKEN))).json()
        assert [j["metadata"] for j in theirs["items"]] == [{"who": "default"}]
        assert theirs["summary"]["jobs"]["pending"] == 1

        everything = (await r.client.get("/jobs", headers=AS_ADMIN)).json()
        assert sorted((j["tenant"], j["video_model_id"]) for j in everything["items"]) == [
            ("acme", "acme-only"),
            ("acme", "shared-1"),
            ("default", "shared-1"),
        ]
        assert everything["summary"]["jobs"]["pending"] == 3
        only_acme = (await r.client.get("/jobs", params={"tenant": "acme"}, headers=AS_ADMIN)).json()
        assert only_acme["summary"]["jobs"]["pending"] == 2 and len(only_acme["items"]) == 2

        # An id two tenants track: an operator names the tenant (422 without), a tenant may not.
        assert (await r.client.get("/jobs/shared-1", headers=AS_ADMIN)).status_code == 422
        one = await r.client.get("/jobs/shared-1", params={"tenant": "acme"}, headers=AS_ADMIN)
        assert one.status_code == 200 and one.json()["tenant"] == "acme"
        assert one.json()["metadata"] == {"who": "acme"}
        named = await r.client.get(
            "/jobs/shared-1", params={"tenant": "default"}, headers=bearer(acme["token"])
        )
        assert named.status_code == 422

        # An operator registers for a tenant by name.
        made = await r.client.post(
            "/jobs",
            json={"video_model_id": "for-acme", "callback_url": HOOK, "tenant": "acme"},
            headers=AS_ADMIN,
        )
        assert made.status_code == 201
        assert (await r.client.get("/jobs/for-acme", headers=bearer(acme["token"]))).status_code == 200
        refused = await track(r, acme["token"], "x-1", tenant="default")
        assert refused.status_code == 422

        own = (await r.client.get("/tenant", headers=bearer(acme["token"]))).json()
        assert own["name"] == "acme" and "webhook_secret" not in own and "token" not in own


async def test_operator_routes_are_hidden_without_an_admin_token(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True, RELAY_ADMIN_TOKENS=ADMIN) as r:
        acme = await make_tenant(r, "acme")
        assert (await r.client.post("/tenants", json={"name": "acme"}, headers=AS_ADMIN)).status_code == 409
        assert (
            await r.client.post("/tenants", json={"name": "no spaces"}, headers=AS_ADMIN)
        ).status_code == 422
        for method, path in [
            ("GET", "/tenants"),
            ("POST", f"/tenants/{acme['id']}/tokens"),
            ("GET", f"/tenants/{acme['id']}/tokens"),
            ("PATCH", f"/tenants/{acme['id']}"),
        ]:
            as_tenant = await r.client.request(
                method, path, json={"disabled": True}, headers=bearer(acme["token"])
            )
            assert as_tenant.status_code == 404, (method, path)
            anonymous = await r.client.request(method, path, json={"disabled": True})
            assert anonymous.status_code == 401, (method, path)
        # Another tenant's secret cannot be rotated by a tenant: it looks like no route at all.
        assert (
            await r.client.post("/tenants/1/webhook-secret/rotate", json={}, headers=bearer(acme["token"]))
        ).status_code == 404


async def test_an_open_api_has_no_operator_routes(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True, RELAY_API_TOKENS=None, RELAY_ADMIN_TOKENS=None) as r:
        # No token anywhere: the API is open, but the operator routes need an admin token.
        assert (await r.client.get("/jobs")).status_code == 200
        assert (await r.client.get("/tenants")).status_code == 404
        assert (await r.client.get("/tenant")).status_code == 404


async def test_tokens_revoked_or_disabled_are_refused_at_once(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True, RELAY_ADMIN_TOKENS=ADMIN, RELAY_API_TOKENS=DEFAULT_TOKEN) as r:
        acme = await make_tenant(r, "acme")
        extra = (await r.client.post(f"/tenants/{acme['id']}/tokens", headers=AS_ADMIN)).json()
        assert (await r.client.get("/jobs", headers=bearer(extra["token"]))).status_code == 200
        tokens = (await r.client.get(f"/tenants/{acme['id']}/tokens", headers=AS_ADMIN)).json()
        by_id = {t["id"]: t for t in tokens}
        assert by_id[extra["id"]]["last_used_at"] is not None
        assert by_id[acme["token_id"]]["last_used_at"] is None
        assert all(extra["token"] not in str(t) and "hash" not in t for t in tokens)

        gone = await r.client.delete(f"/tenants/{acme['id']}/tokens/{extra['id']}", headers=AS_ADMIN)
        assert gone.status_code == 204
        assert (await r.client.get("/jobs", headers=bearer(extra["token"]))).status_code == 401
        assert (await r.client.get("/jobs", headers=bearer(acme["token"]))).status_code == 200

        # RELAY_API_TOKENS are managed by the environment: listed, never revoked through the API.
        env = [
            t
            for t in (await r.client.get("/tenants/1/tokens", headers=AS_ADMIN)).json()
            if t["source"] == "env"
        ]
        assert len(env) == 1
        refused = await r.client.delete(f"/tenants/1/tokens/{env[0]['id']}", headers=AS_ADMIN)
        assert refused.status_code == 409

        off = await r.client.patch(f"/tenants/{acme['id']}", json={"disabled": True}, headers=AS_ADMIN)
        assert off.status_code == 200 and off.json()["disabled"] is True
        assert (await r.client.get("/jobs", headers=bearer(acme["token"]))).status_code == 401
        await r.client.patch(f"/tenants/{acme['id']}", json={"disabled": False}, headers=AS_ADMIN)
        assert (await r.client.get("/jobs", headers=bearer(acme["token"]))).status_code == 200


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_revoked_token_is_refused_by_every_replica(start_relay: RelayFactory) -> None:
    env = {"RELAY_ADMIN_TOKENS": ADMIN}
    async with start_relay(driven=True, **env) as first, start_relay(driven=True, **env) as second:
        acme = await make_tenant(first, "acme")
        assert (await second.client.get("/jobs", headers=bearer(acme["token"]))).status_code == 200
        revoked = await first.client.delete(
            f"/tenants/{acme['id']}/tokens/{acme['token_id']}", headers=AS_ADMIN
        )
        assert revoked.status_code == 204
        assert (await second.client.get("/jobs", headers=bearer(acme["token"]))).status_code == 401


def verifies(secret: str, callback: Any) -> bool:
    try:
        Webhook(secret).verify(callback.raw, callback.headers)
    except WebhookVerificationError:
        return False
    return True


async def test_callbacks_are_signed_with_the_tenants_secrets_through_a_rotation(
    start_relay: RelayFactory, stepped_simulator: tuple[Simulator, str], sim_clock: ManualClock
) -> None:
    rec = Receiver()  # verifies nothing itself: the test checks each signature
    async with serve_in_background(rec.app) as base:
        env = {**DUE_AT_ONCE, "RELAY_ADMIN_TOKENS": ADMIN}
        async with start_relay(driven=True, **env) as r:
            acme = await make_tenant(r, "acme")
            old = acme["webhook_secret"]
            events = {"events": ["queueing", "completed"]}
            assert (await track(r, acme["token"], "rot-1", rec.url(base), **events)).status_code == 201
            assert await poll(r) == 1 and await deliver(r) == 1  # queueing, signed with the one secret
            [first] = rec.accepted
            assert verifies(old, first) and first.headers["webhook-signature"].count("v1,") == 1
            assert not verifies(acme["webhook_secret"].replace("whsec_", "whsec_A"), first)

            rotated = await r.client.post(
                f"/tenants/{acme['id']}/webhook-secret/rotate",
                json={"grace_seconds": 1.5},
                headers=bearer(acme["token"]),  # the tenant rotates its own
            )
            assert rotated.status_code == 200, rotated.text
            new = rotated.json()["webhook_secret"]
            await asyncio.sleep(1.1)  # the sender reads a tenant's secrets at most once a second
            assert (await track(r, acme["token"], "rot-2", rec.url(base), **events)).status_code == 201
            assert await poll(r) == 2 and await deliver(r) == 1  # rot-2's queueing (rot-1 still queues)
            during = rec.accepted[-1]
            assert verifies(new, during) and verifies(old, during)
            assert during.headers["webhook-signature"].count("v1,") == 2
            assert during.headers["webhook-signature"].split(" ")[0] == Webhook(new).sign(
                during.webhook_id, _at(during), during.raw.decode()
            )  # newest first

            await asyncio.sleep(1.6)  # past previous_valid_until (and the second's cache)
            sim_clock.advance(PAST_THE_END)
            assert await poll(r) == 2 and await deliver(r) == 2
            for after in rec.accepted[-2:]:
                assert verifies(new, after) and not verifies(old, after)


def _at(callback: Any) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(int(callback.headers["webhook-timestamp"]), UTC)


async def test_the_environments_secret_cannot_be_rotated_through_the_api(start_relay: RelayFactory) -> None:
    async with start_relay(driven=True, RELAY_ADMIN_TOKENS=ADMIN) as r:  # RELAY_WEBHOOK_SECRET is set
        refused = await r.client.post("/tenants/1/webhook-secret/rotate", json={}, headers=AS_ADMIN)
        assert refused.status_code == 409


def run_cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": db_url, "AKOOL_API_KEY": "k"}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "tenant", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _field(output: str, label: str) -> str:
    [line] = [x for x in output.splitlines() if x.startswith(label)]
    return line.split()[1]


async def test_the_cli_manages_tenants_offline(db_url: str, start_relay: RelayFactory) -> None:
    made = await asyncio.to_thread(run_cli, db_url, "create", "media")
    assert made.returncode == 0, made.stderr
    token = _field(made.stdout, "token:")
    assert "webhook secret: whsec_" in made.stdout
    again = await asyncio.to_thread(run_cli, db_url, "create", "media")
    assert again.returncode == 1 and "exists" in again.stderr
    async with start_relay(driven=True, RELAY_ADMIN_TOKENS=ADMIN) as r:
        assert (await track(r, token, "cli-1")).status_code == 201
        listed = await asyncio.to_thread(run_cli, db_url, "list")
        assert "media" in listed.stdout and token not in listed.stdout
        second = await asyncio.to_thread(run_cli, db_url, "token", "media")
        token_2 = _field(second.stdout, "token:")
        token_id = second.stdout.split("(id ")[1].split(";")[0]
        assert (await r.client.get("/jobs/cli-1", headers=bearer(token_2))).status_code == 200
        revoked = await asyncio.to_thread(run_cli, db_url, "revoke", "media", token_id)
        assert revoked.returncode == 0, revoked.stderr
        assert (await r.client.get("/jobs", headers=bearer(token_2))).status_code == 401
        disabled = await asyncio.to_thread(run_cli, db_url, "disable", "media")
        assert disabled.returncode == 0
        assert (await r.client.get("/jobs", headers=bearer(token))).status_code == 401
        unknown = await asyncio.to_thread(run_cli, db_url, "token", "nobody")
        assert unknown.returncode == 1 and "no such tenant" in unknown.stderr
