"""Migration 0007 (tenants) upgrades a database in use: rows written under 0006 keep their values,
become tenant 1's, and are counted as tenant 1's; on SQLite the rebuilt job table keeps its partial
indexes and count triggers. The downgrade refuses while another tenant has jobs, then works.

Every database here starts empty and is taken to 0006 by Alembic (not copied from a migrated
template): the other migration tests start at head, so they never see 0007 run over rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from app.db import async_url
from app.migrate import alembic_config, downgrade_to, upgrade_to_head
from tests.support.env import PG_URL, REQUIRE_PG, pg_exec, pg_url_for

T = TypeVar("T")

NOW = "'2026-11-30 12:00:00'"  # SQL literals: asyncpg takes no strings for timestamp parameters
LATER = "'2026-12-01 12:00:00'"
SECRET = "whsec_" + "c2VjcmV0LWtlcHQtYnktMDAwNi10aGF0LW11c3QtbW92ZQ"  # a test value
CREATE_KEYS = ("idem-key-1", "idem key/2 ünïcode")
JOB_STATUSES = ("pending", "queueing", "processing", "completed", "failed", "expired", "cancelled")
EVENT_STATES = ("pending", "retrying", "delivered", "dead")
# (video_model_id, status, poll_class, push_due, progress); terminal ones are not due (CHECK).
JOBS = (
    ("vm-pending", "pending", 2, False, None),
    ("vm-queueing", "queueing", 2, False, None),
    ("vm-processing", "processing", 1, True, 40),
    ("vm-late", "processing", 0, False, 90),
    ("vm-completed", "completed", 1, False, 100),
    ("vm-failed", "failed", 1, False, None),
    ("vm-cancelled", "cancelled", 2, False, None),
)
TERMINAL = {"completed", "failed", "expired", "cancelled"}
# (webhook_id, job, state, attempts); unsettled ones are due (CHECK).
EVENTS = (
    ("msg_1", "vm-completed", "delivered", 1),
    ("msg_2", "vm-completed", "dead", 5),
    ("msg_3", "vm-failed", "pending", 0),
    ("msg_4", "vm-failed", "retrying", 2),
)
SNAPSHOTS = {  # the 0006 columns whose values must survive, per table
    "job": "id, video_model_id, status, progress, callback_url, events, client_metadata, created_at, "
    "next_poll_at, poll_class, claim_at, push_due, delivery, video_url",
    "transition": "id, job_id, from_status, to_status, at, via",
    "event": "id, webhook_id, job_id, type, body, state, attempts, next_attempt_at, delivered_at",
    "attempt": "id, event_id, status_code, error, duration_ms",
    "akool_create": "key, request_hash, state, status_code, response, created_at",
}
INDEXES = {  # job's indexes that must be there after the upgrade: name → WHERE clause (None: none)
    **{
        f"ix_job_tenant_next_poll_at_class_{k}": f"poll_class = {k} AND next_poll_at IS NOT NULL"
        for k in (0, 1, 2)
    },
    "ix_job_push_due_next_poll_at": "push_due = 1",  # PostgreSQL's: `push_due`
    "ix_job_unfinished_id": "next_poll_at IS NOT NULL",
    "ix_job_tenant_unfinished_id": "next_poll_at IS NOT NULL",
    "ix_job_status_id": None,
}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind (no migration applied)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'relay.db'}"
        return
    name = f"relay_upg_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(pg_exec(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # as tests/conftest.py: skipped without a server, unless required
        reason = f"PostgreSQL at {PG_URL} is not reachable ({type(exc).__name__}: {exc})"
        if REQUIRE_PG:
            pytest.fail(f"RELAY_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    yield pg_url_for(name)
    asyncio.run(pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _tx(url: str, work: Callable[[Connection], T]) -> T:
    """`work(conn)` in a transaction of its own, committed unless it raises."""

    async def run() -> T:
        engine = create_async_engine(async_url(url), poolclass=pool.NullPool)
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    return _tx(url, lambda conn: [tuple(row) for row in conn.execute(sa.text(sql))])


def _insert_job(conn: Connection, vm: str, status: str, *, tenant: int | None = None, **more: Any) -> None:
    due = "NULL" if status in TERMINAL else NOW
    tenant_column, tenant_value = ("", "") if tenant is None else ("tenant_id, ", f"{tenant}, ")
    conn.execute(
        sa.text(
            f"INSERT INTO job ({tenant_column}video_model_id, status, progress, callback_url, events, "
            "client_metadata, created_at, updated_at, expires_at, next_poll_at, poll_count, poll_interval, "
            "not_found_count, delivery, push_due, poll_class, claim_at, video_url) VALUES "
            f"({tenant_value}:vm, :status, :progress, 'http://receiver.test/hook', '[\"completed\"]', :meta, "
            f"{NOW}, {NOW}, {LATER}, {due}, 0, 5.0, 0, 'none', {'TRUE' if more.get('push') else 'FALSE'}, "
            f":klass, {due}, :video_url)"
        ),
        {
            "vm": vm,
            "status": status,
            "progress": more.get("progress"),
            "meta": f'{{"vm": "{vm}"}}',
            "klass": more.get("klass", 1),
            "video_url": f"https://cdn.test/{vm}.mp4" if status == "completed" else None,
        },
    )


def _job_id(vm: str) -> str:
    return f"(SELECT id FROM job WHERE video_model_id = '{vm}')"


def _fill_0006(conn: Connection) -> None:
    """Rows as the 0006 schema takes them (its triggers count them into status_count)."""
    for vm, status, klass, push, progress in JOBS:
        _insert_job(conn, vm, status, klass=klass, push=push, progress=progress)
    for vm, from_status, to_status, via in (
        ("vm-queueing", "pending", "queueing", "poll"),
        ("vm-completed", "processing", "completed", "push"),
        ("vm-cancelled", "pending", "cancelled", "client"),
    ):
        conn.execute(
            sa.text(
                f"INSERT INTO transition (job_id, from_status, to_status, at, progress, via) "
                f"VALUES ({_job_id(vm)}, :f, :t, {NOW}, NULL, :via)"
            ),
            {"f": from_status, "t": to_status, "via": via},
        )
    for webhook_id, vm, state, attempts in EVENTS:
        settled = state in ("delivered", "dead")
        conn.execute(
            sa.text(
                "INSERT INTO event (webhook_id, job_id, type, body, state, attempts, created_at, "
                f"next_attempt_at, delivered_at) VALUES (:w, {_job_id(vm)}, 'job.x', :body, :state, :n, {NOW}, "
                f"{'NULL' if settled else NOW}, {NOW if state == 'delivered' else 'NULL'})"
            ),
            {"w": webhook_id, "body": f'{{"id": "{webhook_id}"}}', "state": state, "n": attempts},
        )
    for webhook_id, code, error in (("msg_1", 200, None), ("msg_2", 410, None), ("msg_4", None, "timeout")):
        conn.execute(
            sa.text(
                "INSERT INTO attempt (event_id, at, status_code, error, duration_ms) VALUES "
                f"((SELECT id FROM event WHERE webhook_id = :w), {NOW}, :code, :error, 12.5)"
            ),
            {"w": webhook_id, "code": code, "error": error},
        )
    conn.execute(sa.text("INSERT INTO setting (key, value) VALUES ('webhook_secret', :s)"), {"s": SECRET})
    for key in CREATE_KEYS:
        conn.execute(
            sa.text(
                "INSERT INTO akool_create (key, request_hash, state, status_code, response, created_at, "
                f"updated_at) VALUES (:key, :hash, 'done', 200, '{{\"code\": 1000}}', {NOW}, {NOW})"
            ),
            {"key": key, "hash": hashlib.sha256(key.encode()).hexdigest()},
        )


def _snapshot(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: [tuple(r) for r in conn.execute(sa.text(f"SELECT {columns} FROM {table} ORDER BY 1"))]
        for table, columns in SNAPSHOTS.items()
    }


def _counts(conn: Connection, tenant: int | None = None) -> dict[str, dict[str, int]]:
    """The real counts per job status and event state, after checking status_count says the same."""
    real: dict[str, dict[str, int]] = {}
    of_tenant = "" if tenant is None else f" AND tenant_id = {tenant}"
    for kind, column in (("job", "status"), ("event", "state")):
        where = "" if tenant is None else f" WHERE tenant_id = {tenant}"
        rows = conn.execute(sa.text(f"SELECT {column}, count(*) FROM {kind}{where} GROUP BY 1"))
        real[kind] = {status: int(n) for status, n in rows}
        kept = conn.execute(
            sa.text(f"SELECT status, sum(n) FROM status_count WHERE kind = '{kind}'{of_tenant} GROUP BY 1")
        )
        assert {s: int(n) for s, n in kept if n} == real[kind], (kind, tenant)
    return real


def _job_indexes(conn: Connection) -> dict[str, str]:
    if conn.dialect.name == "sqlite":
        sql = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'job' AND sql IS NOT NULL"
    else:
        sql = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'job'"
    return {name: definition for name, definition in conn.execute(sa.text(sql))}


def _where(definition: str) -> str | None:
    """An index's WHERE clause, without PostgreSQL's parentheses."""
    if " WHERE " not in definition.upper():
        return None
    clause = definition[definition.upper().index(" WHERE ") + 7 :]
    return " ".join(clause.replace("(", "").replace(")", "").split())


def _add_tenant(conn: Connection) -> int:
    """A second tenant and its counter rows, as app/store/tenants.py `create` writes them."""
    tenant = conn.execute(
        sa.text(f"INSERT INTO tenant (name, disabled, created_at) VALUES ('acme', FALSE, {NOW}) RETURNING id")
    ).scalar_one()
    shards = range(1) if conn.dialect.name == "sqlite" else range(16)
    counted = (("job", JOB_STATUSES), ("event", EVENT_STATES))
    conn.execute(
        sa.text("INSERT INTO status_count (tenant_id, kind, status, shard, n) VALUES (:t, :k, :s, :h, 0)"),
        [{"t": tenant, "k": k, "s": s, "h": h} for k, values in counted for s in values for h in shards],
    )
    return int(tenant)


def test_upgrade_keeps_rows_counts_indexes_and_triggers(empty_url: str) -> None:
    url = empty_url
    command.upgrade(alembic_config(url), "0006")
    _tx(url, _fill_0006)
    before = _tx(url, _snapshot)
    counts = _tx(url, _counts)
    assert counts["job"] == dict(pending=1, queueing=1, processing=2, completed=1, failed=1, cancelled=1)
    assert counts["event"] == dict(pending=1, retrying=1, delivered=1, dead=1)

    upgrade_to_head(url)
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert _rows(url, "SELECT version_num FROM alembic_version") == [(head,)]

    # Every row is still there with its values; they are all tenant 1's, and counted as such.
    after = _tx(url, _snapshot)
    assert [r[1] for r in after["job"]] == [vm for vm, *_ in JOBS]
    assert [r[5] for r in after["event"]] == [state for _, _, state, _ in EVENTS]
    assert {t: rows for t, rows in after.items() if t != "akool_create"} == {
        t: rows for t, rows in before.items() if t != "akool_create"
    }
    assert _rows(url, "SELECT id, name FROM tenant") == [(1, "default")]
    assert _rows(url, "SELECT DISTINCT tenant_id FROM job") == [(1,)]
    assert _rows(url, "SELECT DISTINCT tenant_id FROM event") == [(1,)]
    assert _tx(url, lambda conn: _counts(conn, 1)) == counts
    assert _rows(url, "SELECT count(*) FROM status_count WHERE tenant_id <> 1") == [(0,)]

    # The kept secret is tenant 1's now; the idempotency keys are tenant 1's, hashed.
    assert _rows(url, "SELECT tenant_id, secret, valid_until FROM tenant_secret") == [(1, SECRET, None)]
    assert _rows(url, "SELECT key FROM setting WHERE key = 'webhook_secret'") == []
    old_creates = {r[0]: r[1:] for r in before["akool_create"]}
    assert {r[0]: r[1:] for r in after["akool_create"]} == {
        "1/" + hashlib.sha256(key.encode()).hexdigest(): rest for key, rest in old_creates.items()
    }

    # The job table's indexes (partial ones with their WHERE) and, on SQLite, its count triggers.
    indexes = _tx(url, _job_indexes)
    sqlite = url.startswith("sqlite")
    for name, where in INDEXES.items():
        assert name in indexes, (name, sorted(indexes))
        if not sqlite and name == "ix_job_push_due_next_poll_at":
            where = "push_due"
        assert _where(indexes[name]) == where, indexes[name]
    if sqlite:
        triggers = dict(_rows(url, "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"))
        for table in ("job", "event"):
            for op in ("insert", "update", "delete"):
                assert "tenant_id" in triggers[f"{table}_count_{op}"], triggers.get(f"{table}_count_{op}")

    # The triggers still count: an insert (tenant_id by default), status changes, a delete.
    def write_tenant_1(conn: Connection) -> None:
        _insert_job(conn, "vm-new", "pending")
        conn.execute(sa.text("UPDATE job SET status = 'processing' WHERE video_model_id = 'vm-queueing'"))
        conn.execute(
            sa.text(
                "UPDATE job SET status = 'completed', next_poll_at = NULL, claim_at = NULL "
                "WHERE video_model_id = 'vm-processing'"
            )
        )
        conn.execute(
            sa.text("UPDATE event SET state = 'delivered', next_attempt_at = NULL WHERE webhook_id = 'msg_3'")
        )
        conn.execute(sa.text("DELETE FROM job WHERE video_model_id = 'vm-pending'"))

    _tx(url, write_tenant_1)
    assert _rows(url, "SELECT tenant_id FROM job WHERE video_model_id = 'vm-new'") == [(1,)]
    assert _tx(url, lambda conn: _counts(conn, 1)) == {
        "job": {"pending": 1, "processing": 2, "completed": 2, "failed": 1, "cancelled": 1},
        "event": {"retrying": 1, "delivered": 2, "dead": 1},
    }

    # A second tenant may track an id tenant 1 tracks, once; one statement counts rows of both.
    tenant = _tx(url, _add_tenant)
    assert tenant == 2

    def write_both(conn: Connection) -> None:
        conn.execute(
            sa.text(
                "INSERT INTO job (tenant_id, video_model_id, status, callback_url, events, client_metadata, "
                "created_at, updated_at, expires_at, next_poll_at, poll_count, poll_interval, "
                "not_found_count, delivery) VALUES "
                + ", ".join(
                    f"({t}, '{vm}', 'queueing', 'http://x.test', '[]', '{{}}', {NOW}, {NOW}, {LATER}, "
                    f"{NOW}, 0, 5.0, 0, 'none')"
                    for t, vm in ((1, "vm-multi"), (2, "vm-completed"))
                )
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO event (webhook_id, job_id, tenant_id, type, body, state, attempts, created_at, "
                f"next_attempt_at) SELECT 'msg_t2', id, 2, 'job.x', '{{}}', 'pending', 0, {NOW}, {NOW} "
                "FROM job WHERE tenant_id = 2"
            )
        )

    _tx(url, write_both)
    with pytest.raises(IntegrityError):
        _tx(url, lambda conn: _insert_job(conn, "vm-completed", "pending", tenant=2))
    assert _tx(url, lambda conn: _counts(conn, 2)) == {"job": {"queueing": 1}, "event": {"pending": 1}}
    assert _tx(url, lambda conn: _counts(conn, 1))["job"] == dict(
        pending=1, queueing=1, processing=2, completed=2, failed=1, cancelled=1
    )

    # Back to 0006: refused while tenant 2 has jobs (two rows would share a video_model_id), then done.
    # (First to 0007: SQLite runs each downgrade's DDL as it comes, so a refusal in 0007 would
    # otherwise leave the later ones undone.)
    downgrade_to(url, "0007")
    with pytest.raises(RuntimeError, match="tenants other than `default`"):
        downgrade_to(url, "0006")
    assert _rows(url, "SELECT version_num FROM alembic_version") == [("0007",)]
    assert _rows(url, "SELECT count(*) FROM job WHERE tenant_id = 2") == [(1,)]

    def drop_tenant_2_jobs(conn: Connection) -> None:
        conn.execute(sa.text("DELETE FROM event WHERE tenant_id = 2"))
        conn.execute(sa.text("DELETE FROM job WHERE tenant_id = 2"))

    _tx(url, drop_tenant_2_jobs)
    downgrade_to(url, "0006")
    assert _rows(url, "SELECT version_num FROM alembic_version") == [("0006",)]
    assert _rows(url, "SELECT value FROM setting WHERE key = 'webhook_secret'") == [(SECRET,)]
    with pytest.raises(IntegrityError):  # UNIQUE (video_model_id) again
        _tx(url, lambda conn: _insert_job(conn, "vm-completed", "pending"))

    def write_0006(conn: Connection) -> dict[str, dict[str, int]]:
        _insert_job(conn, "vm-after", "queueing")
        conn.execute(
            sa.text("UPDATE job SET status = 'expired', next_poll_at = NULL WHERE video_model_id = 'vm-late'")
        )
        return _counts(conn)  # the 0006 triggers count again

    assert _tx(url, write_0006)["job"]["queueing"] == 2
