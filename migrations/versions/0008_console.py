"""The console's API (issue 13): /stats, GET /deliveries and bulk redelivery

- akool_requests: Akool requests per minute and outcome, every replica's (summary budget, /stats).
- event.bulk: queued again by POST /deliveries/redeliver; the claim takes live callbacks first, by
  ix_event_due_bulk_next_attempt_at (bulk, next_attempt_at) over unsettled events only.
- event.latency_ms (created → delivered), set with delivered_at, so that /stats' percentiles read one
  number per row; the events delivered before are given theirs here.
- Indexes for the per-minute series of /stats, read alone (covering): job (finished_at, tenant_id,
  status), event (delivered_at, tenant_id, latency_ms), attempt.at; and event (tenant_id, state, id)
  for a tenant's GET /deliveries, newest first.

Only ADD COLUMN and CREATE INDEX on existing tables: SQLite keeps them (and their count triggers).

Revision ID: 0008_console
Revises: 0008 (fair claims)
Create Date: 2026-12-10 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.models import UTCDateTime

revision: str = "0008_console"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = [
    ("ix_job_finished_at", "job", ["finished_at", "tenant_id", "status"]),
    ("ix_event_delivered_at", "event", ["delivered_at", "tenant_id", "latency_ms"]),
    ("ix_event_tenant_id_state_id", "event", ["tenant_id", "state", "id"]),
    ("ix_attempt_at", "attempt", ["at"]),
]


def upgrade() -> None:
    op.create_table(
        "akool_requests",
        sa.Column("minute", UTCDateTime(), primary_key=True),
        sa.Column("outcome", sa.String(length=16), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    op.add_column("event", sa.Column("bulk", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("event", sa.Column("latency_ms", sa.Float(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        latency = "EXTRACT(EPOCH FROM delivered_at - created_at) * 1000"
    else:  # julianday keeps milliseconds: enough for a chart of the past
        latency = "(julianday(delivered_at) - julianday(created_at)) * 86400000.0"
    op.execute(f"UPDATE event SET latency_ms = {latency} WHERE delivered_at IS NOT NULL")
    unsettled = sa.text("next_attempt_at IS NOT NULL")
    op.create_index(
        "ix_event_due_bulk_next_attempt_at",
        "event",
        ["bulk", "next_attempt_at"],
        postgresql_where=unsettled,
        sqlite_where=unsettled,
    )
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    op.drop_index("ix_event_due_bulk_next_attempt_at", table_name="event")
    # ALTER TABLE … DROP COLUMN (SQLite ≥ 3.35 too): a batch rebuild would drop the count triggers.
    op.execute("ALTER TABLE event DROP COLUMN latency_ms")
    op.execute("ALTER TABLE event DROP COLUMN bulk")
    op.drop_table("akool_requests")
