"""Akool's push as a hint, and jobs created through the relay

- job: `push_count` / `last_pushed_at` (shown to clients); `push_due` (a verified push made the job
  due: its next poll is claimed ahead of the others and its transitions say `via: push`),
  `push_due_at` (when a push last did: other pushes may do so once per RELAY_POLL_INTERVAL_MIN) and
  `ending_push_seen` (an ending push already made it due: the next one is limited like the rest).
  The partial index keeps the pushed jobs' claim an index scan of a few rows.
- transition.via: what taught us the change (poll, push, clock, client); old rows get theirs.
- event.pushed_at: the push a callback follows from, for the push → callback latency metric.
- akool_create: one row per Idempotency-Key of POST /translations, written before Akool is called,
  so a crash between Akool's answer and our commit leaves `in_progress` (answered 409 unknown) and
  never a second create.

Only ADD COLUMN and CREATE: SQLite keeps the tables (and their count triggers) as they are.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.models import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job", sa.Column("push_count", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("job", sa.Column("last_pushed_at", UTCDateTime(), nullable=True))
    op.add_column("job", sa.Column("push_due", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("job", sa.Column("push_due_at", UTCDateTime(), nullable=True))
    op.add_column(
        "job", sa.Column("ending_push_seen", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.create_index(
        "ix_job_push_due_next_poll_at",
        "job",
        ["next_poll_at"],
        postgresql_where=sa.text("push_due"),
        sqlite_where=sa.text("push_due"),
    )
    op.add_column("transition", sa.Column("via", sa.String(8), nullable=False, server_default="poll"))
    op.execute("UPDATE transition SET via = 'clock' WHERE to_status = 'expired'")
    op.execute("UPDATE transition SET via = 'client' WHERE to_status = 'cancelled'")
    op.add_column("event", sa.Column("pushed_at", UTCDateTime(), nullable=True))
    op.create_table(
        "akool_create",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_akool_create_created_at", "akool_create", ["created_at"])


def downgrade() -> None:
    # ALTER TABLE … DROP COLUMN (SQLite ≥ 3.35 too): a batch rebuild would drop the count triggers.
    op.drop_index("ix_akool_create_created_at", table_name="akool_create")
    op.drop_table("akool_create")
    op.drop_index("ix_job_push_due_next_poll_at", table_name="job")
    drops = {
        "event": ["pushed_at"],
        "transition": ["via"],
        "job": ["ending_push_seen", "push_due_at", "push_due", "last_pushed_at", "push_count"],
    }
    for table, columns in drops.items():
        for column in columns:
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
