"""Polls where news is likely: a job's progress samples, its expected finish, and its claim priority

- job.progress_samples: the last few [Unix seconds, progress] samples taken while processing (JSON);
  job.expected_finish_at: the estimate made of them (app/scheduling.py), shown in the job's JSON.
- job.poll_class (0 finish passed, 1 running, 2 queued) and job.claim_at (next_poll_at + class ×
  RELAY_POLL_INTERVAL_MAX): the claim takes one index range per class, earliest due first, and merges
  them by claim_at (app/store/polls.py), so the first claim of 10^5 due jobs reads a few index rows.
  One partial index per class (ix_job_next_poll_at_class_N), so that no plan, generic ones included,
  reads ix_job_next_poll_at filtered by class through the due rows of the other classes.
- SQLite: ix_job_push_due_next_poll_at again with `WHERE push_due = 1`. SQLite uses a partial index
  only when the query has the index's WHERE term as written, and SQLAlchemy writes the claim's
  `push_due` as `push_due = 1` there: with `WHERE push_due` the pushed-first claim read every due row
  through ix_job_next_poll_at (0.4 s at 10^5 due jobs). PostgreSQL proves `push_due` and keeps it.
- Existing unfinished jobs: queued (pending, queueing) or running by their status, and claim_at =
  next_poll_at until their next poll writes both (a migration does not know RELAY_POLL_INTERVAL_MAX).

Only ADD COLUMN and CREATE INDEX: SQLite keeps the job table (and its count triggers) as it is.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.models import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLASSES = (0, 1, 2)  # finish passed, running, queued (app/scheduling.py)


def upgrade() -> None:
    op.add_column("job", sa.Column("progress_samples", sa.JSON(), nullable=True))
    op.add_column("job", sa.Column("expected_finish_at", UTCDateTime(), nullable=True))
    op.add_column("job", sa.Column("poll_class", sa.SmallInteger(), nullable=False, server_default="1"))
    op.add_column("job", sa.Column("claim_at", UTCDateTime(), nullable=True))
    op.execute("UPDATE job SET poll_class = 2 WHERE status IN ('pending', 'queueing')")
    op.execute("UPDATE job SET claim_at = next_poll_at WHERE next_poll_at IS NOT NULL")
    for klass in CLASSES:
        where = sa.text(f"poll_class = {klass} AND next_poll_at IS NOT NULL")
        op.create_index(
            f"ix_job_next_poll_at_class_{klass}",
            "job",
            ["next_poll_at"],
            postgresql_where=where,
            sqlite_where=where,
        )
    if op.get_bind().dialect.name == "sqlite":
        _push_due_index("push_due = 1")


def _push_due_index(where: str) -> None:
    op.drop_index("ix_job_push_due_next_poll_at", table_name="job")
    op.create_index("ix_job_push_due_next_poll_at", "job", ["next_poll_at"], sqlite_where=sa.text(where))


def downgrade() -> None:
    # ALTER TABLE … DROP COLUMN (SQLite ≥ 3.35 too): a batch rebuild would drop the count triggers.
    if op.get_bind().dialect.name == "sqlite":
        _push_due_index("push_due")
    for klass in CLASSES:
        op.drop_index(f"ix_job_next_poll_at_class_{klass}", table_name="job")
    for column in ("claim_at", "poll_class", "expected_finish_at", "progress_samples"):
        op.execute(f"ALTER TABLE job DROP COLUMN {column}")
