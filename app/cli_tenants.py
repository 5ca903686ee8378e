"""`akool-relay tenant …`: tenant management offline, against DATABASE_URL (SPEC §8), as the
`/tenants` routes do it online. Tokens and secrets are printed once, when made."""

from __future__ import annotations

import argparse
import asyncio

from app.config import Settings
from app.errors import EnvManaged


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tenant = sub.add_parser("tenant", help="make and manage tenants (clients with their own tokens and jobs)")
    actions = tenant.add_subparsers(dest="action", required=True)
    actions.add_parser("create", help="a new tenant; prints its first token and webhook secret").add_argument(
        "name"
    )
    actions.add_parser("list", help="every tenant, with its tokens")
    actions.add_parser("token", help="a new token for the tenant; printed once").add_argument("name")
    revoke = actions.add_parser("revoke", help="revoke one of the tenant's tokens (by its id)")
    revoke.add_argument("name")
    revoke.add_argument("token_id")
    rotate = actions.add_parser(
        "rotate-secret", help="a new webhook secret; the old one keeps signing during the grace"
    )
    rotate.add_argument("name")
    rotate.add_argument("--grace-seconds", type=float, default=86400.0)
    disable = actions.add_parser("disable", help="refuse the tenant's tokens and stop polling its jobs")
    disable.add_argument("name")
    disable.add_argument("--enable", action="store_true", help="undo: enable the tenant again")


def run(settings: Settings, args: argparse.Namespace) -> str:
    return asyncio.run(_run(settings, args))


async def _run(settings: Settings, args: argparse.Namespace) -> str:
    from app import tenancy
    from app.db import Database
    from app.migrate import upgrade_to_head
    from app.store import tenants

    if settings.is_sqlite:
        await asyncio.to_thread(upgrade_to_head, settings.database_url)
    db = Database(settings.database_url)
    try:
        if args.action == "create":
            made = await tenants.create(db, args.name)
            return "\n".join(
                [
                    f"tenant {made.name} (id {made.id})",
                    f"token: {made.token}  (id {made.token_id}; shown only now)",
                    f"webhook secret: {made.webhook_secret}",
                ]
            )
        if args.action == "list":
            lines = []
            for t in await tenants.all_tenants(db):
                assert t.id is not None, "loaded"
                state = " (disabled)" if t.disabled else ""
                lines.append(f"{t.id}\t{t.name}{state}\tcreated {t.created_at.isoformat()}")
                for k in await tenants.tokens(db, t.id):
                    used = k.last_used_at.isoformat() if k.last_used_at else "never"
                    revoked = f"\trevoked {k.revoked_at.isoformat()}" if k.revoked_at else ""
                    lines.append(f"\t{k.id}\t{k.prefix}…\t{k.source}\tlast used {used}{revoked}")
            return "\n".join(lines)
        tenant = await tenants.find(db, name=args.name)
        assert tenant.id is not None, "loaded"
        if args.action == "token":
            token_id, token = await tenants.add_token(db, tenant.id)
            return f"token: {token}  (id {token_id}; shown only now)"
        if args.action == "revoke":
            await tenants.revoke_token(db, tenant.id, args.token_id)
            return f"token {args.token_id} of {tenant.name} revoked"
        if args.action == "rotate-secret":
            if tenancy.env_secret_of(settings, tenant.id) is not None:
                raise EnvManaged("the secret is set by RELAY_WEBHOOK_SECRET: change it there")
            secret, until = await tenants.rotate_secret(db, tenant.id, args.grace_seconds)
            return f"webhook secret: {secret}\nthe previous one signs too until {until.isoformat()}"
        if args.action == "disable":
            await tenants.set_disabled(db, tenant.id, not args.enable)
            return f"tenant {tenant.name} {'enabled' if args.enable else 'disabled'}"
        raise AssertionError(f"unknown action {args.action}")
    finally:
        await db.dispose()
